"""Langevin correctors, predictor-corrector sampling and annealed Langevin dynamics.

Song et al. (2021), "Score-Based Generative Modeling through Stochastic Differential Equations",
arXiv:2011.13456, Sec. 4.2 and Algorithms 4-5 (PC sampling with the signal-to-noise step rule);
annealed Langevin dynamics after Song & Ermon (2019), arXiv:1907.05600, with the step size of the
reference implementation's `AnnealedLangevinDynamics` corrector.

A corrector step at time t makes one score evaluation and leaves p_t (approximately) invariant:
    x <- x + e s(x, t) + sqrt(2 e) z,   z ~ N(0, I).
  langevin:          e = 2 alpha (snr |z| / |s|)^2
  annealed_langevin: e = 2 alpha (snr sigma(t))^2, sigma(t) the perturbation kernel's std
with alpha = `sde.langevin_alpha(t)` (1 - beta_i for VP / sub-VP, 1 for VE).

The norms |z|, |s| are taken per sample over all data dims and then averaged over the batch, as
the reference implementation does. A per-sample ratio (Alg. 4 read literally, one x at a time)
is fine for images, where |z|^2 / |s|^2 concentrates, but in low dimension it is F-distributed
with a heavy tail (for D = 2 its mean is infinite): near a mode's centre |s| -> 0 and the step
explodes, scattering samples between modes. So the Langevin step size is a batch statistic:
the same seed and batch give the same samples, but a sample depends on its batch-mates.
Annealed Langevin's step depends on t only.
"""
from __future__ import annotations

from typing import Callable

import torch

from scoresde._common.tensors import append_dims
from scoresde._common.validation import check_choice, check_int, check_positive
from scoresde.samplers.core import SAMPLERS, check_options, progress_range, randn_like
from scoresde.samplers.predictors import PREDICTORS, check_discretization


__all__ = ["CORRECTORS", "langevin_step", "annealed_langevin_step", "pc", "annealed_langevin"]


def _flat_norm(v: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over every data dim: (B, *D) -> (B,)."""
    return v.reshape(v.shape[0], -1).norm(dim=1)


def langevin_step(sde, score_fn, x: torch.Tensor, t: torch.Tensor, *, snr: float,
                  generator: torch.Generator | None = None, noise: bool = True) -> torch.Tensor:
    """One Langevin corrector step at time t (B,) with the signal-to-noise step rule."""
    score = score_fn(x, t)
    z = randn_like(x, generator)
    # e = 2 alpha (r |z|_2 / |s|_2)^2   (Song et al. 2021, Alg. 4 and 5), norms averaged over the batch
    e = 2 * sde.langevin_alpha(t) * (snr * _flat_norm(z).mean() / _flat_norm(score).mean()).square()
    # x <- x + e s + sqrt(2 e) z
    x_mean = x + append_dims(e, x.ndim) * score
    return x_mean + append_dims((2 * e).sqrt(), x.ndim) * z if noise else x_mean


def annealed_langevin_step(sde, score_fn, x: torch.Tensor, t: torch.Tensor, *, snr: float,
                           generator: torch.Generator | None = None, noise: bool = True) -> torch.Tensor:
    """One annealed Langevin step at time t (B,): step size proportional to sigma(t)^2."""
    score = score_fn(x, t)
    _, sigma = sde.marginal_coefs(t)
    # e = 2 alpha (r sigma_t)^2   (Song & Ermon 2019, Alg. 1 with e ~ sigma_i^2)
    e = 2 * sde.langevin_alpha(t) * (snr * sigma).square()
    # x <- x + e s + sqrt(2 e) z
    x_mean = x + append_dims(e, x.ndim) * score
    if not noise:
        return x_mean
    return x_mean + append_dims((2 * e).sqrt(), x.ndim) * randn_like(x, generator)


CORRECTORS: dict[str, Callable] = {"langevin": langevin_step, "annealed_langevin": annealed_langevin_step}

_PC_DEFAULTS = {"predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16, "corrector_steps": 1}
_LANGEVIN_OPTIONS = {"snr": None, "corrector_steps": None}     # None: pc's defaults


def _check_pc(sampler: str, options: dict) -> dict:
    opts = check_options(sampler, options, _PC_DEFAULTS)
    check_choice("predictor", opts["predictor"], [*PREDICTORS, "none"])
    check_choice("corrector", opts["corrector"], [*CORRECTORS, "none"])
    opts["snr"] = check_positive("snr", opts["snr"])
    check_int("corrector_steps", opts["corrector_steps"])
    if opts["predictor"] == "none" and opts["corrector"] == "none":
        raise ValueError("predictor/corrector: expected at least one of them to be set, found both 'none'")
    return opts


def _pc_nfe(steps: int, denoise: bool = True, **options) -> int:
    """steps (1 + corrector_steps); predictor="none": steps corrector_steps; corrector="none": steps."""
    opts = {**_PC_DEFAULTS, **options}
    return steps * ((opts["predictor"] != "none") + (opts["corrector"] != "none") * opts["corrector_steps"])


def _annealed_langevin_nfe(steps: int, denoise: bool = True, corrector_steps: int | None = None, **options) -> int:
    """steps corrector_steps (default 1)."""
    return steps * (1 if corrector_steps is None else corrector_steps)


@SAMPLERS.register("pc", kind="pc", summary="predictor-corrector: predictor= euler_maruyama / reverse_diffusion / "
                   "ancestral / none, corrector= langevin / annealed_langevin / none", nfe=_pc_nfe, stochastic=True,
                   takes_grid=True, options=_PC_DEFAULTS)
def pc(sde, score_fn, x, ts, *, generator=None, denoise=True, progress=False, **options):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1-3).

    Options: predictor in {"euler_maruyama", "reverse_diffusion" (default), "ancestral", "none"},
    corrector in {"langevin" (default), "annealed_langevin", "none"}, snr=0.16, corrector_steps=1.
    Each step runs `corrector_steps` corrector steps at t_i, then the predictor t_i -> t_{i+1}
    (the reference implementation's order); NFE = steps (1 + corrector_steps). With
    predictor="none" the corrector alone runs at t_1, ..., t_steps = eps (NFE = steps corrector_steps);
    with corrector="none" this is the predictor alone (NFE = steps). `denoise` makes the final
    update (the last predictor step, or the last corrector step without a predictor) noise-free.
    """
    opts = _check_pc("pc", options)
    predictor = PREDICTORS.get(opts["predictor"])
    corrector = CORRECTORS.get(opts["corrector"])
    n_corr = opts["corrector_steps"] if corrector is not None else 0
    check_discretization(sde, ts, "pc" if predictor is not None else "annealed_langevin",
                         discretize=opts["predictor"] == "reverse_diffusion", langevin=corrector is not None)
    n, B = len(ts) - 1, x.shape[0]
    for i in progress_range(n, progress, "pc"):
        last = i == n - 1
        if predictor is None:                          # corrector only, at t_{i+1}
            t = ts[i + 1].expand(B)
            for j in range(n_corr):
                x = corrector(sde, score_fn, x, t, snr=opts["snr"], generator=generator,
                              noise=not (denoise and last and j == n_corr - 1))
            continue
        t, s = ts[i].expand(B), ts[i + 1].expand(B)    # (B,) on the device: no host sync
        for _ in range(n_corr):
            x = corrector(sde, score_fn, x, t, snr=opts["snr"], generator=generator)
        x = predictor(sde, score_fn, x, t, s, generator=generator, noise=not (denoise and last))
    return x


@SAMPLERS.register("annealed_langevin", kind="corrector", summary="annealed Langevin dynamics alone "
                   "(Song & Ermon 2019)", nfe=_annealed_langevin_nfe, stochastic=True, takes_grid=True,
                   options=_LANGEVIN_OPTIONS)
def annealed_langevin(sde, score_fn, x, ts, *, generator=None, denoise=True, progress=False, **options):
    """Corrector-only annealed Langevin dynamics (Song & Ermon 2019; Song et al. 2021, Sec. 4.2).

    Options: snr=0.16, corrector_steps=1. At each of t_1 > ... > t_steps = eps runs
    `corrector_steps` annealed Langevin steps; NFE = steps corrector_steps.
    """
    check_options("annealed_langevin", options, _LANGEVIN_OPTIONS)
    options = {k: v for k, v in options.items() if v is not None}
    return pc(sde, score_fn, x, ts, generator=generator, denoise=denoise, progress=progress,
              predictor="none", corrector="annealed_langevin", **options)
