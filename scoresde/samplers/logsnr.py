"""The log-SNR grid shared by the probability-flow solvers (ddim, heun, dpm_solver, deis, unipc, bns):
alpha, sigma and lambda = log(alpha / sigma) at every grid time, the data prediction D(x, t) from a
score, and the order check of the multistep solvers.
"""
from __future__ import annotations

from typing import Any

import torch

from scoresde._common.validation import check_positive
from scoresde.samplers.grids import check_schedule, time_grid


class LogSNRGrid:
    """The sampler's own grid (device tensor for score calls) and its coefficients as floats."""

    def __init__(self, sde, x: torch.Tensor, ts: torch.Tensor, denoise: bool, schedule: str, rho: float,
                 from_alpha_zero: bool = False):
        if schedule != "given":
            check_schedule(schedule)
        check_positive("rho", rho)
        self.n = intervals(len(ts) - 1, denoise, schedule)       # ODE intervals before the final step
        if schedule == "given":                                   # the caller's grid, every interval of it
            t = ts.double().cpu()                                 # one host read, before sampling
        else:
            t_start, t_end = ts[[0, -1]].double().tolist()        # one host read, before sampling
            t_start = min(t_start, sde.T)     # T rounded to x's dtype may lie above it (the flow path's 0.999 in float32)
            if self.n == 0:
                t = torch.tensor([t_start], dtype=torch.float64)
            else:
                t = time_grid(sde, self.n, t_end, schedule, rho=rho, dtype=torch.float64, t_start=t_start)
        alpha, sigma = sde.marginal_coefs(t)
        if not bool((sigma > 0).all()):
            raise ValueError(f"times: the fast samplers need sigma(t) > 0 at every time; found t = {float(t[-1])} "
                             "with sigma = 0 (end at the smallest positive time; denoise=True adds the data "
                             "prediction)")
        if not from_alpha_zero and float(alpha[0]) == 0:          # t = 1 of the flow path: lambda = -inf
            raise ValueError(f"times: this sampler needs alpha(t) > 0 at every time; found t_0 = {float(t[0])} with "
                             f"alpha = 0; start below it (e.g. at T={sde.T}) or use sampler 'ddim', which steps from "
                             "there on the model's data prediction")
        self.t = t.to(device=x.device, dtype=x.dtype)             # (n + 1,)
        self.alpha, self.sigma = alpha.tolist(), sigma.tolist()
        self.lam = (alpha.log() - sigma.log()).tolist()           # half log-SNR lambda_i
        self.sig = (sigma / alpha).tolist()                       # sigma~_i = sigma_i / alpha_i = e^{-lambda_i}


def intervals(steps: int, denoise: bool, schedule: str) -> int:
    """ODE intervals of a fast sampler's grid for `steps`: every interval of a given grid; on its own grid,
    with `denoise`, one fewer (the last step, eps -> noise 0, is the data prediction)."""
    return steps if schedule == "given" or not denoise else steps - 1


def one_per_time(steps: int, denoise: bool = True, schedule: str = "logsnr", **options) -> int:
    """NFE of the one-evaluation-per-grid-time samplers (ddim, dpm_solver, deis, unipc, bns): one per
    interval, plus the final data prediction with `denoise`."""
    return intervals(steps, denoise, schedule) + bool(denoise)


def check_order(order) -> int:
    """A multistep order: 1, 2 or 3 (bools refused)."""
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise ValueError(f"order: expected 1, 2 or 3, found {order!r}")
    return order



def check_multistep(order: Any, corrector: Any, option: str, value: Any, allowed: tuple[str, ...]) -> None:
    """The arguments every multistep solver checks: `order` (1-3), the `corrector` flag and one string option."""
    check_order(order)
    if value not in allowed:
        raise ValueError(f"{option}: expected {' or '.join(map(repr, allowed))}, found {value!r}")
    if not isinstance(corrector, bool):
        raise TypeError(f"corrector: expected a bool, found {type(corrector).__name__}")

def denoised(score_fn, x: torch.Tensor, g: LogSNRGrid, i: int) -> torch.Tensor:
    """D(x; t_i) = (x + sigma_i^2 s(x, t_i)) / alpha_i, Tweedie's data prediction (one NFE). Where alpha_i = 0
    (t = 1 of the flow path: x = z, the score -x) the score cannot give it; the score function's own data
    prediction `x0(x, t)` (a `ScoreModel`'s denoiser, e.g. x - u of a velocity model) does."""
    if g.alpha[i] == 0:
        x0 = getattr(score_fn, "x0", None)
        if not callable(x0):
            raise ValueError(f"times: at t = {float(g.t[i])} alpha = 0 and the score says nothing of the data; "
                             "starting there needs a score function with a data prediction x0(x, t) (a ScoreModel), "
                             f"found {type(getattr(score_fn, 'score_fn', score_fn)).__name__}; start below t = 1")
        return x0(x, g.t[i].expand(x.shape[0]))
    s = score_fn(x, g.t[i].expand(x.shape[0]))
    return (x + g.sigma[i] ** 2 * s) / g.alpha[i]
