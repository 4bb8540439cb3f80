"""The torch Dormand-Prince solver against closed-form ODE solutions and scipy."""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from scoresde._common.odeint import odeint_rk45


@pytest.mark.parametrize("t0, t1", [(0.0, 2.0), (2.0, 0.1)])
def test_linear_ode_exact(t0, t1):
    # dy/dt = A y with A = [[0, 1], [-1, -0.1]] per sample: y(t) = expm(A (t - t0)) y0
    A = torch.tensor([[0.0, 1.0], [-1.0, -0.1]], dtype=torch.float64)
    y0 = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y1, stats = odeint_rk45(lambda t, y: y @ A.T, y0, t0, t1, rtol=1e-8, atol=1e-8)
    ref = y0 @ torch.linalg.matrix_exp(A * (t1 - t0)).T
    torch.testing.assert_close(y1, ref, rtol=1e-6, atol=1e-6)
    assert stats["nfe"] == 2 + 6 * (stats["steps"] + stats["rejected"])


def test_tolerance_controls_error_and_matches_scipy_cost():
    f = lambda t, y: -y * math.cos(t) * 2 + torch.sin(y)
    y0 = torch.linspace(-1, 1, 6, dtype=torch.float64)
    for tol in (1e-4, 1e-7):
        y1, stats = odeint_rk45(f, y0, 0.0, 3.0, rtol=tol, atol=tol)
        ref = solve_ivp(lambda t, y: -y * np.cos(t) * 2 + np.sin(y), (0, 3), y0.numpy(), rtol=1e-12, atol=1e-12)
        err = np.abs(y1.numpy() - ref.y[:, -1]).max()
        assert err < 100 * tol
        sc = solve_ivp(lambda t, y: -y * np.cos(t) * 2 + np.sin(y), (0, 3), y0.numpy(), rtol=tol, atol=tol)
        assert 0.5 * sc.nfev <= stats["nfe"] <= 2 * sc.nfev, (stats, sc.nfev)


def test_bad_tolerance():
    with pytest.raises(ValueError, match="rtol/atol"):
        odeint_rk45(lambda t, y: y, torch.ones(2), 0.0, 1.0, rtol=0.0)
