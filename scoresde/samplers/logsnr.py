"""Fast deterministic samplers of the probability-flow ODE: DDIM, Heun and DPM-Solver++.

- `ddim`: DDIM (Song et al. 2021, arXiv:2010.02502), i.e. the first-order exponential integrator
  in data prediction (DPM-Solver++(1), Lu et al. 2022, arXiv:2211.01095).
- `heun`: Heun's 2nd-order method on the ODE dy/dsigma~ = (y - D(y; sigma~)) / sigma~ in the
  scale-free variables y = x / alpha, sigma~ = sigma / alpha (Karras et al. 2022,
  arXiv:2206.00364, Algorithm 1 with S_churn = 0), exact for VP, sub-VP and VE alike.
- `dpm_solver`: DPM-Solver++ multistep of order 2 or 3 in data prediction (Lu et al. 2022,
  arXiv:2211.01095, Algorithm 2 and its 3rd-order extension).

Every SDE here has the kernel x_t = alpha x_0 + sigma z, so the score gives the data prediction
D = (x + sigma^2 s) / alpha (Tweedie) and the noise prediction eps = -sigma s; lambda = log(alpha /
sigma) is the half log-SNR. The samplers rebuild their own time grid from the caller's `ts`
(first time, last time, number of steps) with `schedules.time_grid`, or, with `schedule="given"`
(what `sample(..., times=...)` passes), step through every interval of `ts` itself; all step
coefficients are Python floats computed once, so sampling makes no host synchronisation per step.

End of sampling and NFE (score evaluations), with `steps = len(ts) - 1`:

- denoise=False: `steps` intervals from T to eps, the sample is x(eps). NFE: ddim and dpm_solver
  `steps`; heun `2 steps - 1` (the last interval is an Euler step, as in Karras et al.).
- denoise=True: `steps - 1` intervals from T to eps, then one final step from eps to noise level
  0, which for every one of these integrators is the data prediction D(x_eps; eps): the sample
  is Tweedie's denoised x_0 at eps, as in score_sde's "noise removal" and in k-diffusion/diffusers'
  final step to sigma = 0, and it costs no extra evaluation. NFE as above.
- schedule="given": every interval of `ts`, then with denoise the data prediction at its last time
  (diffusers' DDIM with set_alpha_to_one); NFE = len(ts) with denoise, len(ts) - 1 without (heun:
  2 len(ts) - 1 and 2 len(ts) - 3).
"""
from __future__ import annotations

import torch

from scoresde._common.validation import check_positive
from scoresde.samplers.grids import check_schedule, time_grid


class LogSNRGrid:
    """The sampler's own grid (device tensor for score calls) and its coefficients as floats."""

    def __init__(self, sde, x: torch.Tensor, ts: torch.Tensor, denoise: bool, schedule: str, rho: float):
        if schedule != "given":
            check_schedule(schedule)
        check_positive("rho", rho)
        self.n = intervals(len(ts) - 1, denoise, schedule)       # ODE intervals before the final step
        if schedule == "given":                                   # the caller's grid, every interval of it
            t = ts.double().cpu()                                 # one host read, before sampling
        else:
            t_start, t_end = ts[[0, -1]].double().tolist()        # one host read, before sampling
            if self.n == 0:
                t = torch.tensor([t_start], dtype=torch.float64)
            else:
                t = time_grid(sde, self.n, t_end, schedule, rho=rho, dtype=torch.float64, t_start=t_start)
        alpha, sigma = sde.marginal_coefs(t)
        if not bool((sigma > 0).all()):
            raise ValueError(f"times: the fast samplers need sigma(t) > 0 at every time; found t = {float(t[-1])} "
                             "with sigma = 0 (end at the smallest positive time; denoise=True adds the data "
                             "prediction)")
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


def denoised(score_fn, x: torch.Tensor, g: LogSNRGrid, i: int) -> torch.Tensor:
    """D(x; t_i) = (x + sigma_i^2 s(x, t_i)) / alpha_i, Tweedie's data prediction (one NFE)."""
    s = score_fn(x, g.t[i].expand(x.shape[0]))
    return (x + g.sigma[i] ** 2 * s) / g.alpha[i]
