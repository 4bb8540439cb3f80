"""Time grids for the fast samplers: uniform in t or sqrt(t), uniform in log-SNR, Karras' rho-grid.

Every SDE here has the kernel x_t = alpha(t) x_0 + sigma(t) z, so a grid can be laid out in any
monotone function of the noise level and mapped back to t with `sde.t_from_half_log_snr`:

- "uniform": t_i = T - i (T - t_end) / steps (Song et al. 2021, arXiv:2011.13456);
- "quadratic": sqrt(t_i) uniform, DPM-Solver's "time_quadratic" grid (denser near t_end; being
  laid out in t, its noise levels depend on the SDE's schedule);
- "logsnr":  lambda_i = log(alpha/sigma) uniform between lambda(T) and lambda(t_end), the grid of
  DPM-Solver (Lu et al. 2022, arXiv:2206.00927, Sec. 3.4);
- "karras":  sigma~_i = (sigma~_max^(1/rho) + i/steps (sigma~_min^(1/rho) - sigma~_max^(1/rho)))^rho in
  the scale-free noise level sigma~ = sigma / alpha = e^{-lambda} (Karras et al. 2022,
  arXiv:2206.00364, eq. 5); rho = 7 is their choice, rho = 1 is uniform in sigma~;
- "shifted": SD3's resolution shift (Esser et al. 2024, arXiv:2403.03206) on a uniform grid in t:
  t_i = shift u_i / (1 + (shift - 1) u_i) with u uniform between the unshifted end points, shift =
  `sde.shift` (FlowSDE; 1, i.e. "uniform", for an SDE without one); diffusers' flow schedulers'
  sigmas with `shift` / `flow_shift`.

An SDE's `default_schedule` (FlowSDE and EDMSDE declare one) is the layout `sample` gives a sampler when
the caller names none (`schedule_for`); the other SDEs keep each sampler's own.

The grid is computed once in float64 on the host and moved to the caller's device and dtype: it
costs no per-step synchronisation.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from scoresde._common.validation import check_int, check_positive


__all__ = ["SCHEDULES", "time_grid", "check_schedule", "schedule_for"]

SCHEDULES = ("logsnr", "karras", "uniform", "quadratic", "shifted")


def check_schedule(schedule: Any) -> str:
    """Validate a schedule name."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {list(SCHEDULES)}, found {schedule!r}")
    return schedule


def schedule_for(sde, sampler: str, default: str | None) -> str | None:
    """The grid `sampler`, whose own default layout is `default` (None: it steps on the uniform grid), lays out
    on `sde` when the caller names none: the SDE's `default_schedule`, a name (for every sampler that lays out
    its own grid) or a mapping {sampler name: schedule, "*": the fast samplers' fallback}, else `default`."""
    path = getattr(sde, "default_schedule", None)
    if isinstance(path, Mapping):
        path = path.get(sampler, path.get("*") if default is not None else None)
    elif default is None:
        path = None
    return default if path is None else path


def time_grid(sde, steps: int, t_end: float, schedule: str = "logsnr", *, rho: float = 7.0,
              device: Any = None, dtype: torch.dtype | None = None, t_start: float | None = None) -> torch.Tensor:
    """A strictly decreasing grid t_0 = t_start > t_1 > ... > t_steps = t_end, shape (steps + 1,).

    Args:
        sde: any SDE with `marginal_coefs`, `half_log_snr` and `t_from_half_log_snr`.
        steps: number of intervals (>= 1).
        t_end: the last time, in (0, T).
        schedule: "logsnr", "karras", "uniform", "quadratic" or "shifted" (see the module docstring).
        rho: Karras' exponent (> 0), used by "karras" only.
        t_start: the first time (default `sde.T`).
    """
    steps = check_int("steps", steps)
    check_schedule(schedule)
    rho = check_positive("rho", rho)
    t_start = float(sde.T if t_start is None else t_start)
    if sde.T < t_start <= sde.T * (1 + 1e-6):   # T read back from a float32 grid (FlowSDE's T = 0.999 is not
        t_start = float(sde.T)                  # a float32): the round-off is not a later start
    t_end = float(t_end)
    if not 0 < t_end < t_start <= sde.T:
        raise ValueError(f"t_end: expected 0 < t_end < t_start={t_start} <= T={sde.T}, found {t_end!r}")
    ends = torch.tensor([t_start, t_end], dtype=torch.float64)
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    if schedule == "uniform":
        t = ends[0] + u * (ends[1] - ends[0])
    elif schedule == "shifted":
        shift = float(getattr(sde, "shift", 1.0))
        r = ends / (shift - (shift - 1) * ends)          # the unshifted end points (inverse of the shift)
        r = r[0] + u * (r[1] - r[0])
        t = shift * r / (1 + (shift - 1) * r)
    elif schedule == "quadratic":
        # sqrt(t_i) linear in i: DPM-Solver's "time_quadratic" grid (Lu et al. 2022, Sec. 3.4)
        r = ends.sqrt()
        t = (r[0] + u * (r[1] - r[0])).square()
    else:
        lam_max, lam_min = sde.half_log_snr(ends).tolist()[::-1]     # lambda(t_end), lambda(t_start)
        if schedule == "logsnr":
            lam = lam_min + u * (lam_max - lam_min)
        else:
            # sigma~ = e^{-lambda};  sigma~_i^(1/rho) linear in i   (Karras et al. 2022, eq. 5)
            a, b = math.exp(-lam_min / rho), math.exp(-lam_max / rho)
            lam = -rho * torch.log(a + u * (b - a))
        t = sde.t_from_half_log_snr(lam)
    t[0], t[-1] = t_start, t_end          # exact end points despite round-off of the inverse map
    t = t.to(dtype=dtype if dtype is not None else torch.get_default_dtype())
    if not bool((t[1:] < t[:-1]).all()):  # checked once on the host, before moving to `device`
        raise ValueError(f"steps: {steps} steps between t_start={t_start} and t_end={t_end} do not give a "
                         f"strictly decreasing grid in {t.dtype}; use fewer steps or a larger t_end")
    return t.to(device=device)
