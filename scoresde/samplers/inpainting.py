"""Imputation (inpainting): Song et al. (2021), arXiv:2011.13456, App. I.2, the "replacement" method.

Known entries (mask == 1) are set after every sampler update to a fresh forward-perturbed copy of the
known data at the new time, alpha(t) x_known + sigma(t) z, so the unknown entries follow the joint
score; at the end they are set to x_known exactly. The paper derives it as an approximation,
p_t(x_unknown | x_known(0)) ~ p_t(x_unknown | x_known(t) drawn from the forward kernel): it is exact
when known and unknown entries are independent and biased (toward the unconditional distribution)
when they are strongly correlated at high noise levels.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from scoresde._common.validation import check_fn, check_generator
from scoresde.sde.base import check_sde
from scoresde._common.finite import CheckedScore, NonFiniteError, nonfinite_count
from scoresde.samplers.core import check_samples, progress_range, uniform_grid
from scoresde.samplers.correctors import CORRECTORS
from scoresde.samplers.predictors import PREDICTORS, check_discretization
from scoresde._common.tensors import append_dims
from scoresde._common.validation import check_choice, check_int, check_positive
from scoresde._common.threads import thread_policy


# --- imputation / inpainting ----------------------------------------------------------------------
def _check_mask(mask: Any, x_known: torch.Tensor) -> torch.Tensor:
    """A {0, 1} (or bool) tensor broadcastable to x_known, returned as a bool tensor of x_known's shape."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask: expected a tensor of 0/1 (or bool) broadcastable to {tuple(x_known.shape)}, "
                        f"found {type(mask).__name__}")
    try:
        ok = torch.broadcast_shapes(mask.shape, x_known.shape) == x_known.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"mask: expected a shape broadcastable to x_known {tuple(x_known.shape)}, found {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask: expected entries 0 (unknown, to fill) or 1 (known), found other values")
        mask = mask != 0
    return mask.to(x_known.device).expand(x_known.shape)


def impute(sde: Any, score_fn: Callable, x_known: torch.Tensor, mask: torch.Tensor, *,
           predictor: str = "reverse_diffusion", corrector: str = "langevin", snr: float = 0.16,
           corrector_steps: int = 1, steps: int | None = None, eps: float | None = None,
           generator: torch.Generator | None = None, denoise: bool = True, progress: bool = False) -> torch.Tensor:
    """Fill the entries of `x_known` where `mask == 0` by predictor-corrector sampling with replacement.

    Song et al. (2021), App. I.2. After every corrector step at time t and every predictor step to
    time s, the known entries (mask == 1) are replaced by alpha(s) x_known + sigma(s) z (fresh z);
    at the end they equal x_known exactly. The options are those of the "pc" sampler
    (`predictor` in {"euler_maruyama", "reverse_diffusion", "ancestral", "none"}, `corrector` in
    {"langevin", "annealed_langevin", "none"}, `snr`, `corrector_steps`), on the uniform grid
    T -> eps of `steps` steps (default sde.N; eps default sde.default_eps). NFE as for "pc".

    Args:
        x_known: (B, *D) data of any rank; only its entries with mask == 1 are used.
        mask: 1 (or True) = known, 0 = to fill; any shape broadcastable to x_known (e.g. (1, 1, H, W)).
    Returns:
        (B, *D) samples equal to x_known where mask == 1.
    """
    check_sde(sde)
    check_fn(score_fn, "score_fn")
    if not isinstance(x_known, torch.Tensor) or x_known.ndim < 1 or not x_known.is_floating_point():
        found = f"{x_known.dtype} {tuple(x_known.shape)}" if isinstance(x_known, torch.Tensor) else type(x_known).__name__
        raise TypeError(f"x_known: expected a floating-point tensor of shape (B, *D), found {found}")
    m = _check_mask(mask, x_known)
    bad = nonfinite_count(torch.where(m, x_known, 0.0))          # unknown entries may be NaN placeholders
    if bad:
        raise NonFiniteError(f"x_known: expected finite values where mask == 1 (known), found {bad} NaN/inf")
    check_choice("predictor", predictor, [*PREDICTORS, "none"])
    check_choice("corrector", corrector, [*CORRECTORS, "none"])
    if predictor == "none" and corrector == "none":
        raise ValueError("predictor/corrector: expected at least one of them to be set, found both 'none'")
    snr = check_positive("snr", snr)
    n_corr = check_int("corrector_steps", corrector_steps) if corrector != "none" else 0
    steps = sde.N if steps is None else check_int("steps", steps)
    eps = sde.default_eps if eps is None else eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"eps: expected a final time in (0, T={sde.T}), found {eps!r}")
    check_generator(generator)
    if generator is not None and generator.device.type != x_known.device.type:
        raise ValueError(f"generator: expected a torch.Generator on x_known's device ({x_known.device}), "
                         f"found one on {generator.device}")
    if steps != sde.N:
        sde = sde.with_steps(steps)
    pred, corr = PREDICTORS.get(predictor), CORRECTORS.get(corrector)
    B = x_known.shape[0]
    score_fn = CheckedScore(score_fn, where="impute")          # first call checked, NaN caught early

    def replace(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # known entries <- alpha(t) x_known + sigma(t) z, a fresh draw of the forward kernel p_0t
        alpha, sigma = sde.marginal_coefs(t)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return torch.where(m, append_dims(alpha, x.ndim) * x_known + append_dims(sigma, x.ndim) * z, x)

    ts = uniform_grid(sde, steps, float(eps), device=x_known.device, dtype=x_known.dtype)
    check_discretization(sde, ts, "impute", discretize=predictor == "reverse_diffusion", langevin=corr is not None)
    with torch.no_grad(), thread_policy(x_known.shape[1:], x_known.device):
        x = replace(sde.prior_sampling(x_known.shape, generator=generator, device=x_known.device,
                                       dtype=x_known.dtype), ts[0].expand(B))
        n = len(ts) - 1
        for i in progress_range(n, progress, "impute"):
            last = i == n - 1
            t, s = ts[i].expand(B), ts[i + 1].expand(B)
            if pred is None:                                 # corrector only, at t_{i+1}
                for j in range(n_corr):
                    x = corr(sde, score_fn, x, s, snr=snr, generator=generator,
                             noise=not (denoise and last and j == n_corr - 1))
                    x = replace(x, s)
                continue
            for _ in range(n_corr):
                x = replace(corr(sde, score_fn, x, t, snr=snr, generator=generator), t)
            x = replace(pred(sde, score_fn, x, t, s, generator=generator, noise=not (denoise and last)), s)
        score_fn.flush()
        return check_samples(torch.where(m, x_known, x), "impute")   # known entries exact
