"""Guidance and imputation against exact scores: classifier-free guidance, classifier guidance with
the exact noise-conditional classifier, imputation of Gaussian data (the replacement method's
closed-form limit), class-conditional networks, and small trained models on the labelled
four-mode mixture (class k = mixture component k)."""
import json
import math
import time

import pytest
import torch

import scoresde as ss
from scoresde.models.classifier import NoiseConditionalClassifier
from scoresde.models.guidance import classifier_free_score, classifier_guided_score
from scoresde.training.losses import classifier_loss, conditional_dsm_loss, label_dropout
from scoresde.samplers.inpainting import impute
from scoresde.nets import get_model
from problems import K, ExactConditional, Gaussian, class_rate, exact_classifier, four_mode_mixture  # noqa: F401

@pytest.fixture
def problem():
    sde = ss.VPSDE()
    mix = four_mode_mixture()
    return mix, sde, ExactConditional(mix, sde)


def random_points(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(n, 2, generator=g, dtype=torch.float64), 0.02 + 0.97 * torch.rand(n, generator=g, dtype=torch.float64)


# --- classifier-free guidance --------------------------------------------------------------------
def test_classifier_free_score_closed_form_and_one_batched_call(problem):
    mix, sde, model = problem
    x, t = random_points()
    y = torch.arange(64) % K
    cond = model.component_scores(x, t)[torch.arange(64), y]
    uncond = mix.score(x, t, sde)
    for w in [0.0, 1.0, 3.0]:
        model.calls, model.batches = 0, []
        s = classifier_free_score(model, y, w)(x, t)
        assert model.calls == 1 and model.batches == [128]          # one call on the doubled batch
        torch.testing.assert_close(s, (1 - w) * uncond + w * cond)
    torch.testing.assert_close(classifier_free_score(model, y, 1.0)(x, t), cond)   # w = 1: exact conditional
    s_int = classifier_free_score(model, 2, 1.0)(x, 0.3)                           # an int label, float t
    torch.testing.assert_close(s_int, model.component_scores(x, torch.full((64,), 0.3, dtype=torch.float64))[:, 2])


@pytest.mark.parametrize("w", [1.0, 2.0, 4.0])
def test_guided_samples_land_in_the_requested_class(problem, w):
    mix, sde, model = problem
    y = torch.arange(400) % K
    x, info = sde.sample(classifier_free_score(model, y, w), (400, 2), sampler="reverse_diffusion", steps=100,
                         dtype=torch.float64, generator=torch.Generator().manual_seed(1), return_info=True)
    rate = class_rate(mix, x, y)
    print(f"exact scores, w={w}: requested-class rate {rate:.4f}")
    assert rate >= 0.98 and info["nfe"] == 100
    unguided = class_rate(mix, sde.sample(classifier_free_score(model, y, 0.0), (400, 2), sampler="reverse_diffusion",
                                          steps=100, dtype=torch.float64,
                                          generator=torch.Generator().manual_seed(1)), y)
    assert unguided < 0.4                                               # w = 0 ignores the label


def test_label_dropout_rate_and_null_labels():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40000) % K
    out = label_dropout(y, 0.3, K, g)
    rate = (out == K).double().mean().item()
    assert abs(rate - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(y))
    kept = out != K
    assert torch.equal(out[kept], y[kept])
    assert torch.equal(label_dropout(y, 0.0, K, g), y) and bool((label_dropout(y, 1.0, K, g) == K).all())
    assert torch.equal(label_dropout(torch.full((5,), K), 0.5, K, g), torch.full((5,), K))   # null stays null
    torch.testing.assert_close(label_dropout(y, 0.3, K, torch.Generator().manual_seed(3)),
                               label_dropout(y, 0.3, K, torch.Generator().manual_seed(3)))


def test_conditional_dsm_loss_is_dsm_with_the_dropped_labels(problem):
    mix, sde, model = problem
    x0 = mix.sample(256, torch.Generator().manual_seed(0))
    y = mix.assign(x0)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    loss = conditional_dsm_loss(model, sde, x0, y, p_uncond=0.5, generator=g1, per_sample=True)
    y_in = label_dropout(y, 0.5, K, g2)
    ref = ss.dsm_loss(lambda x, t: model(x, t, y=y_in), sde, x0, generator=g2, per_sample=True)
    torch.testing.assert_close(loss, ref)
    # the exact conditional score has a smaller loss than the mixture score on labelled data
    g = torch.Generator().manual_seed(7)
    cond = conditional_dsm_loss(model, sde, x0, y, p_uncond=0.0, generator=g, t=0.5)
    uncond = ss.dsm_loss(mix.score_fn(sde), sde, x0, generator=torch.Generator().manual_seed(7), t=0.5)
    assert cond < uncond


# --- classifier guidance -------------------------------------------------------------------------
def test_classifier_guidance_with_the_exact_classifier_is_the_conditional_score(problem):
    mix, sde, model = problem
    x, t = random_points(seed=1)
    y = torch.arange(64) % K
    clf = exact_classifier(mix, sde)
    with torch.no_grad():                                          # as inside the samplers
        s1 = classifier_guided_score(mix.score_fn(sde), clf, y, 1.0)(x, t)
        s0 = classifier_guided_score(mix.score_fn(sde), clf, y, 0.0)(x, t)
        s3 = classifier_guided_score(mix.score_fn(sde), clf, y, 3.0)(x, t)
    cond, uncond = model.component_scores(x, t)[torch.arange(64), y], mix.score(x, t, sde)
    torch.testing.assert_close(s1, cond)                           # Bayes: s + grad log p(y|x_t) = s_y
    torch.testing.assert_close(s0, uncond)
    torch.testing.assert_close(s3, uncond + 3 * (cond - uncond))


def test_noise_conditional_classifier_any_rank_and_loss():
    for sde in [ss.VPSDE(), ss.VESDE()]:
        clf = NoiseConditionalClassifier(sde, (2, 3, 2), 5, width=16, depth=1)
        x = torch.randn(4, 2, 3, 2)
        assert clf(x, 0.5).shape == (4, 5) and clf(x, torch.rand(4)).shape == (4, 5)
        assert clf.conditioning == sde.default_conditioning and clf.config()["num_classes"] == 5
        g = torch.Generator().manual_seed(0)
        y = torch.tensor([0, 1, 4, 2])
        loss = classifier_loss(clf, sde, x, y, generator=g)
        t, z = torch.full((4,), 0.4), torch.randn(4, 2, 3, 2, generator=torch.Generator().manual_seed(1))
        a, s = sde.marginal_coefs(t)
        ref = torch.nn.functional.cross_entropy(clf(a[:, None, None, None] * x + s[:, None, None, None] * z, t), y)
        torch.testing.assert_close(classifier_loss(clf, sde, x, y, t=0.4, noise=z), ref)
        assert torch.isfinite(loss)


def test_trained_classifier_guidance_improves_the_class_rate():
    torch.manual_seed(0)
    mix, sde = four_mode_mixture(), ss.VPSDE()
    clf = NoiseConditionalClassifier(sde, (2,), K, width=64, depth=2)
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(400):
        x0 = mix.sample(128, g, dtype=torch.float32)
        loss = classifier_loss(clf, sde, x0, mix.assign(x0), generator=g)
        opt.zero_grad(), loss.backward(), opt.step()
    y = torch.zeros(400, dtype=torch.long)                          # the rarest class (weight 0.1)
    rates = {}
    for scale in [0.0, 1.0, 2.0]:
        x = sde.sample(classifier_guided_score(mix.score_fn(sde), clf, y, scale), (400, 2),
                       sampler="reverse_diffusion", steps=100, generator=torch.Generator().manual_seed(2))
        rates[scale] = class_rate(mix, x, y)
    print(f"trained classifier: requested-class rate by scale {rates}")
    assert rates[0.0] < 0.2 and rates[1.0] > 0.85 and rates[2.0] > 0.9


# --- trained class-conditional model -------------------------------------------------------------
def test_trained_class_conditional_mlp_with_label_dropout():
    start = time.perf_counter()
    torch.manual_seed(0)
    mix, sde = four_mode_mixture(), ss.VPSDE()
    model = ss.ScoreModel(get_model("mlp", data_shape=(2,), width=64, depth=2, num_classes=K), sde)
    assert model.num_classes == K
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 600)
    g = torch.Generator().manual_seed(1)
    for _ in range(600):
        x0 = mix.sample(128, g, dtype=torch.float32)
        loss = conditional_dsm_loss(model, sde, x0, mix.assign(x0), p_uncond=0.2, generator=g)
        opt.zero_grad(), loss.backward(), opt.step(), sched.step()
    model.eval()
    y = torch.arange(400) % K
    rates = {}
    for w in [0.0, 1.0, 2.0, 4.0]:
        x = sde.sample(classifier_free_score(model, y, w), (400, 2), sampler="reverse_diffusion", steps=100,
                       generator=torch.Generator().manual_seed(2))
        rates[w] = class_rate(mix, x, y)
    print(f"trained class-conditional MLP: requested-class rate by w {rates} "
          f"({time.perf_counter() - start:.1f} s)")
    assert rates[0.0] < 0.4 and all(rates[w] >= 0.98 for w in [1.0, 2.0, 4.0])


# --- class-conditional networks ------------------------------------------------------------------
TINY = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))


@pytest.mark.parametrize("name", ["mlp", "ddpm_unet", "ddpmpp", "ncsnpp"])
def test_class_conditional_networks(name):
    torch.manual_seed(0)
    kw = dict(data_shape=(3,)) if name == "mlp" else dict(data_shape=(3, 8, 8), **TINY)
    if name == "ddpm_unet":
        kw["num_groups"] = 8
    base, net = get_model(name, **kw).eval(), get_model(name, **kw, num_classes=3).eval()
    assert "num_classes" not in base.config and net.config["num_classes"] == 3
    extra = sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in base.parameters())
    assert extra == net.label.table.weight.numel() and net.label.table.num_embeddings == 4
    with torch.no_grad():                                        # output layers are zero-initialised
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, c = torch.randn(2, *net.data_shape), torch.tensor([3.0, 400.0])
    out_none, out_null = net(x, c), net(x, c, torch.tensor([3, 3]))
    torch.testing.assert_close(out_none, out_null)               # y=None is the null label
    assert (net(x, c, torch.tensor([0, 1])) - out_null).abs().max() > 1e-4
    cfg = json.loads(json.dumps(net.config))
    net2 = get_model(name, **cfg).eval()
    net2.load_state_dict(net.state_dict())
    torch.testing.assert_close(net2(x, c, torch.tensor([2, 0])), net(x, c, torch.tensor([2, 0])))
    with pytest.raises(ValueError, match=r"y: expected labels in \[0, 3\]"):
        net(x, c, torch.tensor([0, 4]))
    with pytest.raises(TypeError, match="y: expected an integer"):
        net(x, c, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"y: expected shape \(2,\)"):
        net(x, c, torch.tensor([0]))
    with pytest.raises(ValueError, match="unconditional"):
        base(x, c, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_classes"):
        get_model(name, **kw, num_classes=0)


def test_score_model_passes_labels():
    sde = ss.VPSDE()
    model = ss.ScoreModel(get_model("mlp", data_shape=(2,), width=16, depth=1, num_classes=2), sde)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(3, 2)
    torch.testing.assert_close(model(x, 0.5), model(x, 0.5, y=torch.full((3,), 2)))
    assert (model(x, 0.5, y=torch.zeros(3, dtype=torch.long)) - model(x, 0.5)).abs().max() > 1e-5
    torch.testing.assert_close(model.eps(x, 0.5, y=torch.ones(3, dtype=torch.long)),
                               -model(x, 0.5, y=torch.ones(3, dtype=torch.long)) * sde.marginal_coefs(torch.tensor(0.5))[1])


# --- imputation ----------------------------------------------------------------------------------
def gaussian_score(mu, cov, sde):
    """Exact score of N(mu, cov) data under `sde`: -(alpha^2 cov + sigma^2 I)^{-1} (x - alpha mu)."""
    def fn(x, t):
        a, s = sde.marginal_coefs(t)
        C = a[:, None, None] ** 2 * cov + s[:, None, None] ** 2 * torch.eye(2, dtype=x.dtype)
        return -torch.linalg.solve(C, (x - a[:, None] * mu)[..., None])[..., 0]
    return fn


def replacement_limit(sde, mu, cov, k0, eps, n=4000):
    """Mean and variance of x[1] given x[0] = k0 produced by the replacement method in the limit of
    small steps. The known entry is a fresh draw of N(alpha k0, sigma^2) at each step, so the unknown
    one follows the reverse SDE with the joint score averaged over it (linear in x): with
    P = (alpha^2 cov + sigma^2 I)^{-1},  s = -P11 (m - alpha mu1) - P10 alpha (k0 - mu0), and
        dm/dt = f m - g^2 s,   dv/dt = 2 (f + g^2 P11) v - g^2,   from m = 0, v = prior_std^2 at T."""
    t = torch.linspace(sde.T, eps, n + 1, dtype=torch.float64)
    a, s = sde.marginal_coefs(t)
    f = sde.sde(torch.ones(n + 1, 1, dtype=torch.float64), t)[0][:, 0]
    g2 = sde.sde(torch.ones(n + 1, 1, dtype=torch.float64), t)[1].square()
    P = torch.linalg.inv(a[:, None, None] ** 2 * cov + s[:, None, None] ** 2 * torch.eye(2, dtype=torch.float64))
    # dm/dt = A m + b,  dv/dt = C v - g2
    A, b = (f + g2 * P[:, 1, 1]).tolist(), (-g2 * (P[:, 1, 1] * a * mu[1] - P[:, 1, 0] * a * (k0 - mu[0]))).tolist()
    C, g2, t = (2 * (f + g2 * P[:, 1, 1])).tolist(), g2.tolist(), t.tolist()
    m, v = 0.0, sde.prior_std ** 2
    for i in range(n):                                          # Heun
        h = t[i + 1] - t[i]
        dm, dv = A[i] * m + b[i], C[i] * v - g2[i]
        mp, vp = m + h * dm, v + h * dv
        m, v = m + h / 2 * (dm + A[i + 1] * mp + b[i + 1]), v + h / 2 * (dv + C[i + 1] * vp - g2[i + 1])
    return m, v


@pytest.mark.parametrize("name", ["vp", "ve", "discrete_vp", "cosine_vp"])
@pytest.mark.parametrize("rho", [0.0, 0.8])
def test_impute_gaussian(name, rho):
    sde = ss.get_sde(name)
    mu, sd = torch.tensor([0.5, -0.3], dtype=torch.float64), torch.tensor([1.0, 0.5], dtype=torch.float64)
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64) * sd[:, None] * sd[None]
    B, k0 = 4000, 1.5
    x_known = torch.zeros(B, 2, dtype=torch.float64)
    x_known[:, 0], x_known[:, 1] = k0, 99.0                         # the unknown entry's value is ignored
    x = impute(sde, gaussian_score(mu, cov, sde), x_known, torch.tensor([1, 0]), steps=500, corrector="none",
               generator=torch.Generator().manual_seed(0))
    assert bool((x[:, 0] == k0).all())                              # known entries exact
    u = x[:, 1]
    cond_mean = (mu[1] + cov[1, 0] / cov[0, 0] * (k0 - mu[0])).item()
    cond_var = (cov[1, 1] - cov[1, 0] ** 2 / cov[0, 0]).item()
    m, v = replacement_limit(sde, mu, cov, k0, sde.default_eps)
    se_m, se_v = math.sqrt(v / B), v * math.sqrt(2 / (B - 1))
    print(f"{name} rho={rho}: mean {u.mean():.4f} (method limit {m:.4f}, exact conditional {cond_mean:.4f}); "
          f"var {u.var():.4f} (method limit {v:.4f}, exact conditional {cond_var:.4f})")
    bias = 0.01                                                    # 500 steps vs the small-step limit
    assert abs(u.mean().item() - m) < 3 * se_m + bias and abs(u.var().item() - v) < 3 * se_v + bias
    if rho == 0.0:        # independent entries: the replacement method is exact
        assert abs(m - cond_mean) < 1e-3 and abs(v - cond_var) < 1e-3
    else:                 # correlated: the known entry pulls the mean from the marginal toward the conditional
        assert abs(u.mean().item() - cond_mean) < 0.5 * abs(mu[1].item() - cond_mean)


def test_impute_rank4_smoke_and_pc_options():
    sde = ss.VPSDE(N=100)
    data = Gaussian(torch.zeros(1, 4, 4), torch.full((1, 4, 4), 0.5))
    x_known = data.sample(3, torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1                                            # top half known
    for predictor, corrector in [("reverse_diffusion", "langevin"), ("ancestral", "none"), ("none", "annealed_langevin")]:
        x = impute(sde, data.score_fn(sde), x_known, mask, predictor=predictor, corrector=corrector, steps=50,
                   generator=torch.Generator().manual_seed(1))
        assert x.shape == x_known.shape and torch.isfinite(x).all()
        assert torch.equal(x[..., :2, :], x_known[..., :2, :])
        assert (x[..., 2:, :] - x_known[..., 2:, :]).abs().max() > 1e-3 and x[..., 2:, :].std() < 2.0
    x1 = impute(sde, data.score_fn(sde), x_known, mask.bool(), steps=20, generator=torch.Generator().manual_seed(4))
    x2 = impute(sde, data.score_fn(sde), x_known, mask, steps=20, generator=torch.Generator().manual_seed(4))
    assert torch.equal(x1, x2)                                      # bool and 0/1 masks; seeded


def test_validation(problem):
    mix, sde, model = problem
    fn = mix.score_fn(sde)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="mask: expected a shape broadcastable"):
        impute(sde, fn, x, torch.ones(3))
    with pytest.raises(ValueError, match="mask: expected entries 0"):
        impute(sde, fn, x, torch.full((2,), 0.5))
    with pytest.raises(TypeError, match="mask"):
        impute(sde, fn, x, [1, 0])
    with pytest.raises(TypeError, match="x_known"):
        impute(sde, fn, torch.zeros(4, 2, dtype=torch.long), torch.ones(2))
    with pytest.raises(ValueError, match="predictor"):
        impute(sde, fn, x, torch.ones(2), predictor="heun")
    with pytest.raises(ValueError, match=r"y: expected labels in \[0, 3\]"):
        classifier_free_score(model, 4, 1.0)                       # the null label is not a class to request
    with pytest.raises(ValueError, match=r"y: expected shape \(4,\)"):
        classifier_free_score(model, torch.zeros(3, dtype=torch.long), 1.0)(x, 0.5)
    with pytest.raises(ValueError, match="w: expected a finite number"):
        classifier_free_score(model, 1, float("nan"))
    with pytest.raises(ValueError, match="num_classes"):
        classifier_free_score(fn, 1, 1.0)
    with pytest.raises(ValueError, match="p_uncond"):
        label_dropout(torch.zeros(3, dtype=torch.long), 1.5, K)
    with pytest.raises(TypeError, match="y: expected an integer"):
        label_dropout(torch.zeros(3), 0.1, K)
    with pytest.raises(ValueError, match=r"y: expected labels in \[0, 4\]"):
        conditional_dsm_loss(model, sde, x, torch.tensor([0, 1, 2, 5]))
    with pytest.raises(TypeError, match="scale"):
        classifier_guided_score(fn, exact_classifier(mix, sde), 0, "big")
    with pytest.raises(ValueError, match=r"y: expected labels in \[0, 3\]"):
        classifier_guided_score(fn, exact_classifier(mix, sde), 7)
    with pytest.raises(ValueError, match=r"classifier: expected logits"):
        classifier_loss(lambda x, t: x[:, 0], sde, x, torch.zeros(4, dtype=torch.long))
