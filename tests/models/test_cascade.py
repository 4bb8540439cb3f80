"""Super-resolution sampling and cascades (scoresde.models.cascade) on exact scores of Gaussian images: the
conditional of a high-resolution image given its noise-augmented low-resolution view is closed form
(tests/problems.py: ExactSuperResolution), so samples must have its moments; tiny networks for the rest."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import scoresde as ss
from scoresde.models.cascade import cascade, super_resolve
from scoresde.models.nets import get_model
from scoresde.models.superres import downsample
from problems import ExactSuperResolution, gaussian_cascade

N, STEPS = 8000, 40
SMALL = dict(ch=16, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], num_groups=4)


def moment_errors(x, mean, cov):
    """(max |mean error| in standard deviations, max |covariance error| in units of sqrt(var_i var_j)) of
    samples x against N(mean, cov): scale-free, about 1/sqrt(n) per entry from sampling alone."""
    xf = x.double().flatten(1)
    sd = cov.diag().sqrt()
    return (float(((xf.mean(0) - mean) / sd).abs().max()),
            float(((torch.cov(xf.T) - cov) / (sd[:, None] * sd[None])).abs().max()))


MEAN_TOL, COV_TOL = 0.06, 0.08        # about 5 standard errors at n = 8000 (max over 32 means, 528 covariances)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- super_resolve: the conditional given a (noisy) low-resolution image ---------------------------------------
@pytest.mark.parametrize("s", [0.0, 0.1, 0.4])
def test_super_resolve_samples_the_exact_conditional_at_every_level(s):
    """Swept augmentation level: the samples given z at level s have the closed-form posterior's moments, and
    the network is told s at every call."""
    _, (sr,) = gaussian_cascade([(2, 2, 2), (2, 4, 4)], ss.VPSDE())
    z = torch.randn(1, 2, 2, 2, generator=_gen(1), dtype=torch.float64)
    x = super_resolve(sr, z, aug_level=s, noisy=True, n_per=N, sampler="dpm_solver", steps=STEPS, generator=_gen())
    assert x.shape == (N, 2, 4, 4) and x.dtype == torch.float64
    mean, cov = sr.posterior(z, s)
    err_mean, err_cov = moment_errors(x, mean[0], cov)
    assert err_mean < MEAN_TOL and err_cov < COV_TOL, (err_mean, err_cov)
    assert sr.levels and all(torch.equal(lv, torch.full((N,), s, dtype=torch.float64)) for lv in sr.levels)
    if s == 0:         # consistency: the clean condition is reproduced exactly by the output's low-res view
        assert float((downsample(x, (2, 2)) - z).abs().max()) < 1e-3


def test_a_lost_level_gives_the_wrong_conditional():
    """The control of the test above: a model told s = 0 while its condition is noisy at s = 0.4 samples
    moments far outside the tolerance (so the level must reach the network for the sweep to pass)."""
    _, (sr,) = gaussian_cascade([(2, 2, 2), (2, 4, 4)], ss.VPSDE())

    class Deaf(ExactSuperResolution):
        def image_cond(self, image, level=0.0, **kw):
            return dataclasses.replace(super().image_cond(image, level, **kw), image_level=torch.zeros(len(image),
                                                                                                 dtype=image.dtype))
    deaf = Deaf(sr.mean, sr.cov, sr.data_shape, 2, sr.sde)
    z = torch.randn(1, 2, 2, 2, generator=_gen(1), dtype=torch.float64)
    x = super_resolve(deaf, z, aug_level=0.4, noisy=True, n_per=N, sampler="dpm_solver", steps=STEPS, generator=_gen())
    mean, cov = sr.posterior(z, 0.4)
    err_mean, err_cov = moment_errors(x, mean[0], cov)
    assert err_mean > 3 * MEAN_TOL or err_cov > 3 * COV_TOL, (err_mean, err_cov)


def test_super_resolve_augments_a_clean_condition():
    """noisy=False: the clean low-res image y is re-noised to s by the model's SDE for every sample, so the
    samples follow the conditional given z = alpha(s) y + sigma(s) e averaged over e: a Gaussian again."""
    _, (sr,) = gaussian_cascade([(2, 2, 2), (2, 4, 4)], ss.VPSDE())
    s = 0.3
    y = torch.randn(1, 2, 2, 2, generator=_gen(2), dtype=torch.float64)
    x = super_resolve(sr, y, aug_level=s, n_per=N, sampler="dpm_solver", steps=STEPS, generator=_gen())
    # z = a y + sig e, x | z ~ N(m(z), C): E[x] = m(a y), Cov[x] = C + K Cov[z] K^T = C + sig^2 K K^T
    K, C, _, a = sr._gain(torch.tensor(0.0), torch.tensor(s))
    sig = float(sr.sde.marginal_coefs(torch.tensor([s], dtype=torch.float64))[1])
    mean = sr.posterior(a * y, s)[0][0]
    err_mean, err_cov = moment_errors(x, mean, C + sig ** 2 * K @ K.T)
    assert err_mean < MEAN_TOL and err_cov < COV_TOL, (err_mean, err_cov)


# --- cascades: the final images have the top Gaussian's moments -----------------------------------------------
@pytest.mark.parametrize("truncated", [False, True])
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_cascade_of_exact_scores_samples_the_data(truncated, sde_name):
    sde = ss.get_sde(sde_name)
    shapes = [(2, 1, 1), (2, 2, 2), (2, 4, 4)]
    base, stages = gaussian_cascade(shapes, sde)
    levels = [0.2 * sde.T, 0.4 * sde.T]
    outs = cascade(base, stages, N, aug_level=levels, truncated=truncated, sampler="dpm_solver", steps=STEPS,
                   generator=_gen(),
                   dtype=torch.float64, return_all=True)
    assert [tuple(o.shape[1:]) for o in outs] == shapes
    err_mean, err_cov = moment_errors(outs[-1], stages[-1].mean, stages[-1].cov)
    assert err_mean < MEAN_TOL and err_cov < COV_TOL, (err_mean, err_cov)
    for stage, s in zip(stages, levels):                       # each stage is told its own level
        assert all(torch.allclose(lv, torch.full_like(lv, s)) for lv in stage.levels)
    # the intermediate output: truncated, the chain stopped at s (x_s ~ N(a m, a^2 S + sig^2 I)); else x_0
    a, sig = (float(v) for v in sde.marginal_coefs(torch.tensor([levels[0]], dtype=torch.float64)))
    mean, cov = stages[0].low_res()
    if truncated:
        mean, cov = a * mean, a ** 2 * cov + sig ** 2 * torch.eye(len(mean), dtype=torch.float64)
    err_mean, err_cov = moment_errors(outs[0], mean, cov)
    assert err_mean < MEAN_TOL and err_cov < COV_TOL, (err_mean, err_cov)


def test_cascade_per_model_samplers_and_one_level():
    base, stages = gaussian_cascade([(1, 2, 2), (1, 4, 4)], ss.VPSDE())
    x = cascade(base, stages, 2000, aug_level=0.0, sampler=["ddim", "heun"], steps=[30, 20], generator=_gen(),
                dtype=torch.float64)
    err_mean, err_cov = moment_errors(x, stages[0].mean, stages[0].cov)
    assert err_mean < 0.15 and err_cov < 0.2, (err_mean, err_cov)
    assert base.calls == 30 and stages[0].calls == 2 * 20 - 1          # ddim: steps; heun: 2 steps - 1


# --- bad inputs: one clear message naming the argument, expected and found -------------------------------------
def test_bad_inputs():
    base, stages = gaussian_cascade([(2, 1, 1), (2, 2, 2), (2, 4, 4)], ss.VPSDE())
    sr = stages[-1]
    with pytest.raises(ValueError, match=r"low_res: expected images of shape \(B, 2, 2, 2\) .* found \(3, 2, 4, 4\)"):
        super_resolve(sr, torch.randn(3, 2, 4, 4))
    with pytest.raises(ValueError, match=r"low_res: expected images of shape \(B, 2, 2, 2\) .* found \(3, 3, 2, 2\)"):
        super_resolve(sr, torch.randn(3, 3, 2, 2))
    with pytest.raises(TypeError, match="low_res: expected a floating-point tensor"):
        super_resolve(sr, torch.zeros(3, 2, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"aug_level: expected a finite number in \[0.0, 1.0\], found 1.5"):
        super_resolve(sr, torch.randn(3, 2, 2, 2), aug_level=1.5)
    with pytest.raises(ValueError, match="model: expected a super-resolution model"):
        super_resolve(base, torch.randn(3, 2, 1, 1))
    with pytest.raises(ValueError, match="w: classifier-free guidance acts on class labels or a prompt"):
        super_resolve(sr, torch.randn(3, 2, 2, 2), w=2.0)
    with pytest.raises(ValueError, match="labels: expected a class-conditional model"):
        super_resolve(sr, torch.randn(3, 2, 2, 2), labels=1)
    # a stage that does not chain: named, with the expected and found shapes
    with pytest.raises(ValueError, match=r"stages\[1\]: expected a model conditioned on images of shape \(2, 2, 2\) "
                                         r"\(the stages\[0\] output\), found image_shape \(2, 1, 1\)"):
        cascade(base, [stages[0], stages[0]], 4)
    with pytest.raises(ValueError, match=r"stages\[0\]: expected a model conditioned on images of shape \(2, 1, 1\) "
                                         r"\(the base output\), found image_shape \(2, 2, 2\)"):
        cascade(base, [stages[1]], 4)
    with pytest.raises(ValueError, match=r"stages\[0\]: expected a super-resolution model"):
        cascade(base, [base], 4)
    with pytest.raises(ValueError, match=r"base: expected a model that samples without an image condition, found a "
                                         r"super-resolution model \(image_shape \(2, 1, 1\)\)"):
        cascade(stages[0], [stages[1]], 4)
    with pytest.raises(ValueError, match="stages: expected a non-empty list of super-resolution models, found an "
                                         "empty list"):
        cascade(base, [], 4)
    with pytest.raises(ValueError, match=r"aug_level: expected one level per stage or a list of 2 \(one per stage\), "
                                         r"found a list of 3"):
        cascade(base, stages, 4, aug_level=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"sampler: expected one sampler or a list of 3 \(one per model\), found a "
                                         "list of 2"):
        cascade(base, stages, 4, sampler=["ddim", "ddim"])
    # truncated needs one forward process: a VE stage after a VP base is refused
    ve_base, _ = gaussian_cascade([(2, 1, 1), (2, 2, 2)], ss.VESDE())
    with pytest.raises(ValueError, match=r"truncated: stages\[0\]'s SDE VPSDE\(.*\) differs from the previous "
                                         r"model's VESDE\("):
        cascade(ve_base, stages, 4, truncated=True)
    cascade(ve_base, stages, 4, truncated=False, steps=2)           # non-truncated: any pair of SDEs


# --- a real ScoreModel: the level and the labels reach the network, guidance -----------------------------------
class _Spy(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.inner, self.seen = net, []

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)

    def forward(self, x, c, cond=None):
        self.seen.append(cond)
        return self.inner(x, c, cond)


def _sr_model(sde, **kw):
    torch.manual_seed(0)
    net = get_model("ddpm_unet", data_shape=(1, 8, 8), image_shape=(1, 4, 4), **SMALL, **kw).eval()
    with torch.no_grad():                  # away from the zero-initialised layers, so every input matters
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ss.ScoreModel(_Spy(net), sde)


@pytest.mark.parametrize("s", [0.0, 0.25, 0.7])
def test_the_level_reaches_the_network(s):
    sde = ss.VPSDE()
    model = _sr_model(sde)
    low = torch.randn(2, 1, 4, 4)
    x = ss.super_resolve(model, low, aug_level=s, n_per=3, steps=2, generator=_gen())
    assert x.shape == (6, 1, 8, 8) and bool(torch.isfinite(x).all())
    sc = torch.full((6,), max(s, sde.default_eps))
    for cond in model.net.seen:
        torch.testing.assert_close(cond.image_level, model.condition(sc, sde.marginal_coefs(sc)[1]))
    image = model.net.seen[0].image
    if s == 0:                                          # clean: the low-res rows themselves, n_per each
        assert torch.equal(image, low.repeat_interleave(3, 0))
    else:                                               # augmented: each sample its own noise, at level s
        a, sig = (float(v) for v in sde.marginal_coefs(torch.tensor([s])))
        noise = (image - a * low.repeat_interleave(3, 0)) / sig
        assert not torch.equal(image[0], image[1]) and 0.5 < float(noise.std()) < 1.5


def test_labels_ride_along_and_guidance_weight_one_is_the_conditional():
    model = _sr_model(ss.VPSDE(), num_classes=3)
    low = torch.randn(2, 1, 4, 4)
    plain = ss.super_resolve(model, low, aug_level=0.1, labels=torch.tensor([0, 2]), steps=3, generator=_gen())
    assert torch.equal(model.net.seen[-1].labels, torch.tensor([0, 2]))
    guided = ss.super_resolve(model, low, aug_level=0.1, labels=torch.tensor([0, 2]), w=1.0, steps=3,
                              generator=_gen())
    assert torch.equal(model.net.seen[-1].labels, torch.tensor([0, 2, 3, 3]))        # the null label 3
    torch.testing.assert_close(guided, plain, rtol=1e-4, atol=1e-4)
    sharp = ss.super_resolve(model, low, aug_level=0.1, labels=torch.tensor([0, 2]), w=3.0, steps=3,
                             generator=_gen())
    assert not torch.allclose(sharp, plain, atol=1e-4)


def test_cascade_of_networks_with_labels():
    sde = ss.VPSDE()
    torch.manual_seed(0)
    base = ss.ScoreModel(get_model("ddpm_unet", data_shape=(1, 4, 4), num_classes=3, **SMALL).eval(), sde)
    sr = _sr_model(sde)
    outs = ss.cascade(base, [sr], 4, aug_level=0.2, truncated=True, labels=1, w=2.0, steps=2, generator=_gen(),
                      return_all=True)
    assert [o.shape for o in outs] == [(4, 1, 4, 4), (4, 1, 8, 8)]
    assert sr.net.seen[-1].labels is None           # the SR stage is unconditional on labels
    plain = ss.ScoreModel(get_model("ddpm_unet", data_shape=(1, 4, 4), **SMALL).eval(), sde)
    with pytest.raises(ValueError, match="labels: expected a class-conditional model in the cascade"):
        ss.cascade(plain, [sr], 4, labels=1)


# --- a prompt rides along with the image condition ----------------------------------------------------------
class _Encoder:
    """A text encoder of one token per word (context (B, L, 2): [word length, position]); null = no token."""

    def encode(self, prompts):
        L = max(len(p.split()) for p in prompts)
        ctx = torch.zeros(len(prompts), L, 2)
        mask = torch.zeros(len(prompts), L, dtype=torch.bool)
        for i, p in enumerate(prompts):
            for j, w in enumerate(p.split()):
                ctx[i, j] = torch.tensor([len(w), j])
                mask[i, j] = True
        return ss.Cond(context=ctx, context_mask=mask)

    def null(self, batch):
        return ss.Cond(context=torch.zeros(batch, 1, 2), context_mask=torch.zeros(batch, 1, dtype=torch.bool))


def test_a_prompt_joins_the_image_condition_and_guidance_keeps_the_image():
    _, (sr,) = gaussian_cascade([(1, 2, 2), (1, 4, 4)], ss.VPSDE())
    seen = []

    class Texty(ExactSuperResolution):
        text_encoder = _Encoder()

        def __call__(self, x, t, cond=None):
            seen.append(cond)
            return super().__call__(x, t, cond)
    model = Texty(sr.mean, sr.cov, sr.data_shape, 2, sr.sde)
    low = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    x = super_resolve(model, low, prompt="a longer prompt", n_per=2, steps=2, generator=_gen())
    assert x.shape == (4, 1, 4, 4)
    c = seen[-1]
    assert c.context.shape == (4, 3, 2) and bool(c.context_mask.all())
    assert torch.equal(c.image, low.repeat_interleave(2, 0))
    seen.clear()
    super_resolve(model, low, prompt=["one", "two words"], w=3.0, aug_level=0.2, steps=2, generator=_gen())
    c = seen[-1]                                              # the doubled batch: [prompt rows; null rows]
    assert c.context.shape == (4, 2, 2) and c.context_mask.tolist() == [[True, False], [True, True],
                                                                         [False, False], [False, False]]
    assert torch.equal(c.image[:2], c.image[2:]) and torch.equal(c.image_level, torch.full((4,), 0.2,
                                                                                          dtype=torch.float64))
    with pytest.raises(ValueError, match="prompt: expected 1 prompt or 2 \\(one per sample\\), found 3"):
        super_resolve(model, low, prompt=["a", "b", "c"])
    with pytest.raises(ValueError, match="prompt: expected a text-conditional model"):
        super_resolve(sr, low, prompt="a")


def test_default_samplers():
    """Super-resolution stages default to dpm_solver at 20 steps like the base, a stage that predicts eps to the
    reverse SDE at 50 steps (SR_SAMPLER: its probability-flow samplers diverge); a named sampler without steps
    takes 20."""
    base, (sr,) = gaussian_cascade([(1, 2, 2), (1, 4, 4)], ss.VPSDE())
    super_resolve(sr, torch.randn(2, 1, 2, 2, dtype=torch.float64), generator=_gen())
    assert sr.calls == 20
    cascade(base, [sr], 2, generator=_gen(), dtype=torch.float64)
    assert base.calls == 20 and sr.calls == 40
    sr.parameterization = "eps"
    super_resolve(sr, torch.randn(2, 1, 2, 2, dtype=torch.float64), generator=_gen())
    assert sr.calls == 90
    cascade(base, [sr], 2, generator=_gen(), dtype=torch.float64)
    assert base.calls == 40 and sr.calls == 140
    super_resolve(sr, torch.randn(2, 1, 2, 2, dtype=torch.float64), sampler="ddim", generator=_gen())
    assert sr.calls == 160
