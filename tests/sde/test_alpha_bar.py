"""VP SDEs of an alpha-bar schedule (DiscreteVPSDE, CosineVPSDE) against closed forms.

The discrete tables are DDPM's (Ho et al. 2020) and diffusers' named schedules; the cosine schedule
is Nichol & Dhariwal (2021), arXiv:2102.09672, eq. 17."""
import math

import numpy as np
import pytest
import torch

import scoresde as ss
from scoresde.sde.alpha_bar import beta_schedule

M = 1000
TABLES = {
    "linear": dict(schedule="linear"),
    "scaled_linear": dict(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "squaredcos_cap_v2": dict(schedule="squaredcos_cap_v2"),
    "sigmoid": dict(schedule="sigmoid"),
}


def cosine_alpha_bar(t, s=0.008):
    """alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t + s) / (1 + s) pi / 2), written out independently."""
    f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2        # noqa: E731
    return f(np.asarray(t, dtype=np.float64)) / f(0.0)


def all_sdes():
    out = {f"{k}-{i}": ss.DiscreteVPSDE(**v, interpolation=i) for k, v in TABLES.items() for i in ("cubic", "pchip", "linear")}
    out["cosine"] = ss.CosineVPSDE()
    return out


SDES = all_sdes()


def ddpm_alpha_bar(name):
    """The table written out from the schedule's definition (Ho et al. 2020; diffusers)."""
    i = np.arange(M, dtype=np.float64)
    if name == "linear":
        b = np.linspace(1e-4, 0.02, M)
    elif name == "scaled_linear":
        b = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, M) ** 2
    elif name == "sigmoid":
        b = 1e-4 + (0.02 - 1e-4) / (1 + np.exp(-np.linspace(-6, 6, M)))
    else:
        b = np.minimum(1 - cosine_alpha_bar((i + 1) / M) / cosine_alpha_bar(i / M), 0.999)
    return np.cumprod(1 - b), b


@pytest.mark.parametrize("name", list(SDES))
def test_marginals_at_the_timesteps_equal_the_table(name):
    sde = SDES[name]
    if name == "cosine":
        t = torch.linspace(0, sde.T, 101, dtype=torch.float64)
        ab = torch.from_numpy(cosine_alpha_bar(t.numpy()))
    else:
        ab_np, _ = ddpm_alpha_bar(name.split("-")[0])
        ab, t = torch.from_numpy(ab_np), sde.t_from_timestep(torch.arange(M))
        torch.testing.assert_close(t, (torch.arange(M, dtype=torch.float64) + 1) / M, rtol=0, atol=0)
    alpha, sigma = sde.marginal_coefs(t)
    torch.testing.assert_close(alpha.square(), ab, rtol=1e-12, atol=0)
    torch.testing.assert_close(sigma.square(), 1 - ab, rtol=1e-10, atol=1e-15)
    a0, s0 = sde.marginal_coefs(torch.zeros(1, dtype=torch.float64))
    assert float(a0) == 1.0 and float(s0) == 0.0                     # t = 0 is the data


@pytest.mark.parametrize("name", list(SDES))
def test_beta_is_minus_the_derivative_of_log_alpha_bar(name):
    sde = SDES[name]
    h = 1e-6
    # interior points away from the nodes (linear interpolation has beta jump there)
    t = (torch.arange(5, 990, 37, dtype=torch.float64) + 0.4) / M * sde.T
    fd = -(sde.log_alpha_bar(t + h) - sde.log_alpha_bar(t - h)) / (2 * h)
    torch.testing.assert_close(sde.beta(t), fd, rtol=1e-6, atol=0)
    assert bool((sde.beta(torch.linspace(0, sde.T, 20001, dtype=torch.float64)) > 0).all())
    if name == "cosine":    # beta(t) = pi / (1 + s) tan((t + s) / (1 + s) pi / 2)
        torch.testing.assert_close(sde.beta(t), math.pi / 1.008 * torch.tan((t + 0.008) / 1.008 * math.pi / 2))


@pytest.mark.parametrize("name", ["linear-cubic", "squaredcos_cap_v2-cubic", "cosine"])
@pytest.mark.parametrize("shape", [(5, 2), (3, 2, 4, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_drift_diffusion_and_marginal_prob(name, shape, dtype):
    sde = SDES[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    t = 1e-3 + 0.99 * sde.T * torch.rand(shape[0], generator=g, dtype=torch.float64)
    beta, ab = sde.beta(t), sde.log_alpha_bar(t).exp()
    bb = beta.reshape(-1, *([1] * (x.ndim - 1)))
    drift, diff = sde.sde(x.to(dtype), t.to(dtype))
    mean, std = sde.marginal_prob(x.to(dtype), t.to(dtype))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for got, ref in [(drift, -0.5 * bb * x), (diff, beta.sqrt()), (mean, ab.sqrt().reshape(bb.shape) * x),
                     (std, (1 - ab).sqrt())]:
        assert got.dtype == dtype
        torch.testing.assert_close(got, ref.to(dtype), **tol)
    assert diff.shape == (shape[0],) and std.shape == (shape[0],)
    d1, _ = sde.sde(x, 0.3)
    d2, _ = sde.sde(x, torch.tensor(0.3, dtype=torch.float64))
    torch.testing.assert_close(d1, d2)


@pytest.mark.parametrize("name", list(SDES))
def test_integral_of_beta_is_minus_log_alpha_bar(name):
    """E[x_t] = alpha x0 and Var = sigma^2 solve m' = -beta m / 2, v' = beta (1 - v) from (1, 0), i.e.
    int_0^t beta = -log alpha_bar(t): 3-point Gauss-Legendre on every node interval (exact for the
    piecewise quadratic beta of the interpolants; 20 panels per interval for the cosine SDE)."""
    sde = SDES[name]
    K, P = (1000, 1) if name != "cosine" else (100, 20)              # intervals, panels per interval
    edges = torch.arange(K + 1, dtype=torch.float64) * sde.T / K
    x, w = (torch.from_numpy(v) for v in np.polynomial.legendre.leggauss(3))
    h = sde.T / (K * P)
    pts = torch.arange(K * P, dtype=torch.float64)[:, None] * h + (x[None] + 1) * (h / 2)   # panel nodes
    panels = (sde.beta(pts.flatten()).reshape(pts.shape) * w).sum(1) * (h / 2)
    integral = torch.cumsum(panels.reshape(K, P).sum(1), 0)
    torch.testing.assert_close(integral, -sde.log_alpha_bar(edges[1:]), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["linear-cubic", "cosine"])
def test_forward_simulation_matches_marginal_prob(name):
    """Euler-Maruyama on dx = -beta x / 2 dt + sqrt(beta) dw, 20000 paths: mean and variance at t."""
    sde = SDES[name]
    g = torch.Generator().manual_seed(0)
    n, steps, x0 = 20000, 1000, 1.5
    ts = torch.linspace(0, 0.6, steps + 1, dtype=torch.float64)
    x = torch.full((n, 1), x0, dtype=torch.float64)
    for i in range(steps):
        drift, diff = sde.sde(x, ts[i])
        x = x + drift * (ts[i + 1] - ts[i]) + diff[:, None] * (ts[i + 1] - ts[i]).sqrt() * torch.randn(x.shape, generator=g, dtype=x.dtype)
    mean, std = sde.marginal_prob(torch.full((1, 1), x0, dtype=torch.float64), 0.6)
    assert abs(x.mean() - mean.item()) < 4 * std.item() / math.sqrt(n) + 2e-3
    assert abs(x.var() / std.item() ** 2 - 1) < 4 * math.sqrt(2 / n) + 5e-3


def test_discrete_cosine_table_is_the_cosine_sde_at_the_timesteps():
    """squaredcos_cap_v2's table is alpha_bar((i + 1) / M) of the cosine SDE until beta is clipped at 0.999."""
    table, cos = SDES["squaredcos_cap_v2-cubic"], ss.CosineVPSDE(T=0.999)
    _, b = ddpm_alpha_bar("squaredcos_cap_v2")
    n = int(np.argmax(b >= 0.999))                                   # first clipped step
    assert 990 < n < M
    t = table.t_from_timestep(torch.arange(n - 1))
    torch.testing.assert_close(table.marginal_coefs(t)[0], cos.marginal_coefs(t)[0], rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", list(SDES))
def test_half_log_snr_inverse(name):
    sde = SDES[name]
    t = torch.linspace(1e-4, sde.T, 3001, dtype=torch.float64)
    lam = sde.half_log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all())
    torch.testing.assert_close(sde.t_from_half_log_snr(lam), t, rtol=0, atol=1e-12)
    if name == "cosine":    # lambda -> t in closed form: cos(phi) = sqrt(sigmoid(2 lambda) f(0))
        phi = torch.arccos((torch.sigmoid(2 * lam) * math.cos(0.008 / 1.008 * math.pi / 2) ** 2).sqrt())
        torch.testing.assert_close(phi * 2 * 1.008 / math.pi - 0.008, t, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["linear-cubic", "sigmoid-pchip", "squaredcos_cap_v2-linear", "cosine"])
def test_discretize_is_ddpm(name):
    sde = SDES[name]
    x = torch.randn(7, 3, dtype=torch.float64)
    if name != "cosine":                              # N = M: the table's own betas
        _, b = ddpm_alpha_bar(name.split("-")[0])
        torch.testing.assert_close(sde.discrete_betas, torch.from_numpy(b), rtol=1e-9, atol=0)
    for N in (sde.N, 37):
        s = sde.with_steps(N)
        grid = torch.linspace(0, sde.T, N + 1, dtype=torch.float64)
        ab = s.marginal_coefs(grid)[0].square()
        torch.testing.assert_close(s.discrete_betas, 1 - ab[1:] / ab[:-1], rtol=1e-10, atol=0)
        # the reverse-diffusion grid T = t_0 > ... > t_N = eps runs down the steps from N-1 (index
        # floor(t (N - 1) / T), the convention VPSDE shares with score_sde)
        ts = torch.linspace(sde.T, s.default_eps, N + 1, dtype=torch.float64)[:-1]
        k = s.grid_index(ts)
        assert k[0] == N - 1 and k[-1] <= 2 and bool((k[1:] <= k[:-1]).all())
        t = ts[3].expand(7)
        f, G = s.discretize(x, t)
        beta = s.discrete_betas[k[3]]
        torch.testing.assert_close(f, (1 - beta).sqrt() * x - x)     # x_{k+1} = sqrt(1 - beta_k) x_k + sqrt(beta_k) z
        torch.testing.assert_close(G, beta.sqrt().expand(7))
        torch.testing.assert_close(s.langevin_alpha(t), (1 - beta).expand(7))
    assert sde.with_steps(37).config() == {**sde.config(), "N": 37}


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_ancestral_step_is_the_ddpm_posterior(variance):
    sde = ss.DiscreteVPSDE(ancestral_variance=variance)
    g = torch.Generator().manual_seed(0)
    x, score = torch.randn(6, 2, 3, generator=g, dtype=torch.float64), torch.randn(6, 2, 3, generator=g, dtype=torch.float64)
    i, j = torch.tensor([999, 500, 10, 1, 0, 700]), torch.tensor([899, 400, 5, 0, -1, 699])   # timestep -1: t = 0
    t, s = sde.t_from_timestep(i), sde.t_from_timestep(j)
    ab_t, ab_s = sde.alphas_cumprod[i], torch.where(j >= 0, sde.alphas_cumprod[j.clamp(min=0)], torch.ones(6, dtype=torch.float64))
    b = 1 - ab_t / ab_s
    x0 = (x + (1 - ab_t)[:, None, None] * score) / ab_t.sqrt()[:, None, None]              # Tweedie
    # mu = sqrt(ab_s) b / (1 - ab_t) x0 + sqrt(1 - b) (1 - ab_s) / (1 - ab_t) x_t   (Ho et al. 2020, eq. 7)
    mu = ((ab_s.sqrt() * b / (1 - ab_t))[:, None, None] * x0
          + ((1 - b).sqrt() * (1 - ab_s) / (1 - ab_t))[:, None, None] * x)
    var = b if variance == "beta" else (1 - ab_s) / (1 - ab_t) * b
    mean, std = sde.ancestral_step(x, t, s, score)
    torch.testing.assert_close(mean, mu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(std, var.sqrt(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mean[4], x0[4])                       # to t = 0: the data prediction
    # the mean equals score_sde's / VPSDE's (x + beta s) / sqrt(1 - beta)
    torch.testing.assert_close(mean, (x + b[:, None, None] * score) / (1 - b).sqrt()[:, None, None])


def test_prior_and_registry_round_trip():
    for sde in [SDES["linear-cubic"], SDES["cosine"], ss.DiscreteVPSDE(betas=[0.1, 0.2, 0.3], N=5),
                ss.DiscreteVPSDE(alphas_cumprod=[0.9, 0.5, 0.1], interpolation="pchip", ancestral_variance="beta")]:
        name = {ss.DiscreteVPSDE: "discrete_vp", ss.CosineVPSDE: "cosine_vp"}[type(sde)]
        again = ss.get_sde(name, **sde.config())
        t = torch.linspace(0, sde.T, 101, dtype=torch.float64)
        assert torch.equal(again.marginal_coefs(t)[1], sde.marginal_coefs(t)[1]) and again.config() == sde.config()
        assert sde.prior_std == 1.0 and type(sde).__name__ in repr(sde)
        z = torch.randn(4, 3, 2, dtype=torch.float64)
        torch.testing.assert_close(sde.prior_logp(z), -0.5 * z.flatten(1).square().sum(1) - 3 * math.log(2 * math.pi))
    small = ss.DiscreteVPSDE(betas=[0.1, 0.2, 0.3])
    torch.testing.assert_close(small.alphas_cumprod, torch.tensor([0.9, 0.72, 0.504], dtype=torch.float64))
    assert small.N == 3 and small.default_eps == pytest.approx(1 / 3)
    torch.testing.assert_close(beta_schedule("scaled_linear", 3, 0.01, 0.04),
                               torch.tensor([0.01, 0.0225, 0.04], dtype=torch.float64))


def test_timestep_scale():
    sde = SDES["linear-cubic"]
    i = torch.arange(M)
    for dtype in (torch.float32, torch.float64):
        tau = sde.timestep(sde.t_from_timestep(i, dtype))
        assert tau.dtype == dtype and torch.equal(tau, i.to(dtype))          # integers exactly, float32 too
    half = sde.timestep(torch.tensor([0.5005, 0.0, 1e-5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(half, torch.tensor([499.5, 0.0, 0.0, 999.0], dtype=torch.float64))
    seen = []
    net = lambda x, c: seen.append(c) or torch.zeros_like(x)                  # noqa: E731
    ss.ScoreModel(net, sde, "eps", "timestep")(torch.zeros(2, 3), sde.t_from_timestep(torch.tensor([3, 998]), torch.float32))
    assert seen[-1].tolist() == [3.0, 998.0]


def test_ddpm_loss_uses_the_tables_timesteps():
    """ddpm_loss on a DiscreteVPSDE draws timestep i, perturbs with alpha_bar_i, and feeds t_i: it equals
    dsm_loss at t_i with the same noise for an eps-network."""
    sde = ss.DiscreteVPSDE(schedule="squaredcos_cap_v2")
    model = ss.ScoreModel(lambda x, c: torch.sin(x + c[:, None] / 100), sde, "eps", "timestep")
    x0, z = torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    idx = torch.tensor([0, 1, 10, 200, 500, 900, 998, 999])
    per = ss.ddpm_loss(model, sde, x0, t_index=idx, noise=z, per_sample=True)
    ref = ss.dsm_loss(model, sde, x0, t=sde.t_from_timestep(idx), noise=z, per_sample=True)
    torch.testing.assert_close(per, ref)


def test_cubic_refused_where_it_overshoots_and_pchip_is_monotone():
    b = np.where(np.arange(200) % 2 == 0, 1e-4, 0.05)                  # alternating steps
    with pytest.raises(ValueError, match="interpolation: the 'cubic' interpolant.*pchip"):
        ss.DiscreteVPSDE(betas=b)
    sde = ss.DiscreteVPSDE(betas=b, interpolation="pchip")
    t = torch.linspace(0, 1, 20001, dtype=torch.float64)
    assert bool((sde.beta(t) >= 0).all()) and bool((sde.log_alpha_bar(t)[1:] <= sde.log_alpha_bar(t)[:-1]).all())


@pytest.mark.parametrize("call, exc, match", [
    (lambda: ss.DiscreteVPSDE(betas=[0.1, 0.2], schedule="linear"), ValueError, "at most one"),
    (lambda: ss.DiscreteVPSDE(schedule="quadratic"), ValueError, "schedule: expected one of"),
    (lambda: ss.DiscreteVPSDE(alphas_cumprod=[0.5, 0.7]), ValueError, "alphas_cumprod: expected a strictly decreasing"),
    (lambda: ss.DiscreteVPSDE(alphas_cumprod=[0.5, 0.0]), ValueError, "alphas_cumprod"),
    (lambda: ss.DiscreteVPSDE(betas=[0.1, 1.0]), ValueError, r"betas: expected values in \(0, 1\)"),
    (lambda: ss.DiscreteVPSDE(betas=[[0.1, 0.2]]), ValueError, "betas: expected a 1-D"),
    (lambda: ss.DiscreteVPSDE(interpolation="spline"), ValueError, "interpolation"),
    (lambda: ss.DiscreteVPSDE(ancestral_variance="small"), ValueError, "ancestral_variance"),
    (lambda: ss.DiscreteVPSDE(num_timesteps=1), ValueError, "num_timesteps"),
    (lambda: ss.CosineVPSDE(T=1.0), ValueError, r"T: expected a final time in \(0, 1\)"),
    (lambda: ss.CosineVPSDE(s=-1.0), ValueError, "s: expected"),
    (lambda: ss.get_sde("cosine"), KeyError, "cosine_vp"),
])
def test_validation(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
