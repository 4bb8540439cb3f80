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

import math

import torch

from scoresde.samplers.core import SAMPLERS, progress_range
from scoresde.samplers.logsnr import LogSNRGrid, denoised, check_order, intervals, one_per_time


__all__ = ["ddim", "heun", "dpm_solver"]


@SAMPLERS.register("ddim", kind="fast ode", summary="deterministic DDIM, the first-order exponential integrator",
                   nfe=one_per_time, stochastic=False, takes_grid=True, schedule="logsnr", fitted="times")
def ddim(sde, score_fn, x, ts, *, generator=None, denoise=True, progress=False,
         schedule: str = "logsnr", rho: float = 7.0) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) on the probability-flow ODE; NFE = steps. A given grid may start where
    alpha = 0 (t = 1 of the flow path; its first step reads the model's data prediction `x0`), where DDIM on
    the flow path is Euler in t: x_s = (s / t) x_t + (1 - s / t) D."""
    g = LogSNRGrid(sde, x, ts, denoise, schedule, rho, from_alpha_zero=True)
    for i in progress_range(g.n + denoise, progress, "ddim"):    # the bar counts the final step too
        D = denoised(score_fn, x, g, i)
        if i == g.n:                                              # final step to noise 0: x = D
            return D
        # x_{i+1} = sigma_{i+1}/sigma_i x_i + (alpha_{i+1} - alpha_i sigma_{i+1}/sigma_i) D  (Song et al. 2021, eq. 12)
        r = g.sigma[i + 1] / g.sigma[i]
        x = r * x + (g.alpha[i + 1] - g.alpha[i] * r) * D
    return x


def _heun_nfe(steps: int, denoise: bool = True, schedule: str = "karras", **options) -> int:
    """2 per interval; with `denoise` plus the final data prediction, without it the last interval's Euler step
    makes one: 2 steps - 1 on its own grid, 2 steps + 1 / 2 steps - 1 on a given one."""
    return 2 * intervals(steps, denoise, schedule) + (1 if denoise else -1)


@SAMPLERS.register("heun", kind="fast ode", summary="Heun's 2nd-order method on the probability-flow ODE "
                   "(Karras et al. 2022)", nfe=_heun_nfe, stochastic=False, takes_grid=True, schedule="karras",
                   fitted="times")
def heun(sde, score_fn, x, ts, *, generator=None, denoise=True, progress=False,
         schedule: str = "karras", rho: float = 7.0) -> torch.Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 1); NFE = 2 steps - 1."""
    g = LogSNRGrid(sde, x, ts, denoise, schedule, rho)
    y = x / g.alpha[0]                                            # y = x / alpha, noise level sigma~
    for i in progress_range(g.n + denoise, progress, "heun"):     # the bar counts the final step too
        if i == g.n:                # final Euler step to sigma~ = 0 lands on D (Alg. 1 with sigma_N = 0)
            return denoised(score_fn, g.alpha[g.n] * y, g, g.n)
        dsig = g.sig[i + 1] - g.sig[i]
        d = (y - denoised(score_fn, g.alpha[i] * y, g, i)) / g.sig[i]      # dy/dsigma~ = (y - D) / sigma~
        y_next = y + dsig * d                                               # Euler step   (Alg. 1, l. 5)
        if denoise or i < g.n - 1:                                          # 2nd-order correction (l. 7-8)
            d2 = (y_next - denoised(score_fn, g.alpha[i + 1] * y_next, g, i + 1)) / g.sig[i + 1]
            y_next = y + dsig * 0.5 * (d + d2)
        y = y_next
    return g.alpha[g.n] * y


@SAMPLERS.register("dpm_solver", kind="fast ode", summary="DPM-Solver++ multistep, order 2 or 3 (Lu et al. 2022)",
                   nfe=one_per_time, stochastic=False, takes_grid=True, schedule="logsnr", fitted="times")
def dpm_solver(sde, score_fn, x, ts, *, generator=None, denoise=True, progress=False,
               schedule: str = "logsnr", rho: float = 7.0, order: int = 2,
               lower_order_final: bool = True) -> torch.Tensor:
    """DPM-Solver++ multistep in data prediction, order 2 or 3 (Lu et al. 2022); NFE = steps.

    The first steps use the orders that the history allows. With `lower_order_final` and fewer
    than 15 intervals, the last interval uses order <= 2 (order 3 only), which steadies very
    short runs (as DPM-Solver's reference code does).
    """
    check_order(order)
    g = LogSNRGrid(sde, x, ts, denoise, schedule, rho)
    hist: list[torch.Tensor] = []                                 # data predictions D_i, D_{i-1}, ...
    for i in progress_range(g.n + denoise, progress, "dpm_solver"):   # the bar counts the final step too
        hist = [denoised(score_fn, x, g, i)] + hist[: order - 1]
        if i == g.n:                                              # final step to noise 0: x = D
            return hist[0]
        q = len(hist)
        if lower_order_final and g.n < 15 and i == g.n - 1:
            q = min(q, 2)
        h = g.lam[i + 1] - g.lam[i]
        em = -math.expm1(-h)                                      # 1 - e^{-h}
        a = g.alpha[i + 1]
        # x_{i+1} = sigma_{i+1}/sigma_i x_i + alpha_{i+1} (1 - e^{-h}) D_i + ...   (Lu et al. 2022, eq. 9)
        x = (g.sigma[i + 1] / g.sigma[i]) * x + (a * em) * hist[0]
        if q >= 2:
            h0 = g.lam[i] - g.lam[i - 1]
            d1_0 = (hist[0] - hist[1]) * (h / h0)                 # ~ h D'
        if q == 2:
            # 2M: + alpha (1 - e^{-h}) / (2r) (D_i - D_{i-1}),  r = h_{i-1} / h   (Alg. 2)
            x = x + (a * em * 0.5) * d1_0
        elif q == 3:
            h1 = g.lam[i - 1] - g.lam[i - 2]
            r0, r1 = h0 / h, h1 / h
            d1_1 = (hist[1] - hist[2]) / r1
            D1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)         # ~ h D'
            D2 = (d1_0 - d1_1) / (r0 + r1)                       # ~ h^2 D'' / 2
            phi1 = h - em                                        # e^{-h} - 1 + h
            # 3M: + alpha phi1 D' + alpha (h^2/2 - phi1) D''  (Taylor of D in lambda, integrated exactly)
            x = x + (a * phi1 / h) * D1 + (a * 2 * (0.5 - phi1 / h ** 2)) * D2
    return x
