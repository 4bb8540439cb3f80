"""Classifier-free guidance with prompts (`ss.classifier_free_score(model, w, prompt=...)`): the formula on a
tiny text model, negative prompts, batches and broadcasting, guidance rescale against its closed form and
diffusers' `rescale_noise_cfg`, encoding once per sampler call, every kind of sampler, impute, optimize_steps."""
import pytest
import torch

import scoresde as ss
from scoresde.models.guidance import rescale_guidance
from scoresde.models.text import TransformerTextEncoder

UNET = dict(ch=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0, num_groups=4)


def _model(dtype=torch.float64):
    torch.manual_seed(0)
    net = ss.get_model("ddpm_unet", data_shape=(1, 8, 8), context_dim=8, **UNET)
    enc = TransformerTextEncoder(8, max_len=16, depth=1, heads=2)
    model = ss.ScoreModel(net, ss.VPSDE(), text_encoder=enc)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.to(dtype).eval()


class _Counted(TransformerTextEncoder):
    calls = 0

    def encode(self, prompts):
        type(self).calls += 1
        return super().encode(prompts)


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def xt():
    g = torch.Generator().manual_seed(2)
    return torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64), torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)


def test_guided_score_is_the_formula_with_the_empty_prompt_as_null(model, xt):
    x, t = xt
    enc = model.text_encoder
    with torch.no_grad():
        s_c, s_u = model(x, t, "three left of eight"), model(x, t, enc.null(3))
        for w in (0.0, 1.0, 4.0):
            f = ss.classifier_free_score(model, w=w, prompt="three left of eight")
            # s_w = s_null + w (s_prompt - s_null)   (Ho & Salimans 2022, eq. 6)
            torch.testing.assert_close(f(x, t), s_u + w * (s_c - s_u))
        torch.testing.assert_close(ss.classifier_free_score(model, w=1.0, prompt="a")(x, t), model(x, t, "a"))
        torch.testing.assert_close(ss.classifier_free_score(model, w=0.0, prompt="a")(x, t), model(x, t))


def test_negative_prompt_replaces_the_null_branch(model, xt):
    x, t = xt
    with torch.no_grad():
        s_c, s_n = model(x, t, "one left of two"), model(x, t, "two left of one")
        f = ss.classifier_free_score(model, w=3.0, prompt="one left of two", negative_prompt="two left of one")
        torch.testing.assert_close(f(x, t), s_n + 3.0 * (s_c - s_n))
        assert not torch.allclose(f(x, t), ss.classifier_free_score(model, w=3.0, prompt="one left of two")(x, t))


def test_prompts_per_row_and_broadcast(model, xt):
    x, t = xt
    rows = ["a", "bb", "three"]
    with torch.no_grad():
        f = ss.classifier_free_score(model, w=2.0, prompt=rows, negative_prompt=["z"])
        per_row = torch.cat([ss.classifier_free_score(model, w=2.0, prompt=p, negative_prompt="z")(x[i:i + 1], t[i:i + 1])
                             for i, p in enumerate(rows)])
        torch.testing.assert_close(f(x, t), per_row)
        torch.testing.assert_close(ss.classifier_free_score(model, w=2.0, prompt=["a"])(x, t),
                                   ss.classifier_free_score(model, w=2.0, prompt="a")(x, t))
        with pytest.raises(ValueError, match=r"prompt: expected 1 prompt or 2 \(one per row of x\), found 3"):
            f(x[:2], t[:2])


def test_bad_input_names_the_argument(model):
    plain = ss.ScoreModel(ss.get_model("ddpm_unet", data_shape=(1, 8, 8), **UNET), ss.VPSDE())
    cases = [
        (dict(w=2.0, prompt=5), TypeError, "prompt: expected a string or a list of strings, found int"),
        (dict(w=2.0, prompt=[]), ValueError, "prompt: expected a prompt or a non-empty list"),
        (dict(w=2.0, prompt="a", negative_prompt=[1]), TypeError, "negative_prompt: expected strings"),
        (dict(w=2.0, negative_prompt="a"), ValueError, "negative_prompt: expected together with prompt"),
        (dict(y=1, w=2.0, prompt="a"), ValueError, "y: a prompt is the condition"),
        (dict(prompt="a"), TypeError, "w: expected the guidance weight"),
        (dict(w=2.0, prompt="a", guidance_rescale=1.5), ValueError, "guidance_rescale: expected phi in [0, 1]"),
        (dict(w=2.0, prompt="a", rescale_on="score"), ValueError, "rescale_on: expected one of"),
        (dict(w=2.0, prompt=["a", "b"], negative_prompt=["a", "b", "c"]), ValueError,
         "negative_prompt: expected 1 prompt or 2"),
        (dict(w=2.0), TypeError, "y: expected the condition (class labels or a Cond) or prompt=..."),
    ]
    for kw, err, msg in cases:
        with pytest.raises(err, match=msg.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                           .replace("]", r"\]").replace(".", r"\.")):
            ss.classifier_free_score(model, **kw)
    with pytest.raises(ValueError, match="prompt: expected a text-conditional model"):
        ss.classifier_free_score(plain, w=2.0, prompt="a")


def test_guidance_rescale_closed_form_on_eps_and_on_v(model, xt):
    x, t = xt
    w, phi = 5.0, 0.7
    alpha, sigma = (v.view(-1, 1, 1, 1) for v in model.sde.marginal_coefs(t))
    null = model.text_encoder.null(3)
    with torch.no_grad():
        for space, pred in (("eps", model.eps), ("v", model.v), ("x0", model.x0)):
            p_c, p_u = pred(x, t, "three"), pred(x, t, null)
            p_cfg = p_u + w * (p_c - p_u)
            std = lambda a: a.flatten(1).std(1).view(-1, 1, 1, 1)           # noqa: E731  (Bessel-corrected)
            # Lin et al. 2024, eqs. 15-17: p = phi p_cfg std(p_c) / std(p_cfg) + (1 - phi) p_cfg
            p = phi * p_cfg * std(p_c) / std(p_cfg) + (1 - phi) * p_cfg
            if space == "eps":
                want = -p / sigma                                            # score = -eps / sigma
            else:
                x0 = p if space == "x0" else alpha * x - sigma * p           # x0 = alpha x - sigma v  (VP: r = 1)
                want = (alpha * x0 - x) / sigma ** 2
            f = ss.classifier_free_score(model, w=w, prompt="three", guidance_rescale=phi, rescale_on=space)
            torch.testing.assert_close(f(x, t), want)
        assert not torch.allclose(ss.classifier_free_score(model, w=w, prompt="three", guidance_rescale=phi)(x, t),
                                  ss.classifier_free_score(model, w=w, prompt="three")(x, t))


def test_rescale_matches_diffusers_rescale_noise_cfg():
    pipe = pytest.importorskip("diffusers.guiders.guider_utils")      # the same function as the SD pipelines'
    g = torch.Generator().manual_seed(0)
    cfg, cond = torch.randn(3, 4, 6, 6, generator=g), 0.5 * torch.randn(3, 4, 6, 6, generator=g)
    for phi in (0.0, 0.3, 1.0):
        torch.testing.assert_close(rescale_guidance(cfg, cond, phi), pipe.rescale_noise_cfg(cfg, cond, phi))


def test_prompts_are_encoded_once_per_sampler_call():
    torch.manual_seed(0)
    net = ss.get_model("ddpm_unet", data_shape=(1, 8, 8), context_dim=8, **UNET)
    model = ss.ScoreModel(net, ss.VPSDE(), text_encoder=_Counted(8, max_len=16, depth=1, heads=2)).eval()
    f = ss.classifier_free_score(model, w=3.0, prompt="one", negative_prompt="two")
    _Counted.calls = 0
    with torch.no_grad():
        model.sde.sample(f, 2, sampler="ddim", steps=6, generator=torch.Generator().manual_seed(0))
    assert _Counted.calls == 2                                        # the prompt and the negative prompt, once
    with torch.no_grad():
        for p in model.text_encoder.parameters():                    # new weights: encoded anew
            p.add_(0.1)
        f(torch.randn(2, 1, 8, 8), 0.5)
        assert _Counted.calls == 4
        model.text_encoder.image_size = (16, 16)                      # a setting changed (as SDXL's sizes)
        f(torch.randn(2, 1, 8, 8), 0.5)
        assert _Counted.calls == 6
        f(torch.randn(3, 1, 8, 8), 0.5)                                # another batch size
    assert _Counted.calls == 8


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver", "euler_maruyama", "pc"])
def test_every_kind_of_sampler_runs_on_the_guided_text_score(sampler):
    model = _model(torch.float32)
    f = ss.classifier_free_score(model, w=4.0, prompt=["one left of two", "two left of one"],
                                 guidance_rescale=0.5)
    with torch.no_grad():
        steps = 25 if sampler == "pc" else 4                          # pc: DDPM's chain needs beta_max / N < 1
        x = model.sde.sample(f, 2, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0))
        again = model.sde.sample(f, 2, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all() and torch.equal(x, again)


def test_impute_and_optimize_steps_take_the_guided_text_score():
    model = _model(torch.float32)
    f = ss.classifier_free_score(model, w=3.0, prompt="three")
    known = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros_like(known, dtype=torch.bool)
    mask[..., :4, :] = True
    with torch.no_grad():
        x = ss.impute(model.sde, f, known, mask, steps=25, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all() and torch.equal(x[mask], known[mask])
    with torch.no_grad():
        grid = ss.optimize_steps(model.sde, f, 3, sampler="ddim", calibration=4, reference_steps=8, maxfev=4,
                                 generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(grid).all() and (grid.diff() < 0).all() and grid[0] == model.sde.T
        x = model.sde.sample(f, 2, sampler="ddim", times=grid, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()


class _Shortest(TransformerTextEncoder):
    """An encoder that pads to the longest prompt of its batch (as a tokenizer with padding="longest")."""

    def encode(self, prompts):
        c = super().encode(prompts)
        L = int(c.context_mask.sum(1).max())
        return ss.Cond(context=c.context[:, :L], context_mask=c.context_mask[:, :L])


def test_prompt_and_null_of_different_lengths_are_padded_with_masked_zeros(model, xt):
    x, t = xt
    short = _Shortest(8, max_len=16, depth=1, heads=2).double()
    short.load_state_dict(model.text_encoder.state_dict())
    other = ss.ScoreModel(model.net, model.sde, text_encoder=short).eval()
    with torch.no_grad():
        want = ss.classifier_free_score(model, w=3.0, prompt="three left of one")(x, t)
        torch.testing.assert_close(ss.classifier_free_score(other, w=3.0, prompt="three left of one")(x, t), want)
