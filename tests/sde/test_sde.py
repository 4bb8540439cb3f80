"""The three SDEs against their closed forms (Song et al. 2021, Appendix B)."""
import math

import pytest
import torch

import scoresde as ss
from scoresde._common.registry import Registry

B0, B1, SMIN, SMAX = 0.1, 20.0, 0.01, 50.0
SHAPES = [(5, 2), (3, 2, 4, 4)]  # rank-2 points and rank-4 images


def make(name, N=1000):
    return {"vp": ss.VPSDE(B0, B1, N), "subvp": ss.SubVPSDE(B0, B1, N), "ve": ss.VESDE(SMIN, SMAX, N)}[name]


def closed_form(name, x, t):
    """(drift, diffusion, mean, std) written out independently from the paper, t: (B,) float64."""
    tt = t.reshape(-1, *([1] * (x.ndim - 1)))
    if name == "ve":
        sig = SMIN * (SMAX / SMIN) ** t
        return torch.zeros_like(x), sig * math.sqrt(2 * math.log(SMAX / SMIN)), x, sig
    beta = B0 + t * (B1 - B0)
    m = -0.25 * t ** 2 * (B1 - B0) - 0.5 * t * B0
    mm = m.reshape(tt.shape)
    drift = -0.5 * (B0 + tt * (B1 - B0)) * x
    if name == "vp":
        return drift, beta.sqrt(), torch.exp(mm) * x, torch.sqrt(1 - torch.exp(2 * m))
    g = torch.sqrt(beta * (1 - torch.exp(-2 * B0 * t - (B1 - B0) * t ** 2)))
    return drift, g, torch.exp(mm) * x, 1 - torch.exp(2 * m)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sde_and_marginal_closed_form(name, shape, dtype):
    sde = make(name)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.rand(shape[0], generator=g, dtype=torch.float64) * 0.999 + 1e-3
    f_ref, g_ref, m_ref, s_ref = closed_form(name, x, t)
    drift, diff = sde.sde(x.to(dtype), t.to(dtype))
    mean, std = sde.marginal_prob(x.to(dtype), t.to(dtype))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for got, ref in [(drift, f_ref), (diff, g_ref), (mean, m_ref), (std, s_ref)]:
        assert got.dtype == dtype
        torch.testing.assert_close(got, ref.to(dtype), **tol)
    assert diff.shape == (shape[0],) and std.shape == (shape[0],)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_float_time_broadcasts(name):
    sde = make(name)
    x = torch.randn(4, 3, 2, 2)
    d1, g1 = sde.sde(x, 0.3)
    d2, g2 = sde.sde(x, torch.full((4,), 0.3))
    d3, g3 = sde.sde(x, torch.tensor(0.3))
    torch.testing.assert_close(d1, d2), torch.testing.assert_close(g1, g3)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_marginal_matches_forward_simulation(name):
    """Euler-Maruyama on the forward SDE from a fixed x0: mean and variance within 3 SE."""
    sde = make(name)
    n, steps, t_end = 20000, 1000, 0.5
    g = torch.Generator().manual_seed(1)
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64)
    x = x0.expand(n, 2).clone()
    dt = t_end / steps
    for i in range(steps):
        drift, diff = sde.sde(x, i * dt)
        x = x + drift * dt + diff[:, None] * math.sqrt(dt) * torch.randn(x.shape, generator=g, dtype=x.dtype)
    mean, std = sde.marginal_prob(x0[None], t_end)
    var = std ** 2
    emp_mean, emp_var = x.mean(0), x.var(0)
    se_mean = (var / n).sqrt()
    se_var = var * math.sqrt(2 / (n - 1))
    bias = 5 * dt * (var + mean.abs()).squeeze()  # first-order EM bias allowance
    assert ((emp_mean - mean[0]).abs() <= 3 * se_mean + bias).all(), (emp_mean, mean)
    assert ((emp_var - var).abs() <= 3 * se_var + bias).all(), (emp_var, var)


def test_vp_discretizes_to_ddpm_schedule():
    sde = ss.VPSDE(0.1, 20.0, N=1000)
    ddpm = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)  # Ho et al. (2020)
    assert torch.equal(sde.discrete_betas, ddpm)
    idx = torch.arange(1000)
    t = idx.double() / 999
    x = torch.ones(1000, 1, 2, 2, dtype=torch.float64)
    f, G = sde.discretize(x, t)
    torch.testing.assert_close(G, ddpm.sqrt(), rtol=0, atol=0)
    torch.testing.assert_close(f, (torch.sqrt(1 - ddpm) - 1).reshape(-1, 1, 1, 1).expand_as(x), rtol=0, atol=0)
    # float32 times on the grid land on the same index
    f32, G32 = sde.discretize(x.float(), t.float())
    torch.testing.assert_close(G32, ddpm.sqrt().float())


def test_ve_discretizes_to_smld_grid():
    N = 10
    sde = ss.VESDE(0.01, 50.0, N=N)
    sig = torch.tensor([0.01 * (50.0 / 0.01) ** (i / (N - 1)) for i in range(N)], dtype=torch.float64)
    torch.testing.assert_close(sde.discrete_sigmas, sig, rtol=1e-13, atol=0)
    t = torch.arange(N).double() / (N - 1)
    x = torch.zeros(N, 2, dtype=torch.float64)
    f, G = sde.discretize(x, t)
    prev = torch.cat([torch.zeros(1, dtype=torch.float64), sig[:-1]])
    torch.testing.assert_close(G, (sig ** 2 - prev ** 2).sqrt(), rtol=1e-12, atol=0)
    assert torch.equal(f, torch.zeros_like(x))


def test_subvp_discretize_is_euler_maruyama():
    sde = ss.SubVPSDE(N=100)
    x = torch.randn(3, 2, dtype=torch.float64)
    f, G = sde.discretize(x, 0.4)
    drift, g = sde.sde(x, 0.4)
    torch.testing.assert_close(f, drift * 0.01), torch.testing.assert_close(G, g * 0.1)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("shape", SHAPES)
def test_reverse_drift(name, shape):
    sde = make(name)
    x = torch.randn(shape, dtype=torch.float64)
    t = torch.rand(shape[0], dtype=torch.float64)
    score = lambda x, t: -x * (1 + t.reshape(-1, *([1] * (x.ndim - 1))))
    drift, g = sde.sde(x, t)
    s = score(x, t)
    g2 = (g ** 2).reshape(-1, *([1] * (x.ndim - 1)))
    rd, rg = sde.reverse(score).sde(x, t)
    torch.testing.assert_close(rd, drift - g2 * s), torch.testing.assert_close(rg, g)
    pd, pg = sde.reverse(score, probability_flow=True).sde(x, t)
    torch.testing.assert_close(pd, drift - 0.5 * g2 * s)
    assert torch.equal(pg, torch.zeros_like(g))
    f, G = sde.discretize(x, t)
    G2 = (G ** 2).reshape(g2.shape)
    rf, rG = sde.reverse(score).discretize(x, t)
    torch.testing.assert_close(rf, f - G2 * s), torch.testing.assert_close(rG, G)
    pf, _ = sde.reverse(score, True).discretize(x, t)
    torch.testing.assert_close(pf, f - 0.5 * G2 * s)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("shape", SHAPES)
def test_prior(name, shape):
    sde = make(name)
    g = torch.Generator().manual_seed(3)
    z = sde.prior_sampling(shape, generator=g, dtype=torch.float64)
    assert z.shape == shape and z.dtype == torch.float64
    z2 = sde.prior_sampling(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(z, z2)
    std = SMAX if name == "ve" else 1.0
    ref = torch.distributions.Normal(0.0, torch.tensor(std, dtype=torch.float64)).log_prob(z).flatten(1).sum(1)
    torch.testing.assert_close(sde.prior_logp(z), ref, rtol=1e-12, atol=1e-9)
    big = sde.prior_sampling((20000, 3), generator=g, dtype=torch.float64)
    assert abs(big.std().item() / std - 1) < 0.02


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_half_log_snr_inverse(name):
    sde = make(name)
    t = torch.linspace(1e-4, 1.0, 101, dtype=torch.float64)
    lam = sde.half_log_snr(t)
    assert (lam[1:] < lam[:-1]).all()
    torch.testing.assert_close(sde.t_from_half_log_snr(lam), t, rtol=1e-9, atol=1e-10)


def test_ve_ancestral_step_is_smld():
    sde = ss.VESDE(0.01, 50.0, N=1000)
    x = torch.randn(4, 2, dtype=torch.float64)
    s_ = torch.randn(4, 2, dtype=torch.float64)
    t, s = torch.full((4,), 0.7, dtype=torch.float64), torch.full((4,), 0.6, dtype=torch.float64)
    st, ss_ = sde.sigma(t), sde.sigma(s)
    mean, std = sde.ancestral_step(x, t, s, s_)
    torch.testing.assert_close(mean, x + (st ** 2 - ss_ ** 2)[:, None] * s_)
    torch.testing.assert_close(std, (ss_ ** 2 * (st ** 2 - ss_ ** 2) / st ** 2).sqrt())


def test_vp_ancestral_step_is_ddpm():
    sde = ss.VPSDE(N=1000)
    x, sc = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    t, s = torch.full((4,), 0.5, dtype=torch.float64), torch.full((4,), 0.499, dtype=torch.float64)
    mean, std = sde.ancestral_step(x, t, s, sc)
    a_t, a_s = sde.marginal_coefs(t)[0], sde.marginal_coefs(s)[0]
    beta = 1 - (a_t / a_s) ** 2  # the step's beta: 1 - exp(-int_s^t beta(u) du)
    torch.testing.assert_close(std, beta.sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(mean, (x + beta[:, None] * sc) / (1 - beta[:, None]).sqrt(), rtol=1e-12, atol=0)
    # ... which is DDPM's beta_i up to the second-order term of 1 - e^{-b} = b - b^2/2
    beta_i = sde.discrete_beta(t)
    torch.testing.assert_close(beta, beta_i, rtol=0.6 * beta_i.max().item() + 1e-3, atol=0)


def test_get_sde_registry():
    assert isinstance(ss.get_sde("vp", beta_max=10.0), ss.VPSDE)
    assert isinstance(ss.get_sde("subvp"), ss.SubVPSDE)
    assert ss.get_sde("ve", sigma_max=10.0).sigma_max == 10.0
    with pytest.raises(KeyError, match="unknown SDE 'vq'.*subvp.*ve.*vp"):
        ss.get_sde("vq")


def test_registry_refuses_duplicates():
    r = Registry("thing")
    r.register("a")(1)
    with pytest.raises(ValueError, match="already registered"):
        r.register("a")(2)
    assert list(r) == ["a"] and r["a"] == 1


@pytest.mark.parametrize("call, exc, match", [
    (lambda: ss.VPSDE(beta_min=-1.0), ValueError, "beta_min: expected a finite positive number, found -1.0"),
    (lambda: ss.VPSDE(beta_min=5.0, beta_max=1.0), ValueError, "beta_max: expected > beta_min"),
    (lambda: ss.SubVPSDE(beta_max=float("nan")), ValueError, "beta_max"),
    (lambda: ss.VESDE(sigma_min=0.0), ValueError, "sigma_min: expected a finite positive number, found 0.0"),
    (lambda: ss.VESDE(sigma_min=2.0, sigma_max=1.0), ValueError, "sigma_max: expected > sigma_min"),
    (lambda: ss.VESDE(sigma_max="50"), TypeError, "sigma_max: expected a real number, found str"),
    (lambda: ss.VPSDE(N=0), ValueError, "N: expected an int >= 1, found 0"),
    (lambda: ss.VPSDE(N=10.5), TypeError, "N: expected an int"),
    (lambda: ss.VPSDE().sde(torch.zeros(3, 2), torch.zeros(4)), ValueError, r"t: expected shape \(3,\).*found \(4,\)"),
    (lambda: ss.VPSDE().sde(torch.zeros(3, 2), "0.5"), TypeError, "t: expected a float or a tensor"),
    (lambda: ss.VPSDE().sde([[0.0]], 0.5), TypeError, "x: expected a torch.Tensor"),
    (lambda: ss.VPSDE().marginal_prob(torch.zeros(3, dtype=torch.long), 0.5), ValueError, "x0: expected a floating-point"),
    (lambda: ss.VPSDE().prior_sampling((0, 2)), ValueError, "shape: expected a non-empty sequence of positive ints"),
    (lambda: ss.VESDE().prior_logp(None), TypeError, "z: expected a torch.Tensor"),
    (lambda: ss.VPSDE().reverse("score"), TypeError, "score_fn: expected a callable"),
])
def test_validation_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
