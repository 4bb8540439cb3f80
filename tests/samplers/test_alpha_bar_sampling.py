"""Every sampler, the likelihood and guidance on the alpha-bar VP SDEs, with exact Gaussian scores.

DiscreteVPSDE (DDPM's linear table and the squaredcos_cap_v2 table) and the closed-form
CosineVPSDE; targets are the exact perturbed marginals, flow maps and densities of
`scoresde.analytic`. Also the explicit time grids of `sample(..., times=...)`."""
import math

import pytest
import torch

import scoresde as ss
from scoresde.samplers.core import sample
from problems import Gaussian, four_mode_mixture
from problems import ExactConditional, class_rate, exact_classifier

SDES = {"discrete_linear": lambda: ss.DiscreteVPSDE(),
        "discrete_cosine": lambda: ss.DiscreteVPSDE(schedule="squaredcos_cap_v2"),
        "cosine": lambda: ss.CosineVPSDE()}
MU = torch.tensor([0.5, -1.0], dtype=torch.float64)
STD = torch.tensor([0.3, 1.2], dtype=torch.float64)
# (options, steps, allowed relative variance bias). The biases, measured with 20000 samples (SE 1%):
# at 200 steps euler_maruyama <= 1.3%, reverse_diffusion <= 2.6%, torchsde <= 1.2%, pc <= 5%
# (Langevin's own inflation, see test_samplers), ddim <= 5%; ancestral with the posterior variance
# (diffusers' "fixed_small", a lower bound: it omits the uncertainty of x0 given x_t) -11% at 200
# steps, about -4% at 500; at 50 steps heun, dpm_solver and deis <= 10% (the squaredcos table's
# clipped last steps are the hard case). Allowances: those plus ~2%.
BUDGET = {
    "euler_maruyama": ({}, 200, 0.035), "reverse_diffusion": ({}, 200, 0.045), "ancestral": ({}, 500, 0.06),
    "pc": ({}, 200, 0.07), "torchsde": ({}, 200, 0.035), "ode": ({}, None, 0.01),
    "ddim": ({}, 200, 0.07), "heun": ({}, 50, 0.08), "dpm_solver": ({}, 50, 0.05), "deis": ({}, 50, 0.12),
    "unipc": ({}, 50, 0.05), "bns": ({}, 50, 0.05),     # bns without fitted weights runs unipc's
    "edm": ({"S_churn": 10.0}, 100, 0.08),
}


def target(sde, eps):
    alpha, sigma = sde.marginal_coefs(torch.tensor([eps], dtype=torch.float64))
    return alpha * MU, alpha.square() * STD.square() + sigma.square()


def test_every_registered_sampler_is_covered():
    assert set(ss.list_samplers()) - set(BUDGET) <= {"annealed_langevin"}


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("sampler", list(BUDGET))
def test_gaussian_moments(sampler, name):
    sde, n = SDES[name](), 2000
    opts, steps, bias = BUDGET[sampler]
    data = Gaussian(MU, STD)
    x, info = sample(sde, data.score_fn(sde), (n, 2), sampler=sampler, steps=steps, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(1), return_info=True, **opts)
    mean, var = target(sde, sde.default_eps)
    rel = (x.var(0) / var - 1).abs()
    print(f"{name} {sampler}: NFE {info['nfe']}, variance rel. error {rel.max():.4f}")
    assert ((x.mean(0) - mean).abs() <= 3 * (var / n).sqrt() + 0.02 * var.sqrt()).all(), (x.mean(0), mean)
    assert (rel <= 3 * math.sqrt(2 / (n - 1)) + bias).all(), (x.var(0), var)


@pytest.mark.parametrize("name", list(SDES))
def test_ode_and_fast_samplers_follow_the_exact_flow_map(name):
    """The adaptive ODE lands on the exact flow map; the fast samplers converge to it at their order
    (error ratio from 40 to 80 steps: ~2 for DDIM, ~4 for the second-order ones)."""
    sde = SDES[name]()
    data = Gaussian(MU, STD)
    x_T = sde.prior_sampling((200, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = sde.default_eps
    ref = data.flow_map(x_T, sde.T, eps, sde)
    x = sample(sde, data.score_fn(sde), sampler="ode", x_init=x_T, denoise=False, rtol=1e-6, atol=1e-6)
    assert (x - ref).abs().max() < 1e-3
    for sampler, band, tol in [("ddim", (1.7, 2.3), 0.2), ("heun", (3.0, 5.5), 0.05), ("dpm_solver", (3.0, 5.5), 0.05),
                               ("deis", (3.0, 5.5), 0.05), ("unipc", (5.0, 12.0), 0.05)]:
        err = [(sample(sde, data.score_fn(sde), sampler=sampler, steps=n, x_init=x_T, denoise=False) - ref).abs().max().item()
               for n in (40, 80)]
        print(f"{name} {sampler}: max |x - flow map| = {err[0]:.2e} (40 steps), {err[1]:.2e} (80 steps)")
        assert band[0] <= err[0] / err[1] <= band[1] and err[1] < tol, (sampler, err)


@pytest.mark.parametrize("name", list(SDES))
def test_likelihood_matches_the_mixture_density(name):
    sde, mix = SDES[name](), four_mode_mixture()
    x = mix.sample(100, generator=torch.Generator().manual_seed(0))
    logp, info = sde.log_likelihood(mix.score_fn(sde), x, divergence="exact", eps=1e-5, return_info=True)
    err = (logp - mix.log_prob(x, 1e-5, sde)).abs().mean().item()
    print(f"{name}: mean |log p - exact| = {err:.2e} nats, NFE {info['nfe']}")
    assert err < 0.01


def test_cubic_interpolation_keeps_the_adaptive_solver_cheap():
    """A piecewise-constant beta (linear interpolation of log alpha_bar) makes RK45 resolve 1000
    jumps; the C^2 spline does not."""
    mix = four_mode_mixture()
    x = mix.sample(20, generator=torch.Generator().manual_seed(0))
    nfe = {}
    for interp in ("cubic", "linear"):
        sde = ss.DiscreteVPSDE(interpolation=interp)
        _, info = sde.log_likelihood(mix.score_fn(sde), x, divergence="exact", eps=1e-5, return_info=True)
        nfe[interp] = info["nfe"]
    print(nfe)
    assert nfe["cubic"] * 2 < nfe["linear"]


@pytest.mark.parametrize("name", ["discrete_linear", "cosine"])
@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_classifier_free_and_classifier_guidance(name, sampler):
    sde, mix = SDES[name](), four_mode_mixture()
    y = torch.arange(400) % 4
    x = sde.sample(ss.classifier_free_score(ExactConditional(mix, sde), y, 2.0), (400, 2), sampler=sampler,
                   steps=100, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert class_rate(mix, x, y) >= 0.98
    x = sde.sample(ss.classifier_guided_score(mix.score_fn(sde), exact_classifier(mix, sde), y, 2.0), (400, 2),
                   sampler=sampler, steps=100, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert class_rate(mix, x, y) >= 0.98


# --- explicit time grids -------------------------------------------------------------------------
def test_times_reproduce_the_default_grids():
    sde = SDES["discrete_linear"]()
    data = Gaussian(MU, STD)
    x_T = sde.prior_sampling((50, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = torch.linspace(sde.T, 0.01, 11, dtype=torch.float64)
    for denoise in (True, False):     # fast samplers: every interval of `times`, then the data prediction
        a, ia = sample(sde, data.score_fn(sde), sampler="ddim", x_init=x_T, times=grid, denoise=denoise,
                       return_info=True)
        b, ib = sample(sde, data.score_fn(sde), sampler="ddim", x_init=x_T, steps=11 if denoise else 10, eps=0.01,
                       schedule="uniform", denoise=denoise, return_info=True)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert ia["nfe"] == ib["nfe"] == (11 if denoise else 10)
    for sampler in ("ancestral", "euler_maruyama", "reverse_diffusion", "pc"):     # the same grid as steps/eps
        a = sample(sde, data.score_fn(sde), sampler=sampler, x_init=x_T, times=grid.tolist(),
                   generator=torch.Generator().manual_seed(2))
        b = sample(sde, data.score_fn(sde), sampler=sampler, x_init=x_T, steps=10, eps=0.01,
                   generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_times_nonuniform_grid_and_data_time():
    sde = SDES["cosine"]()
    data = Gaussian(MU, STD)
    from scoresde.samplers.grids import time_grid
    grid = time_grid(sde, 300, sde.default_eps, "logsnr")
    x = sample(sde, data.score_fn(sde), (2000, 2), sampler="ancestral", times=grid, dtype=torch.float64,
               generator=torch.Generator().manual_seed(3))
    mean, var = target(sde, sde.default_eps)
    assert ((x.mean(0) - mean).abs() <= 3 * (var / 2000).sqrt() + 0.02).all()
    assert ((x.var(0) / var - 1).abs() <= 3 * math.sqrt(2 / 1999) + 0.03).all()
    # ending at t = 0 (the data): the last ancestral step lands on Tweedie's x0 at the previous time
    x_T = sde.prior_sampling((20, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    times = torch.cat([grid[:-1], torch.zeros(1, dtype=torch.float64)])
    a = sample(sde, data.score_fn(sde), sampler="ancestral", x_init=x_T, times=times,
               generator=torch.Generator().manual_seed(5))
    b = sample(sde, data.score_fn(sde), sampler="ancestral", x_init=x_T, times=grid[:-1], denoise=False,
               generator=torch.Generator().manual_seed(5))
    t = grid[-2].expand(20)
    alpha, sigma = sde.marginal_coefs(t)
    torch.testing.assert_close(a, (b + sigma[:, None] ** 2 * data.score(b, t, sde)) / alpha[:, None])
    # the ODE runs from the first time of the grid: x_init drawn from p_0.5 maps by the exact flow
    x5 = data.sample(100, generator=torch.Generator().manual_seed(6))
    x5 = sde.marginal_prob(x5, 0.5)[0] + sde.marginal_coefs(torch.tensor(0.5))[1].item() * torch.randn(
        x5.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x = sample(sde, data.score_fn(sde), sampler="ode", x_init=x5, times=[0.5, 0.01], denoise=False)
    assert (x - data.flow_map(x5, 0.5, 0.01, sde)).abs().max() < 1e-3


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(times=[1.0, 0.5], steps=3), ValueError, "times: an explicit grid replaces steps and eps"),
    (dict(times=[0.5, 0.5, 0.1]), ValueError, "times: expected strictly decreasing"),
    (dict(times=[1.5, 0.1]), ValueError, r"times: expected times in \[0, T"),
    (dict(times=[1.0]), ValueError, "times: expected at least 2"),
    (dict(times="1.0"), TypeError, "times: expected a 1-D sequence"),
    (dict(times=[1.0, 0.5, 0.0], sampler="ddim"), ValueError, r"times: the fast samplers need sigma\(t\) > 0"),
    (dict(times=[1.0, 0.5, 0.1], sampler="ddim", schedule="karras"), ValueError, "schedule: an explicit `times`"),
    (dict(times=[1.0, 0.9, 0.1], sampler="reverse_diffusion"), ValueError, "times: reverse_diffusion follows"),
    (dict(times=[1.0, 0.9, 0.1], sampler="pc", predictor="ancestral"), ValueError, "times: pc follows"),
])
def test_times_validation(kwargs, exc, match):
    sde = SDES["discrete_linear"]()
    data = Gaussian(MU, STD)
    kwargs = {"sampler": "ancestral", **kwargs}
    with pytest.raises(exc, match=match):
        sample(sde, data.score_fn(sde), (4, 2), dtype=torch.float64, **kwargs)
