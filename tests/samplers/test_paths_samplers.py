"""Every sampler on the rectified-flow and EDM paths against exact scores (scoresde.sde.analytic).

Gaussian data N(MU, diag(STD^2)) has an exact perturbed score and an exact probability-flow map, so the
moments of the samples, the convergence orders of the ODE solvers and the endpoints are checked against
closed forms; the four-mode mixture checks inpainting and guidance. Each path's default grids
(`default_schedule`) are checked to be what the samplers lay out.
"""
import math

import pytest
import torch

import scoresde as ss
from scoresde.models.guidance import classifier_free_score
from scoresde.samplers.core import SAMPLERS, sample, sampler_info
from scoresde.samplers.grids import SCHEDULES, schedule_for, time_grid
from scoresde.samplers.paths import path_schedules
from scoresde.samplers.logsnr import LogSNRGrid, denoised
from problems import ExactConditional, Gaussian, K, class_rate, counting, four_mode_mixture

PATHS = {"flow": ss.FlowSDE, "edm": ss.EDMSDE}
MU = torch.tensor([0.5, -1.0], dtype=torch.float64)
STD = torch.tensor([0.3, 1.2], dtype=torch.float64)
FAST = ["ddim", "heun", "dpm_solver", "deis", "unipc", "bns"]


def target(sde, eps):
    """Exact mean and variance of p_eps for the Gaussian data."""
    alpha, sigma = sde.marginal_coefs(torch.tensor([eps], dtype=torch.float64))
    return alpha * MU, alpha.square() * STD.square() + sigma.square()


def recorded(score_fn):
    """`score_fn` that records the (first) time of each evaluation."""
    seen = []

    def fn(x, t):
        seen.append(float(t[0]))
        return score_fn(x, t)
    fn.seen = seen
    return fn


# --- default grids --------------------------------------------------------------------------------------
def test_shifted_grid_closed_form():
    """SD3's shift on a uniform grid: the unshifted times are uniform, the ends exact, shift 1 = uniform."""
    sde = ss.FlowSDE(shift=3.0)
    t = time_grid(sde, 10, 0.01, "shifted", dtype=torch.float64)
    u = t / (3.0 - 2.0 * t)                                    # the inverse of t' = 3 u / (1 + 2 u)
    torch.testing.assert_close(u[1:] - u[:-1], torch.full((10,), float(u[1] - u[0]), dtype=torch.float64))
    assert (float(t[0]), float(t[-1])) == (sde.T, 0.01)
    torch.testing.assert_close(sde.shifted(u), t)
    one = ss.FlowSDE()
    torch.testing.assert_close(time_grid(one, 7, 0.01, "shifted", dtype=torch.float64),
                               time_grid(one, 7, 0.01, "uniform", dtype=torch.float64))
    # without a shift attribute (VP) "shifted" is uniform in t
    torch.testing.assert_close(time_grid(ss.VPSDE(), 5, 0.01, "shifted", dtype=torch.float64),
                               time_grid(ss.VPSDE(), 5, 0.01, "uniform", dtype=torch.float64))


@pytest.mark.parametrize("sde, sampler, expected", [
    (ss.FlowSDE(), "ddim", "quadratic"), (ss.FlowSDE(), "unipc", "quadratic"), (ss.FlowSDE(), "heun", "logsnr"),
    (ss.FlowSDE(), "dpm_solver", "quadratic"), (ss.FlowSDE(shift=3.0), "ddim", "shifted"),
    (ss.FlowSDE(shift=3.0), "heun", "shifted"), (ss.EDMSDE(), "heun", "karras"), (ss.EDMSDE(), "deis", "karras"),
    (ss.EDMSDE(), "ddim", "logsnr"), (ss.VPSDE(), "ddim", "logsnr"), (ss.VPSDE(), "deis", "karras"),
    (ss.VESDE(), "unipc", "logsnr")])
def test_fast_samplers_lay_out_the_paths_default_grid(sde, sampler, expected):
    assert schedule_for(sde, sampler, sampler_info(sampler).schedule) == expected
    data = Gaussian(MU, STD)
    steps, eps = 6, sde.default_eps
    fn = recorded(data.score_fn(sde))
    kw = {"weights": None} if sampler == "bns" else {}
    sample(sde, fn, (3, 2), sampler=sampler, steps=steps, dtype=torch.float64, **kw)
    n = steps - 1                                                 # denoise: the last step is the data prediction
    grid = time_grid(sde, n, eps, expected, dtype=torch.float64).tolist()
    times = sorted(set(fn.seen), reverse=True)
    assert times == pytest.approx(grid, rel=1e-12), (times, grid)
    # an explicit schedule= still wins
    fn = recorded(data.score_fn(sde))
    sample(sde, fn, (3, 2), sampler=sampler, steps=steps, dtype=torch.float64, schedule="uniform")
    assert sorted(set(fn.seen), reverse=True) == pytest.approx(time_grid(sde, n, eps, "uniform").tolist(), rel=1e-6)


def test_step_samplers_on_edm_use_the_karras_grid_and_flow_keeps_uniform():
    data = Gaussian(MU, STD)
    for sde, sampler, sched in [(ss.EDMSDE(), "euler_maruyama", "karras"), (ss.EDMSDE(), "ancestral", "karras"),
                                (ss.FlowSDE(), "euler_maruyama", "uniform"), (ss.EDMSDE(), "pc", "uniform")]:
        fn = recorded(data.score_fn(sde))
        sample(sde, fn, (3, 2), sampler=sampler, steps=8, dtype=torch.float64, corrector="none") if sampler == "pc" \
            else sample(sde, fn, (3, 2), sampler=sampler, steps=8, dtype=torch.float64)
        assert fn.seen == pytest.approx(time_grid(sde, 8, sde.default_eps, sched).tolist()[:-1], rel=1e-6), sampler


def test_path_schedules_list_the_path_grids():
    assert path_schedules("ddim") == {"default": "logsnr", "flow": "quadratic"}
    assert path_schedules("heun") == {"default": "karras", "flow": "logsnr"}
    assert path_schedules("euler_maruyama") == {"edm": "karras"}
    assert path_schedules("pc") == {}
    assert "shifted" in SCHEDULES


def test_a_float32_grid_starts_at_t_max():
    """T = 0.999 is no float32: a float32 grid's first time reads back above T and is taken as T."""
    sde = ss.FlowSDE()
    x = sde.sample(Gaussian(MU, STD).score_fn(sde), (4, 2), sampler="dpm_solver", steps=5)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()


# --- every sampler on both paths: moments of Gaussian data ------------------------------------------------
# (sampler, options, steps). The step samplers run 500 steps, the fast ones 40, the ode its tolerance.
CASES = [("euler_maruyama", {}, 500), ("reverse_diffusion", {}, 500), ("ancestral", {}, 500),
         ("pc", {}, 500), ("pc", {"predictor": "ancestral", "corrector": "langevin"}, 500),
         ("pc", {"predictor": "euler_maruyama", "corrector": "annealed_langevin", "snr": 0.1}, 500),
         ("ode", {"rtol": 1e-5, "atol": 1e-5}, None), ("torchsde", {}, 500),
         ("ddim", {}, 400), ("heun", {}, 40), ("dpm_solver", {"order": 3}, 40), ("deis", {"order": 3}, 40),
         ("unipc", {}, 40), ("bns", {}, 40), ("edm", {"S_churn": 10.0}, 100)]
# Allowed relative variance bias beyond 3 standard errors, measured (n = 3000, variance SE 2.6%; run at n = 2000): first-order
# SDE steps on 500 steps <= 2%, the Langevin corrector's stationary bias (tests/samplers/test_samplers.py) 6%.
# On EDM the samplers that follow the SDE's own N-step discretisation (reverse_diffusion, pc) or a fixed dt
# (torchsde) step uniformly in sigma = t over [0.002, 80]: at 500 steps the last grid time is sigma ~ 0.16 and
# the variance is off by 22% (reverse_diffusion), -40% (pc, ancestral + langevin), -47% (pc, annealed), -45%
# (torchsde); at 2000 steps, which they get here, by <= 12.3%, 7%, 4%, 1%, 8% (measured, on the std-0.3 axis).
# The karras-grid samplers (euler_maruyama, ancestral, the fast ones) are within 2% at 500 / 40 steps (ddim,
# first order, 400).
BIAS = {"pc": 0.06}
EDM_UNIFORM = {"reverse_diffusion": 0.15, "pc": 0.09, "torchsde": 0.1}


@pytest.mark.parametrize("name", PATHS)
@pytest.mark.parametrize("sampler, options, steps", CASES, ids=lambda v: str(v) if not isinstance(v, dict) else
                         "-".join(f"{k}={w}" for k, w in v.items()))
def test_gaussian_moments_on_both_paths(name, sampler, options, steps):
    sde, n = PATHS[name](), 2000
    data = Gaussian(MU, STD)
    kw = dict(options)
    if sampler == "bns":
        kw["weights"] = None
    if name == "edm" and sampler in EDM_UNIFORM:
        steps = 2000
    x = sample(sde, data.score_fn(sde), (n, 2), sampler=sampler, steps=steps, dtype=torch.float64,
               generator=torch.Generator().manual_seed(3), **kw)
    assert torch.isfinite(x).all()
    mean, var = target(sde, sde.default_eps)
    bias = EDM_UNIFORM[sampler] if name == "edm" and sampler in EDM_UNIFORM else BIAS.get(sampler, 0.02)
    assert ((x.mean(0) - mean).abs() <= 3 * (var / n).sqrt() + 0.02 * var.sqrt()).all(), (x.mean(0), mean)
    rel = (x.var(0) / var - 1).abs()
    assert (rel <= 3 * math.sqrt(2 / (n - 1)) + bias).all(), (x.var(0), var)


def test_every_registered_sampler_is_covered():
    assert {s for s, _, _ in CASES} | {"annealed_langevin"} == set(SAMPLERS)


# --- convergence orders of the ODE solvers against the exact flow map ---------------------------------------
# (sampler, options, order of theory). Measured on both paths (log2 of the error ratio, 40 -> 80 steps):
# ddim 0.97, heun 2.07, dpm_solver 2 1.95, 3 4.0, deis 2 1.94 (flow) / 2.02, deis 3 3.8 / 2.6, unipc (bh2 +
# corrector) 2.9, bns (unipc's weights) 2.9. On the log-SNR grid the exponential integrators are the same map
# on every path (scale-free variables), so the two paths agree (test below).
ORDERS = [("ddim", {}, 1), ("heun", {}, 2), ("dpm_solver", {"order": 2}, 2), ("dpm_solver", {"order": 3}, 3),
          ("deis", {"order": 2}, 2), ("deis", {"order": 3}, 2.5), ("unipc", {}, 2.8), ("bns", {"weights": None}, 2.8)]


@pytest.mark.parametrize("name", PATHS)
@pytest.mark.parametrize("sampler, options, order", ORDERS, ids=[f"{s}{o.get('order', '')}" for s, o, _ in ORDERS])
def test_ode_solver_orders_against_the_flow_map(name, sampler, options, order):
    sde = PATHS[name]()
    data = Gaussian(MU, STD)
    x_T = sde.prior_sampling((32, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = data.flow_map(x_T, sde.T, sde.default_eps, sde)
    errs = []
    for steps in (40, 80):
        x = sample(sde, data.score_fn(sde), None, sampler=sampler, steps=steps, x_init=x_T, denoise=False,
                   schedule="logsnr", **options)
        errs.append((x - exact).abs().max().item())
    assert math.log2(errs[0] / errs[1]) >= order - 0.3, errs
    assert errs[1] < 0.15


def test_exponential_integrators_are_the_same_map_on_flow_and_edm():
    """With the same sigma~ = sigma / alpha end points, dpm_solver on the log-SNR grid gives y = x / alpha alike."""
    flow = ss.FlowSDE()
    lam_T, lam_e = flow.half_log_snr(torch.tensor([flow.T, 1e-3], dtype=torch.float64)).tolist()
    edm = ss.EDMSDE(sigma_min=math.exp(-lam_e), sigma_max=math.exp(-lam_T))
    mix = four_mode_mixture()
    y_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a_T = 1 - flow.T
    x_flow = sample(flow, mix.score_fn(flow), None, sampler="dpm_solver", steps=12, x_init=y_T * a_T, eps=1e-3,
                    schedule="logsnr", denoise=False)
    x_edm = sample(edm, mix.score_fn(edm), None, sampler="dpm_solver", steps=12, x_init=y_T, eps=edm.sigma_min,
                   schedule="logsnr", denoise=False)
    torch.testing.assert_close(x_flow / (1 - 1e-3), x_edm, rtol=1e-9, atol=1e-9)


# --- endpoints and conversions ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PATHS)
def test_conversions_at_the_endpoints(name):
    """score -> eps, x0 (Tweedie), flow velocity z - x0 at t = T and t = eps against Gaussian conditioning."""
    sde = PATHS[name]()
    data = Gaussian(MU, STD)
    x = 3 * torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for t in (sde.T, sde.default_eps):
        tt = torch.full((8,), t, dtype=torch.float64)
        a, s = (float(v) for v in sde.marginal_coefs(torch.tensor(t, dtype=torch.float64)))
        var = a * a * STD ** 2 + s * s
        x0_exact = MU + a * STD ** 2 * (x - a * MU) / var                     # E[x0 | x_t]
        z_exact = (x - a * x0_exact) / s                                      # E[z | x_t]
        grid = LogSNRGrid(sde, x, torch.tensor([t, 0.5 * t], dtype=torch.float64), False, "given", 7.0)
        score = data.score(x, tt, sde)
        D = denoised(data.score_fn(sde), x, grid, 0)
        eps_hat = -s * score
        assert torch.isfinite(D).all() and torch.isfinite(eps_hat).all()
        torch.testing.assert_close(D, x0_exact, rtol=1e-9, atol=1e-9 * max(1.0, s / a))
        torch.testing.assert_close(eps_hat, z_exact, rtol=1e-9, atol=1e-9)
        if name == "flow":
            u = eps_hat - D                                                   # the velocity z - x0
            drift, g = sde.sde(x, tt)
            pf = drift - 0.5 * g.square()[:, None] * score                    # probability-flow drift
            torch.testing.assert_close(pf, u, rtol=1e-8, atol=1e-8)
            torch.testing.assert_close(x - t * u, D, rtol=1e-8, atol=1e-8)            # x0 = x_t - t u
            torch.testing.assert_close(x + (1 - t) * u, eps_hat, rtol=1e-8, atol=1e-8)  # z = x_t + (1 - t) u


@pytest.mark.parametrize("name", PATHS)
@pytest.mark.parametrize("sampler", ["ddim", "heun", "dpm_solver", "deis", "unipc", "euler_maruyama", "ancestral"])
def test_one_step_from_t_max_to_eps_is_finite(name, sampler):
    """The coarsest run, one interval from T to eps (the singular ends of the flow path), stays finite."""
    sde = PATHS[name]()
    mix = four_mode_mixture()
    for denoise in (True, False):
        x = sample(sde, mix.score_fn(sde), (64, 2), sampler=sampler, steps=2, denoise=denoise,
                   generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(x).all()


# --- inpainting and guidance on both paths ------------------------------------------------------------------
@pytest.mark.parametrize("name", PATHS)
def test_inpainting_fills_the_conditional_modes(name):
    """Known x1 = +1 of the four-mode mixture: x2 is +1 with weight 0.4 / (0.3 + 0.4), -1 otherwise."""
    sde = PATHS[name]()
    mix = four_mode_mixture()
    n = 600
    x_known = torch.zeros(n, 2, dtype=torch.float64)
    x_known[:, 0] = 1.0
    mask = torch.tensor([1, 0])
    # impute steps on the uniform grid: EDM's (in sigma) needs more steps near the data
    x = ss.impute(sde, mix.score_fn(sde), x_known, mask, steps=1500 if name == "edm" else 300, corrector="none",
                  generator=torch.Generator().manual_seed(2))
    assert torch.equal(x[:, 0], x_known[:, 0]) and torch.isfinite(x).all()
    up = (x[:, 1] > 0).double().mean().item()
    assert abs(up - 4 / 7) < 4 * math.sqrt(4 / 7 * 3 / 7 / n), up
    near = (x[:, 1].abs() - 1).abs() < 0.5
    assert near.double().mean() > 0.97


@pytest.mark.parametrize("name", PATHS)
@pytest.mark.parametrize("sampler", ["dpm_solver", "euler_maruyama"])
def test_guidance_with_an_exact_conditional(name, sampler):
    sde = PATHS[name]()
    mix = four_mode_mixture()
    model = ExactConditional(mix, sde)
    y = torch.arange(400) % K
    steps = 20 if sampler == "dpm_solver" else 200
    x = sde.sample(classifier_free_score(model, y, 1.0), (400, 2), sampler=sampler, steps=steps, dtype=torch.float64,
                   generator=torch.Generator().manual_seed(1))
    assert class_rate(mix, x, y) >= 0.99
    # w = 1: each class's own component N(mean_y, 0.1^2 I): residual mean 0 and std 0.1 (SE 3.5%)
    r = x - mix.means[y]
    assert r.mean(0).abs().max() < 0.02 and (r.std(0) / 0.1 - 1).abs().max() < 0.12, r.std(0)
    x = sde.sample(classifier_free_score(model, y, 3.0), (400, 2), sampler=sampler, steps=steps, dtype=torch.float64,
                   generator=torch.Generator().manual_seed(1))
    assert class_rate(mix, x, y) >= 0.99 and torch.isfinite(x).all()


# --- fitted grids and bns on the flow path ---------------------------------------------------------------------
def test_optimize_steps_and_bns_on_the_flow_path():
    sde = ss.FlowSDE()
    mix = four_mode_mixture()
    score = counting(mix.score_fn(sde))
    x_cal = sde.prior_sampling((128, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grid, info = ss.optimize_steps(sde, score, 6, sampler="dpm_solver", calibration=x_cal, reference_steps=100,
                                   maxfev=40, return_info=True)
    assert info["default_schedule"] == "quadratic"
    assert info["error"] <= info["error_default"] and float(grid[0]) == pytest.approx(sde.T)
    grid_b, info_b = ss.optimize_steps(sde, score, 5, sampler="bns", calibration=x_cal, reference_steps=100,
                                       maxfev=30, iterations=40, return_info=True)
    x_T = sde.prior_sampling((256, 2), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    ref = sample(sde, mix.score_fn(sde), None, sampler="dpm_solver", order=3, steps=200, x_init=x_T, schedule="logsnr")
    x, out = sample(sde, mix.score_fn(sde), None, sampler="bns", times=grid_b, weights=info_b["weights"], x_init=x_T,
                    return_info=True)
    default = sample(sde, mix.score_fn(sde), None, sampler="unipc", steps=5, x_init=x_T)
    rmse = lambda a: (a - ref).square().sum(1).mean().sqrt().item()      # noqa: E731
    assert out["nfe"] == 5 and rmse(x) < 0.5 * rmse(default), (rmse(x), rmse(default))
