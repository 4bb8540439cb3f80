"""Multistep exponential integrators in noise or data prediction: DEIS, with a UniC corrector.

- `deis`: DEIS's multistep exponential integrator (Zhang & Chen 2022, arXiv:2204.13902, Sec. 4,
  "AB-DEIS"), in its log-rho form: the noise prediction eps(x, lambda) is replaced on each step by
  the Lagrange polynomial in the half log-SNR lambda = -log rho through its last `order` values, and
  the semi-linear probability-flow ODE is integrated exactly against it. In the scale-free variables y = x / alpha and
  sigma~ = sigma / alpha = e^{-lambda} the ODE reads dy/dsigma~ = eps, i.e.

      x_{i+1} = alpha_{i+1} / alpha_i x_i - alpha_{i+1} int_{lambda_i}^{lambda_{i+1}} e^{-lambda} eps(lambda) dlambda.

  This is multistep DPM-Solver in noise prediction (Lu et al. 2022, arXiv:2206.00927) with the
  interpolant integrated exactly. `prediction="x0"` interpolates the data prediction D instead,
  d(x / sigma)/dlambda = e^{lambda} D, which is DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095).
- `corrector=True` adds UniPC's corrector UniC (Zhao et al. 2023, arXiv:2302.04867): once the
  score has been evaluated at the predicted x~_{i+1} (the evaluation that the next step needs
  anyway), the step x_i -> x_{i+1} is redone with the interpolant that also passes through that
  new value (an exponential Adams-Moulton step), raising the order by one at no extra NFE; the
  history keeps the value evaluated at x~_{i+1}, as in UniPC.

The weights int e^{-+lambda} L_j(lambda) dlambda of the Lagrange basis L_j are computed once per
run in float64 on the host by 24-point Gauss-Legendre quadrature (exact to round-off for these
smooth integrands), so each step is a fixed linear combination: no host synchronisation.
Grid, `denoise` and NFE are those of `fast.py`: NFE = steps; with `denoise` the last of them is
the final data prediction D(x_eps; eps), which the corrector does not use.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from scoresde.samplers.core import SAMPLERS, progress_range
from scoresde.samplers.logsnr import LogSNRGrid, denoised, check_multistep, one_per_time


__all__ = ["deis"]

_GL_U, _GL_W = np.polynomial.legendre.leggauss(24)
_GL_U, _GL_W = 0.5 * (_GL_U + 1.0), 0.5 * _GL_W          # nodes and weights on [0, 1]


def _weights(lam: list[float], i: int, nodes: list[int], sign: float) -> list[float]:
    """w_j = int_{lambda_i}^{lambda_{i+1}} e^{sign (lambda - lambda_i)} L_j(lambda) dlambda for the
    Lagrange basis L_j on the half log-SNRs lambda_k, k in `nodes`, by Gauss-Legendre in u."""
    h = lam[i + 1] - lam[i]
    u = [(lam[k] - lam[i]) / h for k in nodes]             # nodes in u = (lambda - lambda_i) / h
    f = np.exp(sign * h * _GL_U) * _GL_W * h
    out = []
    for j, uj in enumerate(u):
        L = np.ones_like(_GL_U)
        for m, um in enumerate(u):
            if m != j:
                L *= (_GL_U - um) / (uj - um)
        out.append(float((f * L).sum()))
    return out


@SAMPLERS.register("deis", kind="fast ode", summary="multistep exponential integrator (DEIS / DPM-Solver), order "
                   "1-3, optional UniC corrector", nfe=one_per_time, stochastic=False, takes_grid=True,
                   schedule="karras", fitted="times")
def deis(sde, score_fn, x, ts, *, generator=None, denoise=True, progress=False,
         schedule: str = "karras", rho: float = 7.0, order: int = 2, prediction: str = "eps",
         corrector: bool = False, lower_order_final: bool = True) -> torch.Tensor:
    """Multistep exponential integrator (DEIS / DPM-Solver), order 1-3, optional UniC; NFE = steps."""
    check_multistep(order, corrector, "prediction", prediction, ("eps", "x0"))
    g = LogSNRGrid(sde, x, ts, denoise, schedule, rho)
    eps = prediction == "eps"
    orders = [min(order, i + 1) for i in range(g.n)]
    if lower_order_final and 0 < g.n < 15:
        orders[-1] = min(orders[-1], 2)                                  # last step: order <= 2
    sign = -1.0 if eps else 1.0
    if eps:   # x_{i+1} = alpha_{i+1}/alpha_i x_i - alpha_{i+1} e^{-lambda_i} int e^{-(lambda - lambda_i)} eps dlambda
        a = [g.alpha[i + 1] / g.alpha[i] for i in range(g.n)]
        c = [-g.alpha[i + 1] * math.exp(-g.lam[i]) for i in range(g.n)]
    else:     # x_{i+1} = sigma_{i+1}/sigma_i x_i + sigma_{i+1} e^{lambda_i} int e^{lambda - lambda_i} D dlambda
        a = [g.sigma[i + 1] / g.sigma[i] for i in range(g.n)]
        c = [g.sigma[i + 1] * math.exp(g.lam[i]) for i in range(g.n)]
    # predictor nodes lambda_i, ..., lambda_{i-q+1}; corrector nodes lambda_{i+1}, lambda_i, ..., lambda_{i-q+1}
    pred_w = [[c[i] * w for w in _weights(g.lam, i, list(range(i, i - q, -1)), sign)] for i, q in enumerate(orders)]
    corr_w = [[c[i] * w for w in _weights(g.lam, i, list(range(i + 1, i - q, -1)), sign)] for i, q in enumerate(orders)]

    def predict(x, i):                                        # one NFE: eps = -sigma s, or D (Tweedie)
        if eps:
            return -g.sigma[i] * score_fn(x, g.t[i].expand(x.shape[0]))
        return denoised(score_fn, x, g, i)

    hist: list[torch.Tensor] = []                             # P_i, P_{i-1}, ... (newest first)
    x_prev = None
    for i in progress_range(g.n + denoise, progress, "deis"):     # the bar counts the final step too
        if i == g.n:                                              # final step to noise 0: x = D
            return denoised(score_fn, x, g, g.n)
        hist = [predict(x, i)] + hist[: order]
        if corrector and x_prev is not None:
            # UniC: x_i = a x_{i-1} + sum_j w^c_j P_{i-j}, interpolant through the new P_i too
            w = corr_w[i - 1]
            x = a[i - 1] * x_prev + sum(wj * p for wj, p in zip(w, hist))
        x_prev = x
        # x_{i+1} = a_i x_i + sum_j w_j P_{i-j}   (exact integral of the Lagrange interpolant)
        x = a[i] * x + sum(wj * p for wj, p in zip(pred_w[i], hist))
    return x
