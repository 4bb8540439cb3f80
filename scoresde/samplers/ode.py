"""Probability-flow ODE sampler with an adaptive Runge-Kutta solver.

Song et al. (2021), "Score-Based Generative Modeling through Stochastic Differential Equations",
arXiv:2011.13456, Sec. 4.3: the ODE dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t) (eq. 13) has the same
marginals p_t as the SDE; it is solved from T (the grid's first time) down to eps. The default solver is the torch
Dormand-Prince RK45 of `scoresde.odeint` (on the data's device, as score_sde's use of
scipy's RK45, with the same tolerance semantics); the other scipy `solve_ivp` methods are
available too, at the cost of one host round trip per function evaluation.
"""
from __future__ import annotations

import numpy as np
import torch

from scoresde._common.finite import NonFiniteError
from scoresde._common.odeint import odeint_rk45
from scoresde._common.tensors import append_dims
from scoresde._common.validation import check_choice, check_positive
from scoresde.samplers.core import SAMPLERS, check_options, flush_checks


__all__ = ["ode", "ODE_METHODS", "TimeBar"]

# "RK45": torch, on the data's device; the others: scipy.integrate.solve_ivp on the host (float64)
ODE_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


class TimeBar:
    """A tqdm bar over the integration interval, advanced from the solver's time points:
    "ode:  40%|████      | [00:03, t=0.6012]" (tqdm puts ", " before a postfix, so it goes after the time)."""

    def __init__(self, t0: float, t1: float, enabled: bool, desc: str = "ode"):
        self.t0, self.done, self.bar = t0, 0.0, None
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=abs(t1 - t0), desc=desc, leave=False, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| [{elapsed}{postfix}]", postfix=f"t={t0:.4f}")

    def update(self, t: float) -> None:
        if self.bar is not None and abs(t - self.t0) > self.done:
            self.bar.update(abs(t - self.t0) - self.done)
            self.done = abs(t - self.t0)
            self.bar.set_postfix_str(f"t={t:.4f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _solve_scipy(f, x: torch.Tensor, t0: float, t1: float, method: str, rtol: float, atol: float) -> torch.Tensor:
    from scipy.integrate import solve_ivp

    def fun(t, y):   # host round trip: numpy float64 -> x's device/dtype -> numpy
        y = torch.from_numpy(y).to(device=x.device, dtype=x.dtype).reshape(x.shape)
        return f(t, y).reshape(-1).double().cpu().numpy()

    y0 = x.detach().reshape(-1).double().cpu().numpy()
    sol = solve_ivp(fun, (t0, t1), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"ode: scipy solve_ivp(method={method!r}) failed: {sol.message}")
    return torch.from_numpy(np.ascontiguousarray(sol.y[:, -1])).to(device=x.device, dtype=x.dtype).reshape(x.shape)


def _adaptive(steps: int, denoise: bool = True, **options) -> None:
    """The solver chooses its steps: NFE is known after the run only (`sample(..., return_info=True)`)."""
    return None


_OPTIONS = {"rtol": 1e-5, "atol": 1e-5, "method": "RK45"}


@SAMPLERS.register("ode", kind="ode", summary="probability-flow ODE, adaptive RK45 (or a scipy solve_ivp method)",
                   nfe=_adaptive, stochastic=False, takes_grid=False, options=_OPTIONS)
def ode(sde, score_fn, x, ts, *, generator=None, denoise=True, progress=False, **options):
    """Probability-flow ODE from T to eps, adaptive RK45 (Song et al. 2021, Sec. 4.3).

    Options: rtol=1e-5, atol=1e-5, method="RK45" (torch, on the data's device) or a scipy
    `solve_ivp` method ("RK23", "DOP853", "Radau", "BDF", "LSODA"; host round trips).
    Deterministic given x (`generator` only draws the prior); `steps` does not apply: the ODE runs
    from the grid's first time (T) to its last (eps).
    NFE is adaptive (see `sample(..., return_info=True)`); `denoise` adds one Tweedie step at eps
    (+1 NFE).
    """
    opts = check_options("ode", options, _OPTIONS)
    rtol = check_positive("rtol", opts["rtol"])
    atol = check_positive("atol", opts["atol"], allow_zero=True)
    method = check_choice("method", opts["method"], ODE_METHODS)
    t0, t1 = ts[[0, -1]].double().tolist()           # one host read of the ends, before solving
    flow = sde.reverse(score_fn, probability_flow=True)
    bar = TimeBar(t0, t1, progress)

    def f(t: float, y: torch.Tensor) -> torch.Tensor:
        bar.update(t)
        # dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t)   (Song et al. 2021, eq. 13)
        return flow.sde(y, float(t))[0]

    try:
        if method == "RK45":
            x, _ = odeint_rk45(f, x, t0, t1, rtol=rtol, atol=atol)
        else:
            x = _solve_scipy(f, x, t0, t1, method, rtol, atol)
    except NonFiniteError:
        flush_checks(score_fn)        # the score's own report (where it became NaN) when it has one
        raise
    finally:
        bar.close()
    if denoise:
        x = tweedie_denoise(sde, score_fn, x, t1)
    return x


def tweedie_denoise(sde, score_fn, x: torch.Tensor, t: float) -> torch.Tensor:
    """E[x_0 | x_t] = (x_t + sigma_t^2 s(x_t, t)) / alpha_t: one noise-free step (Tweedie's formula)."""
    tb = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
    alpha, sigma = sde.marginal_coefs(tb)
    # x_0 = (x_t + sigma_t^2 s) / alpha_t   (Efron 2011; Song et al. 2021, App. D.4 "denoising")
    score = score_fn(x, tb)
    return (x + append_dims(sigma.square(), x.ndim) * score) / append_dims(alpha, x.ndim)
