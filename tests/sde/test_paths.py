"""The rectified-flow and EDM paths against their closed forms: x_t = (1 - t) x0 + t z and x_t = x0 + t z."""
import math

import pytest
import torch

import scoresde as ss

PATHS = {"flow": lambda: ss.FlowSDE(), "edm": lambda: ss.EDMSDE()}


def times(name, n=64):
    sde = PATHS[name]()
    return torch.linspace(sde.default_eps, sde.T, n, dtype=torch.float64)


def test_flow_closed_form():
    sde = ss.get_sde("flow")
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    t = torch.tensor([1e-3, 0.1, 0.5, 0.9, 0.999], dtype=torch.float64)
    drift, g = sde.sde(x, t)
    torch.testing.assert_close(drift, -x / (1 - t)[:, None, None], rtol=1e-14, atol=0)
    torch.testing.assert_close(g, (2 * t / (1 - t)).sqrt(), rtol=1e-14, atol=0)
    mean, std = sde.marginal_prob(x, t)
    torch.testing.assert_close(mean, (1 - t)[:, None, None] * x, rtol=1e-14, atol=0)
    torch.testing.assert_close(std, t, rtol=0, atol=0)
    assert sde.T == pytest.approx(0.999) and sde.prior_std == sde.T      # N(0, I) read at T: std sigma(T) = T
    # lambda = log((1 - t) / t); EDM's sigma = t / (1 - t) = e^{-lambda}
    torch.testing.assert_close(sde.half_log_snr(t).neg().exp(), t / (1 - t), rtol=1e-12, atol=0)


def test_edm_closed_form():
    sde = ss.get_sde("edm")
    assert (sde.T, sde.default_eps, sde.prior_std) == (80.0, 0.002, 80.0)
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([0.002, 0.5, 7.0, 80.0], dtype=torch.float64)
    drift, g = sde.sde(x, t)
    assert torch.equal(drift, torch.zeros_like(x))
    torch.testing.assert_close(g, (2 * t).sqrt(), rtol=1e-15, atol=0)
    mean, std = sde.marginal_prob(x, t)
    assert torch.equal(mean, x) and torch.equal(std, t)
    assert sde.default_conditioning == "edm"


@pytest.mark.parametrize("name", ["flow", "edm"])
def test_marginals_solve_the_linear_sde(name):
    """d alpha / dt = f alpha and d sigma^2 / dt = 2 f sigma^2 + g^2 (the kernel of a linear SDE), by autograd."""
    sde = PATHS[name]()
    t = times(name).requires_grad_(True)
    alpha, sigma = sde.marginal_coefs(t)
    da = torch.autograd.grad(alpha.sum(), t)[0] if alpha.requires_grad else torch.zeros_like(t)   # EDM: alpha = 1
    ds2, = torch.autograd.grad(sigma.square().sum(), t)
    t = t.detach()
    ones = torch.ones(t.shape[0], 1, dtype=torch.float64)
    drift, g = sde.sde(ones, t)
    f = drift[:, 0]
    torch.testing.assert_close(da, f * alpha.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ds2, 2 * f * sigma.detach().square() + g.square(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["flow", "edm"])
def test_half_log_snr_inverse_and_monotone(name):
    sde = PATHS[name]()
    t = times(name, 201)
    lam = sde.half_log_snr(t)
    assert (lam[1:] < lam[:-1]).all()
    torch.testing.assert_close(sde.t_from_half_log_snr(lam), t, rtol=1e-12, atol=1e-14)


def test_flow_probability_flow_drift_is_the_velocity():
    """With the exact score of x0 ~ N(m, s^2), f x - 1/2 g^2 score = E[z - x0 | x_t] (the velocity)."""
    sde = ss.FlowSDE()
    m, s = 0.7, 0.4
    x = torch.randn(6, 1, dtype=torch.float64)
    t = torch.linspace(0.05, 0.95, 6, dtype=torch.float64)
    a, sig = sde.marginal_coefs(t)
    var = (a * s) ** 2 + sig ** 2
    score = -(x[:, 0] - a * m) / var
    x0_hat = m + a * s ** 2 * (x[:, 0] - a * m) / var        # E[x0 | x_t], Gaussian conditioning
    z_hat = (x[:, 0] - a * x0_hat) / sig
    drift, g = ss.FlowSDE().reverse(lambda x_, t_: score[:, None], probability_flow=True).sde(x, t)
    torch.testing.assert_close(drift[:, 0], z_hat - x0_hat, rtol=1e-12, atol=1e-12)   # dx/dt of the ODE
    assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("name", ["flow", "edm"])
def test_forward_simulation_matches_the_marginal(name):
    sde = PATHS[name]()
    n, steps = 20000, 400
    t_end = 0.6 if name == "flow" else 3.0
    gen = torch.Generator().manual_seed(2)
    x0 = 1.25
    x = torch.full((n, 1), x0, dtype=torch.float64)
    t0 = 0.0 if name == "flow" else 0.0
    dt = (t_end - t0) / steps
    for i in range(steps):
        t = torch.full((n,), t0 + (i + 0.5) * dt, dtype=torch.float64)        # midpoint for the time-dependent g
        drift, g = sde.sde(x, t)
        x = x + drift * dt + g[:, None] * math.sqrt(dt) * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    mean, std = sde.marginal_prob(torch.full((1, 1), x0, dtype=torch.float64), t_end)
    assert abs(x.mean().item() - mean.item()) < 4 * std.item() / math.sqrt(n) + 5e-3
    assert abs(x.std().item() / std.item() - 1) < 0.02


@pytest.mark.parametrize("name", ["flow", "edm"])
def test_registry_config_round_trip(name):
    sde = PATHS[name]()
    again = ss.get_sde(name, **sde.config())
    assert type(again) is type(sde) and again.config() == sde.config() and again.T == sde.T
    assert sde.with_steps(10).N == 10 and sde.with_steps(10).T == sde.T
    assert name in repr(type(sde)).lower()


def test_flow_shift():
    sde = ss.FlowSDE(shift=3.0)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    st = sde.shifted(t)
    torch.testing.assert_close(st, 3 * t / (1 + 2 * t))
    assert st[0] == 0 and st[-1] == 1 and (st[1:-1] > t[1:-1]).all()
    assert torch.equal(ss.FlowSDE().shifted(t), t)


@pytest.mark.parametrize("call, match", [
    (lambda: ss.FlowSDE(t_max=1.0), "t_max: expected a last time in \\(0, 1\\)"),
    (lambda: ss.FlowSDE(t_max=0.0), "t_max"),
    (lambda: ss.FlowSDE(shift=0.0), "shift"),
    (lambda: ss.EDMSDE(sigma_min=1.0, sigma_max=0.5), "sigma_max: expected > sigma_min"),
    (lambda: ss.EDMSDE(sigma_min=-1.0), "sigma_min"),
])
def test_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call()
