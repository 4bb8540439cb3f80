"""Losses: DSM == DDPM's eps-MSE sample for sample, the closed-form minimum on Gaussian data,
training recovers the analytic score, and argument validation."""
import math
import time

import pytest
import torch
from torch import nn

import scoresde as ss
from problems import Gaussian

B0, B1, SMIN, SMAX = 0.1, 20.0, 0.01, 50.0
MEAN, STD = torch.tensor([1.0, -0.5]), torch.tensor([0.5, 0.2])   # the 2-D Gaussian data


def make(name, N=1000):
    return {"vp": ss.VPSDE(B0, B1, N), "subvp": ss.SubVPSDE(B0, B1, N), "ve": ss.VESDE(SMIN, SMAX, N)}[name]


def coefs(name, t):
    """(alpha, sigma, g^2) written out from the paper (Song et al. 2021, App. B), t (B,) float64."""
    if name == "ve":
        sig = SMIN * (SMAX / SMIN) ** t
        return torch.ones_like(t), sig, sig ** 2 * 2 * math.log(SMAX / SMIN)
    m = -0.25 * t ** 2 * (B1 - B0) - 0.5 * t * B0
    beta = B0 + t * (B1 - B0)
    if name == "vp":
        return torch.exp(m), torch.sqrt(1 - torch.exp(2 * m)), beta
    return torch.exp(m), 1 - torch.exp(2 * m), beta * (1 - torch.exp(-2 * B0 * t - (B1 - B0) * t ** 2))


def bcast(v, x):
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def eps_net(x, t):
    """A fixed nonlinear noise predictor (any function works for the identities)."""
    return torch.tanh(x) * bcast(1 + t, x) + 0.3 * x.roll(1, dims=-1)


def draws(shape, seed=0, lo=1e-3):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    t = lo + (1 - lo) * torch.rand(shape[0], generator=g, dtype=torch.float64)
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    return x0, t, z


def reduce(sq, reduce_mean):
    sq = sq.flatten(1)
    return sq.mean(1) if reduce_mean else 0.5 * sq.sum(1)


# --- the equivalence, sample for sample ---------------------------------------------------------
@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("shape", [(64, 2), (8, 3, 4, 4)])
@pytest.mark.parametrize("reduce_mean", [True, False])
def test_dsm_of_score_from_eps_is_eps_mse(name, shape, reduce_mean):
    """dsm_loss(score_from_eps(eps)) == ||eps(x_t, t) - z||^2 per sample, reduced over the data
    dimensions by mean (or half the sum); the scalar loss is the mean over the batch."""
    sde = make(name)
    x0, t, z = draws(shape)
    alpha, sigma, _ = coefs(name, t)
    x_t = bcast(alpha, x0) * x0 + bcast(sigma, x0) * z
    ref = reduce((eps_net(x_t, t) - z).square(), reduce_mean)
    score_fn = ss.score_from_eps(eps_net, sde)
    got = ss.dsm_loss(score_fn, sde, x0, t=t, noise=z, reduce_mean=reduce_mean, per_sample=True)
    assert got.shape == (shape[0],) and got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    scalar = ss.dsm_loss(score_fn, sde, x0, t=t, noise=z, reduce_mean=reduce_mean)
    assert scalar.ndim == 0
    torch.testing.assert_close(scalar, ref.mean(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_likelihood_weighting_is_g2(name):
    """lambda = g^2: g^2 ||s + z / sigma||^2 = (g^2 / sigma^2) x the sigma^2-weighted loss."""
    sde = make(name)
    x0, t, z = draws((32, 3))
    _, sigma, g2 = coefs(name, t)
    score_fn = ss.score_from_eps(eps_net, sde)
    for reduce_mean in (True, False):
        plain = ss.dsm_loss(score_fn, sde, x0, t=t, noise=z, reduce_mean=reduce_mean, per_sample=True)
        lw = ss.dsm_loss(score_fn, sde, x0, t=t, noise=z, reduce_mean=reduce_mean, per_sample=True,
                         likelihood_weighting=True)
        torch.testing.assert_close(lw, g2 / sigma ** 2 * plain, rtol=1e-10, atol=0)


class DiscreteKernelVP(ss.VPSDE):
    """VP whose kernel is DDPM's discrete one: alpha(t_i)^2 = alpha_bar_i on the grid t_i = i/(N-1)."""

    def marginal_coefs(self, t):
        ab = self.alphas_cumprod[self.grid_index(t)].to(t.dtype)
        return ab.sqrt(), (1 - ab).sqrt()


@pytest.mark.parametrize("reduce_mean", [True, False])
def test_ddpm_loss_is_eps_mse_and_dsm_on_the_discrete_kernel(reduce_mean):
    """ddpm_loss == ||eps(x_i, t_i) - z||^2 at x_i = sqrt(ab_i) x0 + sqrt(1 - ab_i) z, exactly, with
    ab_i DDPM's cumprod(1 - linspace(1e-4, 0.02, 1000)); and == dsm_loss at t_i = i / (N - 1) of a
    score_from_eps whose std is sqrt(1 - ab_i) (the DSM loss of the discrete kernel)."""
    sde, N = ss.VPSDE(B0, B1, 1000), 1000
    x0, _, z = draws((40, 2, 3), seed=1)
    i = torch.randint(0, N, (40,), generator=torch.Generator().manual_seed(2))
    i[:3] = torch.tensor([0, 1, N - 1])
    ab = torch.cumprod(1 - torch.linspace(1e-4, 0.02, N, dtype=torch.float64), 0)[i]
    x_i = bcast(ab.sqrt(), x0) * x0 + bcast((1 - ab).sqrt(), x0) * z
    seen = []

    def eps_fn(x, t):
        seen.append(t)
        return eps_net(x, t)

    got = ss.ddpm_loss(eps_fn, sde, x0, t_index=i, noise=z, reduce_mean=reduce_mean, per_sample=True)
    t_i = i.double() / (N - 1)
    torch.testing.assert_close(seen[0], t_i, rtol=0, atol=1e-15)       # eps_fn sees t_i = i / 999
    torch.testing.assert_close(got, reduce((eps_net(x_i, t_i) - z).square(), reduce_mean), rtol=0, atol=1e-10)
    disc = DiscreteKernelVP(B0, B1, N)
    dsm = ss.dsm_loss(ss.score_from_eps(eps_net, disc), disc, x0, t=t_i.clamp_min(1e-12), noise=z,
                      reduce_mean=reduce_mean, per_sample=True)
    torch.testing.assert_close(got, dsm, rtol=0, atol=1e-10)


def test_discrete_and_continuous_vp_kernels_agree_to_first_order():
    """alpha_bar_i = alpha(t_i)^2 + O(1/N) on t_i = i / (N - 1): the gap is below 2 / N and shrinks
    4x from N = 1000 to N = 4000, so ddpm_loss approximates the lambda = sigma^2 dsm_loss."""
    gaps = []
    for N in (1000, 4000):
        sde = ss.VPSDE(B0, B1, N)
        alpha, _ = sde.marginal_coefs(torch.arange(N, dtype=torch.float64) / (N - 1))
        gaps.append((sde.alphas_cumprod - alpha ** 2).abs().max().item())
    assert gaps[0] < 2 / 1000 and gaps[1] < 2 / 4000
    assert 3.5 < gaps[0] / gaps[1] < 4.5, gaps


@pytest.mark.parametrize("reduce_mean", [True, False])
def test_smld_loss_is_dsm_on_the_sigma_grid(reduce_mean):
    """smld_loss == sigma_i^2 ||s + z / sigma_i||^2 (score_sde's form) == dsm_loss at t_i = i / (N - 1)."""
    sde, N = ss.VESDE(SMIN, SMAX, 1000), 1000
    x0, _, z = draws((40, 5), seed=3)
    i = torch.randint(0, N, (40,), generator=torch.Generator().manual_seed(4))
    i[:2] = torch.tensor([0, N - 1])
    sig = SMIN * (SMAX / SMIN) ** (i.double() / (N - 1))
    score_fn = ss.score_from_eps(eps_net, sde)
    got = ss.smld_loss(score_fn, sde, x0, sigma_index=i, noise=z, reduce_mean=reduce_mean, per_sample=True)
    x_i = x0 + bcast(sig, x0) * z
    s = score_fn(x_i, i.double() / (N - 1))
    ref = sig ** 2 * reduce((s + z / bcast(sig, x0)).square(), reduce_mean)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    dsm = ss.dsm_loss(score_fn, sde, x0, t=(i.double() / (N - 1)).clamp_min(1e-12), noise=z,
                      reduce_mean=reduce_mean, per_sample=True)
    torch.testing.assert_close(got, dsm, rtol=1e-10, atol=1e-10)


def test_ddpm_loss_takes_a_score_model_through_its_eps():
    sde = ss.VPSDE(B0, B1, 1000)
    model = ss.ScoreModel(lambda x, c: eps_net(x, c / 999), sde, "eps")
    x0, _, z = draws((16, 2), seed=5)
    i = torch.arange(0, 1000, 64)[:16]
    torch.testing.assert_close(ss.ddpm_loss(model, sde, x0, t_index=i, noise=z),
                               ss.ddpm_loss(model.eps, sde, x0, t_index=i, noise=z), rtol=0, atol=0)


@pytest.mark.parametrize("loss", ["dsm", "ddpm", "smld"])
def test_random_draws_come_from_the_generator(loss):
    sde = make("ve" if loss == "smld" else "vp")
    fn = {"dsm": ss.dsm_loss, "ddpm": ss.ddpm_loss, "smld": ss.smld_loss}[loss]
    x0 = draws((64, 2))[0]
    score_fn = ss.score_from_eps(eps_net, sde)
    a = fn(score_fn, sde, x0, generator=torch.Generator().manual_seed(7))
    b = fn(score_fn, sde, x0, generator=torch.Generator().manual_seed(7))
    c = fn(score_fn, sde, x0, generator=torch.Generator().manual_seed(8))
    assert a == b and a != c


def test_dsm_draws_t_uniform_on_eps_T():
    sde, n, eps = make("vp"), 20000, 0.2
    seen = []
    ss.dsm_loss(lambda x, t: seen.append(t) or torch.zeros_like(x), sde, torch.zeros(n, 1, dtype=torch.float64),
                eps=eps, generator=torch.Generator().manual_seed(0))
    t = seen[0]
    assert t.min() >= eps and t.max() <= 1.0
    se = (1 - eps) / math.sqrt(12 * n)
    assert abs(t.mean().item() - (1 + eps) / 2) < 3 * se
    assert abs(t.var().item() - (1 - eps) ** 2 / 12) < 0.05 * (1 - eps) ** 2 / 12


# --- the minimum on Gaussian data ---------------------------------------------------------------
def optimal_loss(name, t, std):
    """E ||sigma s*(x_t) + z||^2 per dimension for data N(mu, std^2): 1 - sigma^2 / (alpha^2 std^2 + sigma^2),
    since sigma s* + z = z alpha^2 std^2 / v - sigma alpha (x0 - mu) / v with v = alpha^2 std^2 + sigma^2."""
    alpha, sigma, _ = coefs(name, t)
    v = alpha[:, None] ** 2 * std ** 2 + sigma[:, None] ** 2
    return 1 - sigma[:, None] ** 2 / v                                  # (B, D)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_true_score_attains_the_closed_form_minimum(name):
    """t ~ U(eps, 1) inside dsm_loss: the mean loss of the exact score matches
    (1 / (1 - eps)) int_eps^1 mean_d [1 - sigma^2 / (alpha^2 s_d^2 + sigma^2)] dt within 3 SE."""
    sde, data, n, eps = make(name), Gaussian(MEAN, STD), 40000, 1e-5
    g = torch.Generator().manual_seed(11)
    x0 = data.sample(n, generator=g)
    losses = ss.dsm_loss(data.score_fn(sde), sde, x0, eps=eps, generator=g, per_sample=True)
    tq = torch.linspace(eps, 1, 200001, dtype=torch.float64)
    expected = torch.trapezoid(optimal_loss(name, tq, STD.double()).mean(1), tq).item() / (1 - eps)
    se = losses.std().item() / math.sqrt(n)
    assert abs(losses.mean().item() - expected) < 3 * se, (losses.mean().item(), expected, se)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("likelihood_weighting", [False, True])
def test_perturbed_score_scores_worse_by_sigma2_delta2(name, likelihood_weighting):
    """Loss(s* + delta) - Loss(s*) = lambda ||delta||^2 (mean over dims) + a zero-mean cross term,
    because E[sigma s*(x_t) + z | x_t] = 0. Checked per sample (paired) within 3 SE; positive."""
    sde, data, n = make(name), Gaussian(MEAN, STD), 20000
    g = torch.Generator().manual_seed(12)
    x0 = data.sample(n, generator=g)
    t = 0.05 + 0.95 * torch.rand(n, generator=g, dtype=torch.float64)
    z = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    true = data.score_fn(sde)
    _, sigma, g2 = coefs(name, t)
    lam = g2 if likelihood_weighting else sigma ** 2

    def delta(x, t):
        return 0.3 * torch.tanh(x - 0.5) / bcast(sigma, x)        # a perturbation of score size

    def run(fn):
        return ss.dsm_loss(fn, sde, x0, t=t, noise=z, per_sample=True, likelihood_weighting=likelihood_weighting)

    base = run(true)
    worse = run(lambda x, t: true(x, t) + delta(x, t))
    closed = (optimal_loss(name, t, STD.double()) * (lam / sigma ** 2)[:, None]).mean(1)
    assert abs(base.mean() - closed.mean()) < 3 * base.std() / math.sqrt(n)      # minimum, given t
    alpha, _, _ = coefs(name, t)
    x_t = bcast(alpha, x0) * x0 + bcast(sigma, x0) * z
    excess = lam * delta(x_t, t).square().mean(1)
    diff = worse - base
    assert diff.mean() > 0
    assert abs(diff.mean() - excess.mean()) < 3 * (diff - excess).std() / math.sqrt(n)


# --- training recovers the analytic score -------------------------------------------------------
class TimeMLP(nn.Module):
    """3 hidden layers of 128 SiLU; input x and sin/cos features of c / 999 (c = 999 t)."""

    def __init__(self, dim=2, hidden=128, nfreq=8):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(100.0), nfreq)))
        self.net = nn.Sequential(nn.Linear(dim + 2 * nfreq, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))
        self.data_shape = (dim,)

    def forward(self, x, c):
        a = (c / 999.0)[:, None] * self.freqs
        return self.net(torch.cat([x, a.sin(), a.cos()], 1))


def train_and_measure(loss_name, steps=2000, batch=256, seed=0):
    """Adam (lr 2e-3, cosine decay) on N((1, -0.5), diag(0.5, 0.2)^2) under VP; returns the relative L2
    error sqrt(sum ||s_hat - s||^2 / sum ||s||^2) on 4000 held-out (x_t, t), t ~ U(0.1, 1)."""
    torch.manual_seed(seed)
    sde, data = ss.VPSDE(B0, B1, 1000), Gaussian(MEAN, STD)
    model = ss.ScoreModel(TimeMLP(), sde, parameterization="eps")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    loss_fn = ss.dsm_loss if loss_name == "dsm" else ss.ddpm_loss
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = loss_fn(model, sde, data.sample(batch, generator=g, dtype=torch.float32), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    ge = torch.Generator().manual_seed(1234)
    x0 = data.sample(4000, generator=ge)
    t = 0.1 + 0.9 * torch.rand(4000, generator=ge, dtype=torch.float64)
    mean, std = sde.marginal_prob(x0, t)
    x_t = mean + std[:, None] * torch.randn(x0.shape, generator=ge, dtype=torch.float64)
    with torch.no_grad():
        s_hat = model(x_t.float(), t.float()).double()
    s = data.score(x_t, t, sde)
    return ((s_hat - s).square().sum() / s.square().sum()).sqrt().item()


@pytest.mark.parametrize("loss_name", ["dsm", "ddpm"])
def test_training_recovers_the_analytic_score(loss_name):
    start, cpu = time.perf_counter(), time.process_time()
    err = train_and_measure(loss_name)
    print(f"\n{loss_name}_loss-trained eps-MLP: relative L2 score error {err:.4f} (t in [0.1, 1]); "
          f"{time.perf_counter() - start:.1f} s wall, {time.process_time() - cpu:.1f} s CPU")
    assert err < 0.05


# --- validation ---------------------------------------------------------------------------------
def _x():
    return torch.randn(4, 2, dtype=torch.float64)


def _s(x, t):
    return -x


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(score_fn=3), TypeError, "score_fn"),
    (dict(sde=object()), TypeError, "sde"),
    (dict(x0=[[1.0, 2.0]]), TypeError, "x0"),
    (dict(x0=torch.ones(4, 2, dtype=torch.long)), ValueError, "x0"),
    (dict(t="0.5"), TypeError, "t"),
    (dict(t=torch.full((3,), 0.5)), ValueError, r"t: expected shape \(4,\)"),
    (dict(t=0.0), ValueError, r"t: expected times in \(0"),
    (dict(t=1.5), ValueError, "t: expected times"),
    (dict(noise=[0.0]), TypeError, "noise"),
    (dict(noise=torch.zeros(4, 3)), ValueError, r"noise: expected .*\(4, 2\)"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(eps=1.0), ValueError, "eps"),
    (dict(reduce_mean=1), TypeError, "reduce_mean"),
    (dict(likelihood_weighting="yes"), TypeError, "likelihood_weighting"),
    (dict(per_sample=None), TypeError, "per_sample"),
    (dict(generator=0), TypeError, "generator"),
    (dict(score_fn=lambda x, t: x[:, :1]), ValueError, r"score_fn: expected an output of shape \(4, 2\)"),
])
def test_dsm_loss_validation(kwargs, exc, match):
    args = dict(score_fn=_s, sde=make("vp"), x0=_x())
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        ss.dsm_loss(args.pop("score_fn"), args.pop("sde"), args.pop("x0"), **args)


@pytest.mark.parametrize("fn, sde_name, index_kw", [(ss.ddpm_loss, "vp", "t_index"), (ss.smld_loss, "ve", "sigma_index")])
def test_discrete_losses_validation(fn, sde_name, index_kw):
    sde, x = make(sde_name), _x()
    fn(_s, sde, x, **{index_kw: 999})                        # valid: a plain int index
    fn(_s, sde, x, **{index_kw: torch.tensor([0, 1, 2, 999], dtype=torch.int32)})
    cases = [
        ({index_kw: 0.5}, TypeError, index_kw),
        ({index_kw: torch.tensor([0.0, 1.0, 2.0, 3.0])}, TypeError, f"{index_kw}: expected an integer tensor"),
        ({index_kw: torch.tensor([0, 1])}, ValueError, rf"{index_kw}: expected shape \(4,\)"),
        ({index_kw: 1000}, ValueError, rf"{index_kw}: expected indices in \[0, N=1000\)"),
        ({index_kw: -1}, ValueError, index_kw),
        ({"noise": torch.zeros(4, 1)}, ValueError, "noise"),
        ({"reduce_mean": None}, TypeError, "reduce_mean"),
        ({"generator": "seed"}, TypeError, "generator"),
    ]
    for kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            fn(_s, sde, x, **kwargs)
    with pytest.raises(TypeError, match="eps_fn|score_fn"):
        fn(None, sde, x)
    with pytest.raises(TypeError, match="x0"):
        fn(_s, sde, x.numpy())
    with pytest.raises(ValueError, match="expected an output of shape"):
        fn(lambda x, t: x.sum(1), sde, x)


def test_discrete_losses_refuse_the_wrong_sde_kind():
    x = _x()
    with pytest.raises(TypeError, match="vpsde: .*alphas_cumprod.*found VESDE"):
        ss.ddpm_loss(_s, make("ve"), x)
    with pytest.raises(TypeError, match="vpsde: expected a variance-preserving marginal.*SubVPSDE"):
        ss.ddpm_loss(_s, make("subvp"), x)
    with pytest.raises(TypeError, match="vesde: .*discrete_sigmas.*found VPSDE"):
        ss.smld_loss(_s, make("vp"), x)
    with pytest.raises(TypeError, match="vesde: .*found SubVPSDE"):
        ss.smld_loss(_s, make("subvp"), x)
