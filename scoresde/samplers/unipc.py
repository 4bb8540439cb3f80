"""UniPC: a unified predictor-corrector for the probability-flow ODE, built for very few steps.

`unipc` is UniPC in data prediction (Zhao et al. 2023, arXiv:2302.04867, Algorithms 1-3 with
`predict_x0`): the multistep predictor UniP-p and the corrector UniC-p, which reuses the score
evaluation at the predicted point (the one the next step needs anyway) to raise the order by one
at no extra NFE. With the half log-SNR lambda = log(alpha / sigma), h = lambda_{i+1} - lambda_i,
the data predictions D_k and r_m = (lambda_{i-m} - lambda_i) / h:

    x~_{i+1} = sigma_{i+1}/sigma_i x_i + alpha_{i+1} (1 - e^{-h}) D_i
               - alpha_{i+1} B(h) sum_{m=1}^{p-1} a_m (D_{i-m} - D_i) / r_m                 (UniP-p)
    x_{i+1}  = (the same with a^c_m over m = 1..p-1 and a^c_p (D(x~_{i+1}) - D_i), r_p = 1)  (UniC-p)

The weights solve R a = phi with R_{km} = r_m^{k-1} and phi_k = k! h phi_{k+1}(-h) / B(h)
(the paper's Theorem 3.1; phi_k the exponential-integrator phi functions); p = 2 takes a_1 = 1/2 as
the paper does. B(h) is the free "variant": `variant="bh1"` B(h) = -h (UniPC's B1(h) = h in the
paper's sign) and `variant="bh2"` B(h) = e^{-h} - 1 (B2(h) = e^h - 1), the one the paper finds
best at 5-10 NFE. Which grid and variant suit 4-6 NFE is measured in benchmarks/fast_samplers.py.

Grid, `denoise` and NFE are those of `fast.py`: NFE = steps; with `denoise` the last evaluation is
the final data prediction D(x_eps; eps), which the corrector does not use (as in UniPC, whose last
step is not corrected). All weights are float64 host numbers computed once before sampling.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from scoresde.samplers.core import SAMPLERS, progress_range
from scoresde.samplers.logsnr import LogSNRGrid, denoised, check_multistep, one_per_time


__all__ = ["unipc"]


def _weights(lam: list[float], i: int, q: int, variant: str, corrector: bool) -> tuple[float, float, list[float]]:
    """(c_x, c_D, [w_m]) of step i at order q: x_{i+1} = c_x x_i + c_D D_i + sum_m w_m D_m', where the
    D_m' are D_{i-1}, ..., D_{i-q+1} (and, for the corrector, then D_{i+1})."""
    h = lam[i + 1] - lam[i]
    hh = -h
    h_phi_1 = math.expm1(hh)                                   # e^{-h} - 1
    B = hh if variant == "bh1" else h_phi_1
    n_hist = q - 1
    rks = [(lam[i - m] - lam[i]) / h for m in range(1, n_hist + 1)] + [1.0]
    # phi_k: h_phi_k starts at (e^{hh} - 1)/hh - 1 = hh phi_2(hh); b_k = k! h_phi_k / B   (Thm 3.1)
    h_phi_k, fact, b = h_phi_1 / hh - 1.0, 1.0, []
    for k in range(1, q + 1):
        b.append(h_phi_k * fact / B)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    R = np.array([[r ** (k - 1) for r in rks] for k in range(1, q + 1)])
    if corrector:
        rhos = [0.5] if q == 1 else list(np.linalg.solve(R, np.array(b)))
        nodes = rks                                            # history, then D(x~_{i+1}) at r = 1
    else:
        rhos = [] if q == 1 else [0.5] if q == 2 else list(np.linalg.solve(R[:-1, :-1], np.array(b[:-1])))
        nodes = rks[:-1]
    # x = sigma_{i+1}/sigma_i x_i - alpha_{i+1} h_phi_1 D_i - alpha_{i+1} B sum_m rho_m (D_m' - D_i) / r_m
    w = [-B * rho / r for rho, r in zip(rhos, nodes)]
    return h_phi_1, sum(w), w                                  # scaled by alpha_{i+1} by the caller


@SAMPLERS.register("unipc", kind="fast ode", summary="UniPC predictor-corrector in data prediction, order 1-3 "
                   "(Zhao et al. 2023)", nfe=one_per_time, stochastic=False, takes_grid=True, schedule="logsnr",
                   fitted="times")
def unipc(sde, score_fn, x, ts, *, generator=None, denoise=True, progress=False,
          schedule: str = "logsnr", rho: float = 7.0, order: int = 2, variant: str = "bh2",
          corrector: bool = True, lower_order_final: bool = True) -> torch.Tensor:
    """UniPC (UniP-p + UniC) in data prediction, order 1-3, B(h) variant bh1/bh2 (Zhao et al. 2023); NFE = steps."""
    check_multistep(order, corrector, "variant", variant, ("bh1", "bh2"))
    g = LogSNRGrid(sde, x, ts, denoise, schedule, rho)
    orders = [min(order, i + 1) for i in range(g.n)]                  # warm-up: the history allows i + 1
    if lower_order_final:                                             # the last steps fall to order 1, 2 ...
        orders = [min(q, g.n - i) if g.n < 15 else q for i, q in enumerate(orders)]
    lam = g.lam

    def combine(i, q, xi, hist, corr):
        h_phi_1, w_sum, w = _weights(lam, i, q, variant, corr)
        a = g.alpha[i + 1]
        # x_{i+1} = sigma_{i+1}/sigma_i x_i - alpha_{i+1} h_phi_1 D_i + alpha_{i+1} sum_m w_m (D_m' - D_i)
        out = (g.sigma[i + 1] / g.sigma[i]) * xi + (-a * h_phi_1 - a * w_sum) * hist[0]
        others = hist[1:q] + (hist[-1:] if corr else [])               # D_{i-1}.. then D(x~_{i+1})
        for wm, Dm in zip(w, others):
            out = out + (a * wm) * Dm
        return out

    hist: list[torch.Tensor] = []                                      # D_i, D_{i-1}, ... (newest first)
    x_prev = None
    for i in progress_range(g.n + denoise, progress, "unipc"):         # the bar counts the final step too
        D = denoised(score_fn, x, g, i)
        if i == g.n:                                                  # final step to noise 0: x = D
            return D
        if corrector and x_prev is not None:                          # UniC on step i-1 with D(x~_i)
            x = combine(i - 1, orders[i - 1], x_prev, hist + [D], True)
        hist = [D] + hist[: order - 1]
        x_prev = x
        x = combine(i, orders[i], x, hist, False)
    return x
