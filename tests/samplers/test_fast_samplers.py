"""Fast samplers (ddim, heun, dpm_solver, deis) against the exact probability-flow map of Gaussian data."""
import pytest
import torch

import scoresde as ss
from scoresde.samplers.core import SAMPLERS, uniform_grid
from scoresde.samplers.grids import time_grid
from problems import Gaussian, four_mode_mixture, mode_stats

SDES = {"vp": lambda: ss.VPSDE(0.1, 20.0), "subvp": lambda: ss.SubVPSDE(0.1, 20.0), "ve": lambda: ss.VESDE(0.01, 50.0)}
DATA = Gaussian(torch.tensor([0.5, -1.0]), torch.tensor([0.3, 0.8]))
NFE = {"ddim": lambda n: n, "heun": lambda n: 2 * n - 1, "dpm_solver": lambda n: n, "deis": lambda n: n}


def flow_error(sde, name, steps, **opts):
    """max |x(eps) - exact flow map| from a fixed prior draw, denoise=False, float64."""
    x = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = sde.default_eps
    ts = uniform_grid(sde, steps, eps, dtype=torch.float64)
    out = SAMPLERS[name](sde, DATA.score_fn(sde), x, ts, denoise=False, **opts)
    return (out - DATA.flow_map(x, sde.T, eps, sde)).abs().max().item()


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("name, opts, band", [
    ("ddim", {}, (1.6, 2.6)),
    ("heun", {}, (3.0, 5.5)),
    ("dpm_solver", {"order": 2}, (3.0, 5.5)),
    ("deis", {"order": 1, "schedule": "logsnr"}, (1.6, 2.6)),
    ("deis", {"order": 2, "schedule": "logsnr"}, (3.0, 5.5)),
    ("deis", {"order": 3, "schedule": "logsnr"}, (6.0, 22.0)),
    ("deis", {"order": 2, "schedule": "logsnr", "prediction": "x0"}, (3.0, 5.5)),
    ("deis", {"order": 1, "schedule": "logsnr", "corrector": True}, (3.0, 5.5)),
    ("deis", {"order": 2, "schedule": "logsnr", "corrector": True}, (6.0, 11.0)),
    ("deis", {"order": 2, "schedule": "karras"}, (3.0, 5.5)),
])
def test_convergence_order(sde_name, name, opts, band):
    sde = SDES[sde_name]()
    e = [flow_error(sde, name, n, **opts) for n in (20, 40, 80)]
    ratios = [e[0] / e[1], e[1] / e[2]]
    assert all(band[0] <= r <= band[1] for r in ratios), (e, ratios)


def test_third_order_beats_second():
    sde = SDES["vp"]()
    e3 = [flow_error(sde, "dpm_solver", n, order=3) for n in (20, 40)]
    assert e3[0] / e3[1] > 6.0 and e3[1] < flow_error(sde, "dpm_solver", 40, order=2) / 5


def test_deis_order1_is_ddim_and_x0_order1_too():
    """Order 1 in either prediction is DDIM: the exponential integrator of a constant is exact."""
    sde = SDES["vp"]()
    x = sde.prior_sampling((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = uniform_grid(sde, 9, 1e-3, dtype=torch.float64)
    ref = SAMPLERS["ddim"](sde, DATA.score_fn(sde), x, ts, schedule="karras")
    for pred in ("eps", "x0"):
        out = SAMPLERS["deis"](sde, DATA.score_fn(sde), x, ts, order=1, prediction=pred)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["ddim", "heun", "dpm_solver", "deis"])
@pytest.mark.parametrize("denoise", [True, False])
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_nfe_as_documented(name, denoise, steps):
    sde = SDES["vp"]()
    opts = {"order": 3, "corrector": True} if name == "deis" else {}
    _, info = sde.sample(DATA.score_fn(sde), (8, 2), sampler=name, steps=steps, denoise=denoise,
                         generator=torch.Generator().manual_seed(0), return_info=True, **opts)
    assert info["nfe"] == NFE[name](steps)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("schedule", ["logsnr", "karras", "uniform", "quadratic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grids_strictly_decreasing(sde_name, schedule, dtype):
    sde = SDES[sde_name]()
    for steps in (1, 5, 200):
        t = time_grid(sde, steps, sde.default_eps, schedule, dtype=dtype)
        assert t.shape == (steps + 1,) and t.dtype == dtype
        assert t[0].item() == sde.T and t[-1].item() == pytest.approx(sde.default_eps, rel=1e-6)
        assert (t[1:] < t[:-1]).all()
    lam = sde.half_log_snr(time_grid(sde, 10, 1e-3, "logsnr", dtype=torch.float64))
    if schedule == "logsnr":                                       # equal steps in log-SNR
        torch.testing.assert_close(lam.diff(), lam.diff()[:1].expand(10), rtol=1e-9, atol=1e-9)
    if schedule == "quadratic":                                    # equal steps in sqrt(t)
        r = time_grid(sde, 10, 1e-3, "quadratic", dtype=torch.float64).sqrt().diff()
        torch.testing.assert_close(r, r[:1].expand(10), rtol=1e-9, atol=1e-12)


def test_karras_grid_formula():
    sde, rho = SDES["vp"](), 7.0
    t = time_grid(sde, 4, 1e-3, "karras", rho=rho, dtype=torch.float64)
    a, s = sde.marginal_coefs(t)
    sig = s / a
    ramp = torch.linspace(0, 1, 5, dtype=torch.float64)
    ref = (sig[0] ** (1 / rho) + ramp * (sig[-1] ** (1 / rho) - sig[0] ** (1 / rho))) ** rho
    torch.testing.assert_close(sig, ref, rtol=1e-9, atol=0)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("name, opts", [("ddim", {}), ("heun", {}), ("dpm_solver", {"order": 2}),
                                        ("dpm_solver", {"order": 3}), ("deis", {"order": 2}),
                                        ("deis", {"order": 3, "schedule": "logsnr", "corrector": True})])
def test_samples_mixture_every_sde(sde_name, name, opts):
    sde, mix = SDES[sde_name](), four_mode_mixture(0.1)
    x = sde.sample(mix.score_fn(sde), (4000, 2), sampler=name, steps=40, generator=torch.Generator().manual_seed(1),
                   **opts)
    tv, std_err = mode_stats(mix, x)
    assert tv < 0.03 and std_err < (0.2 if name == "ddim" else 0.12), (tv, std_err)   # ddim is 1st order


@pytest.mark.parametrize("name", ["ddim", "heun", "dpm_solver", "deis"])
def test_deterministic_rank4_and_dtype(name):
    sde = SDES["vp"]()
    data = Gaussian(torch.zeros(1, 4, 4), torch.full((1, 4, 4), 0.5))
    kw = dict(sampler=name, steps=6, dtype=torch.float32)
    a = sde.sample(data.score_fn(sde), (3, 1, 4, 4), generator=torch.Generator().manual_seed(3), **kw)
    b = sde.sample(data.score_fn(sde), (3, 1, 4, 4), generator=torch.Generator().manual_seed(3), **kw)
    assert a.shape == (3, 1, 4, 4) and a.dtype == torch.float32 and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["ddim", "heun", "dpm_solver", "deis"])
def test_denoise_lands_on_data_prediction(name):
    """With denoise the sample is Tweedie's D at t = eps of the state reached there."""
    sde = SDES["vp"]()
    x = sde.sample(DATA.score_fn(sde), (256, 2), sampler=name, steps=60, generator=torch.Generator().manual_seed(0),
                   dtype=torch.float64, eps=1e-2)
    a, s = sde.marginal_coefs(torch.tensor(1e-2, dtype=torch.float64))
    shrink = DATA.stds[0] ** 2 / (DATA.stds[0] ** 2 + (s / a) ** 2).sqrt()  # std of D(x_eps)
    torch.testing.assert_close(x.std(0), shrink, rtol=0.15, atol=0)


@pytest.mark.parametrize("opts, match", [({"schedule": "cosine"}, "schedule"), ({"order": 4}, "order"),
                                         ({"order": True}, "order"), ({"rho": 0.0}, "rho"),
                                         ({"rho": -1.0}, "rho")])
def test_validation(opts, match):
    sde = SDES["vp"]()
    name = "dpm_solver" if "order" in opts else "heun"
    for other in ({"prediction": "v"}, {"order": 0}, {"corrector": 1}, {"schedule": "cos"}):
        with pytest.raises((ValueError, TypeError), match=next(iter(other))):
            sde.sample(DATA.score_fn(sde), (4, 2), sampler="deis", steps=5, **other)
    with pytest.raises((ValueError, TypeError), match=match):
        sde.sample(DATA.score_fn(sde), (4, 2), sampler=name, steps=5, **opts)
    with pytest.raises(TypeError):
        sde.sample(DATA.score_fn(sde), (4, 2), sampler="ddim", steps=5, bogus=1)
    with pytest.raises(ValueError, match="t_end"):
        time_grid(sde, 5, 1.5, "logsnr")
