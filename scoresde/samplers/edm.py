"""EDM's stochastic sampler (Karras et al. 2022, arXiv:2206.00364, Algorithm 2), for every SDE.

Written like `heun` (`samplers/exponential.py`) in the scale-free variables y = x / alpha and
sigma~ = sigma / alpha = e^{-lambda}, where every SDE with the kernel x_t = alpha x_0 + sigma z is EDM's
VE process dy = sqrt(d sigma~^2 / dt) dw. Each step i first "churns": it raises the noise level of the
current sample from sigma~_i to sigma~_hat = (1 + gamma_i) sigma~_i by adding fresh noise,

    y_hat = y_i + sqrt(sigma~_hat^2 - sigma~_i^2) S_noise z,                     (Alg. 2, l. 4-6)
    gamma_i = min(S_churn / N, sqrt(2) - 1) if S_tmin <= sigma~_i <= S_tmax else 0,

then takes a Heun step of the probability-flow ODE dy/dsigma~ = (y - D(y; sigma~)) / sigma~ from
sigma~_hat to sigma~_{i+1} (l. 7-11). N is the number of churned steps (`steps` on the sampler's own
grid). S_tmin and S_tmax are noise levels sigma~ (EDM's sigma), not times.

The noise level sigma~_hat is mapped back to a time with `sde.t_from_half_log_snr(-log sigma~_hat)`:
the score is evaluated at t_hat, where sigma~(t_hat) = sigma~_hat. A churned level above the SDE's largest
noise level sigma~(T) has no time; it is clamped to sigma~(T) (so the first step from t = T, whose level is
already sigma~(T), is never churned). With S_churn = 0 nothing is churned, no noise is drawn, and the
sampler is exactly `heun` (the same grid, the same operations).

Defaults: the Karras rho = 7 grid; S_churn = 40, S_tmin = 0.05, S_tmax = 50 as EDM's stochastic ImageNet-64
runs (its README), with S_noise = 1 (they used 1.003, which offsets the denoiser's errors and biases an
exact score). EDM tunes these per dataset and number of steps (their Table 5).

End and NFE (score evaluations) as `heun`: with `denoise`, `steps - 1` churned Heun steps and a final
churned step to sigma~ = 0, which is the data prediction D(y_hat; sigma~_hat) (EDM's Euler step to 0):
2 steps - 1 on its own grid; without `denoise`, `steps` intervals of which the last is a churned Euler
step: 2 steps - 1. On a given grid (`schedule="given"`, `sample(..., times=...)`): every interval, plus
with `denoise` the final step: 2 len(ts) - 1, and 2 len(ts) - 3 without.
"""
from __future__ import annotations

import math

import torch

from scoresde.samplers.core import SAMPLERS, progress_range, randn_like
from scoresde.samplers.logsnr import LogSNRGrid, intervals


__all__ = ["edm", "churn_levels"]


def _check_number(name: str, value, *, minimum: float = 0.0, infinite: bool = False) -> float:
    """A real number >= minimum (inf allowed with `infinite`), bools refused; ValueError/TypeError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, found {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not infinite) or value < minimum:
        bound = f">= {minimum:g}" + (" (inf allowed)" if infinite else ", finite")
        raise ValueError(f"{name}: expected a number {bound}, found {value!r}")
    return value


def churn_levels(sig: list[float], churned: int, sig_max: float, S_churn: float, S_tmin: float,
                 S_tmax: float) -> list[float]:
    """sigma~_hat_i = (1 + gamma_i) sigma~_i for the first `churned` levels of `sig`, clamped to `sig_max`;
    gamma_i = min(S_churn / churned, sqrt(2) - 1) for sigma~_i in [S_tmin, S_tmax], else 0  (Alg. 2, l. 5)."""
    gamma = min(S_churn / churned, math.sqrt(2) - 1) if churned > 0 else 0.0
    out = []
    for s in sig[:churned]:
        g = gamma if S_tmin <= s <= S_tmax else 0.0
        out.append(min(s * (1 + g), max(sig_max, s)) if g > 0 else s)
    return out


def _edm_nfe(steps: int, denoise: bool = True, schedule: str = "karras", **options) -> int:
    """As heun: 2 per interval; with `denoise` plus the final data prediction, without it the last interval's
    Euler step saves one: 2 steps - 1 on its own grid, 2 steps + 1 / 2 steps - 1 on a given one."""
    return 2 * intervals(steps, denoise, schedule) + (1 if denoise else -1)


@SAMPLERS.register("edm", kind="sde", summary="EDM's stochastic sampler: churned Heun steps (Karras et al. 2022, "
                   "Alg. 2)", nfe=_edm_nfe, stochastic=True, takes_grid=True, schedule="karras")
def edm(sde, score_fn, x, ts, *, generator=None, denoise=True, progress=False, schedule: str = "karras",
        rho: float = 7.0, S_churn: float = 40.0, S_tmin: float = 0.05, S_tmax: float = 50.0,
        S_noise: float = 1.0) -> torch.Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Alg. 2) on the Karras grid; NFE = 2 steps - 1.

    S_churn >= 0: the churn (gamma = min(S_churn / N, sqrt(2) - 1)); S_tmin <= S_tmax: the noise levels
    sigma~ = sigma / alpha that are churned; S_noise >= 0: the scale of the added noise. S_churn = 0 is `heun`.
    """
    S_churn = _check_number("S_churn", S_churn)
    S_tmin = _check_number("S_tmin", S_tmin)
    S_tmax = _check_number("S_tmax", S_tmax, infinite=True)
    S_noise = _check_number("S_noise", S_noise)
    if S_tmin > S_tmax:
        raise ValueError(f"S_tmin: expected <= S_tmax={S_tmax!r}, found {S_tmin!r}")
    g = LogSNRGrid(sde, x, ts, denoise, schedule, rho)
    churned = g.n + denoise                                       # N: every step churns, the final one too
    alpha_T, sigma_T = sde.marginal_coefs(torch.tensor([float(sde.T)], dtype=torch.float64))
    sig_max = float(sigma_T / alpha_T)                            # the SDE's largest noise level sigma~(T)
    hat = churn_levels(g.sig, churned, sig_max, S_churn, S_tmin, S_tmax)
    # the churned levels' times, alpha and sigma: computed once on the host (no per-step synchronisation)
    t_hat = torch.tensor([float(t) for t in g.t[:churned].double().cpu()], dtype=torch.float64)
    up = [i for i in range(churned) if hat[i] != g.sig[i]]
    if up:
        lam = -torch.log(torch.tensor([hat[i] for i in up], dtype=torch.float64))
        t_hat[up] = sde.t_from_half_log_snr(lam).clamp(0.0, float(sde.T))
    a_hat, s_hat = (v.tolist() for v in sde.marginal_coefs(t_hat))
    t_hat = t_hat.to(device=x.device, dtype=x.dtype)
    noise = [math.sqrt(max(hat[i] ** 2 - g.sig[i] ** 2, 0.0)) * S_noise for i in range(churned)]

    def D(y, i, churn):                 # D(y; sigma~) = (x + sigma^2 s(x, t)) / alpha at x = alpha y (one NFE)
        if churn:
            a, s, t = a_hat[i], s_hat[i], t_hat[i]
        else:
            a, s, t = g.alpha[i], g.sigma[i], g.t[i]
        xs = a * y
        return (xs + s ** 2 * score_fn(xs, t.expand(y.shape[0]))) / a

    y = x / g.alpha[0]                                            # y = x / alpha, noise level sigma~
    for i in progress_range(churned, progress, "edm"):            # the bar counts the final step too
        churn = hat[i] != g.sig[i]
        sig = hat[i]
        if churn:               # y_hat = y + sqrt(sigma~_hat^2 - sigma~^2) S_noise z   (Alg. 2, l. 5-6)
            y = y + noise[i] * randn_like(y, generator)
        if i == g.n:            # final Euler step to sigma~ = 0 lands on D(y_hat; sigma~_hat)
            return D(y, i, churn)
        dsig = g.sig[i + 1] - sig
        d = (y - D(y, i, churn)) / sig                                      # dy/dsigma~ = (y - D) / sigma~
        y_next = y + dsig * d                                               # Euler step   (Alg. 2, l. 8)
        if denoise or i < g.n - 1:                                          # 2nd-order correction (l. 9-11)
            d2 = (y_next - D(y_next, i + 1, False)) / g.sig[i + 1]
            y_next = y + dsig * 0.5 * (d + d2)
        y = y_next
    return g.alpha[g.n] * y
