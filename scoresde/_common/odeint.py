"""Adaptive Dormand-Prince RK5(4) in torch, so ODE solves stay on the data's device.

Dormand & Prince (1980), "A family of embedded Runge-Kutta formulae", J. Comp. Appl. Math. 6(1).
Step-size control and the initial step follow Hairer, Norsett & Wanner, "Solving Ordinary
Differential Equations I", Sec. II.4 (as scipy's `solve_ivp(method="RK45")` does), so tolerances
mean the same as there: the error of each step, in the RMS norm scaled by atol + rtol |y|, is <= 1.
The whole state is one tensor and one step size serves the whole batch (as score_sde solves the
batch as one system). One scalar per step crosses to the host to accept or reject the step; a
NaN/inf there (a non-finite state or derivative) stops the solve at once with `NonFiniteError`
instead of rejecting steps until `max_steps`.
"""
from __future__ import annotations

from typing import Callable

import math

import torch

from scoresde._common.finite import NonFiniteError


__all__ = ["odeint_rk45"]

# Butcher tableau of DOPRI5; _B is the 5th-order solution, _E = b5 - b4 the error estimate.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)
_SAFETY, _MIN_FACTOR, _MAX_FACTOR, _ORDER = 0.9, 0.2, 10.0, 4


def _rms(v: torch.Tensor) -> torch.Tensor:
    return v.square().mean().sqrt()


def odeint_rk45(f: Callable[[float, torch.Tensor], torch.Tensor], y0: torch.Tensor, t0: float, t1: float,
                *, rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 100_000) -> tuple[torch.Tensor, dict]:
    """Solve dy/dt = f(t, y) from t0 to t1 (either direction); returns (y(t1), stats).

    stats: {"nfe": function evaluations, "steps": accepted steps, "rejected": rejected steps}.
    """
    if not (rtol > 0 and atol >= 0):
        raise ValueError(f"rtol/atol: expected rtol > 0 and atol >= 0, found rtol={rtol}, atol={atol}")
    direction = 1.0 if t1 >= t0 else -1.0
    t, y = float(t0), y0
    k1 = f(t, y)
    nfe = 1
    # initial step (Hairer et al. II.4): h0 from the scales of y and f, refined by one Euler probe
    scale = atol + y.abs() * rtol
    d0, d1 = _rms(y / scale).item(), _rms(k1 / scale).item()
    if not (math.isfinite(d0) and math.isfinite(d1)):
        raise NonFiniteError(f"odeint_rk45: the {'initial state' if not math.isfinite(d0) else 'derivative'} "
                             f"at t = {t:.6g} holds NaN/inf")
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, abs(t1 - t0))
    k_probe = f(t + direction * h0, y + direction * h0 * k1)
    nfe += 1
    d2 = (_rms((k_probe - k1) / scale) / h0).item()
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / (_ORDER + 1))
    h = min(100 * h0, h1, abs(t1 - t0))

    steps = rejected = 0
    while direction * (t1 - t) > 0:
        if steps + rejected >= max_steps:
            raise RuntimeError(f"odeint_rk45: more than max_steps={max_steps} steps; the ODE may be stiff")
        h = min(h, abs(t1 - t))
        dt = direction * h
        ks = [k1]
        for i in range(1, 6):
            yi = y + dt * sum(a * k for a, k in zip(_A[i], ks))
            ks.append(f(t + _C[i] * dt, yi))
        y_new = y + dt * sum(b * k for b, k in zip(_B, ks))
        k7 = f(t + dt, y_new)                         # first stage of the next step (FSAL)
        nfe += 6
        ks.append(k7)
        err = dt * sum(e * k for e, k in zip(_E, ks))
        err_norm = _rms(err / (atol + torch.maximum(y.abs(), y_new.abs()) * rtol)).item()
        if not math.isfinite(err_norm):          # NaN/inf in a stage: no step size can repair it
            raise NonFiniteError(f"odeint_rk45: NaN/inf in the step from t = {t:.6g} (h = {dt:.3g}); "
                                 "the state or its derivative is not finite")
        if err_norm <= 1.0:
            t, y, k1 = t + dt, y_new, k7
            steps += 1
            factor = _MAX_FACTOR if err_norm == 0 else min(_MAX_FACTOR, _SAFETY * err_norm ** (-1 / (_ORDER + 1)))
            h *= factor
        else:
            rejected += 1
            h *= max(_MIN_FACTOR, _SAFETY * err_norm ** (-1 / (_ORDER + 1)))
    return y, {"nfe": nfe, "steps": steps, "rejected": rejected}
