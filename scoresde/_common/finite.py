"""Run-time checks of score functions and of solver states: bad output fails fast, NaN never spins.

A score function is only called from inside a sampler or an ODE solve, so a wrong output shape is
silently broadcast (a (B, 1) score against (B, 2) data), and one NaN, in the input or in the
score, used to run the adaptive RK45 solver to its step budget: every step is rejected (its error
norm is NaN) and the step size shrinks forever. `CheckedScore` wraps the score function once, at
the API boundary of `sample`, `impute` and `log_likelihood`:

- the first evaluation is checked at once: a tensor, shaped like x, of x's dtype and device, and
  finite; the error names `score_fn` and what it returned;
- every later evaluation records the minimum and maximum of its input and of its output (NaN
  and +-inf reach them; one fused reduction each, no host synchronisation); they are read every
  `check_every` evaluations: on the CPU at once (reading a CPU tensor costs nothing), on an
  accelerator every 8 evaluations (one synchronisation per 8), so a NaN is reported within a step
  or two;
- `flush()` reads what is pending (the callers do so at the end of a run).

The error says where the first non-finite value appeared: in the score for a finite input (the
model or its weights), or in the state between two finite scores (an unstable step).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

__all__ = ["NonFiniteError", "CheckedScore", "check_finite", "nonfinite_count"]


class NonFiniteError(ValueError):
    """A score, a solver state or a result became NaN or infinite."""


def nonfinite_count(x: torch.Tensor) -> int:
    """Number of NaN / inf entries of x (one host read)."""
    return int((~torch.isfinite(x)).sum()) if x.is_floating_point() or x.is_complex() else 0


def check_finite(name: str, x: torch.Tensor, what: str = "values") -> torch.Tensor:
    """Raise NonFiniteError naming `name` when x holds NaN or inf; returns x."""
    bad = nonfinite_count(x)
    if bad:
        raise NonFiniteError(f"{name}: expected finite {what}, found {bad} NaN/inf of {x.numel()}")
    return x


def _time(t: Any) -> str:
    """The time of a score call, for messages (a float, or the first entry of a (B,) tensor)."""
    if isinstance(t, torch.Tensor):
        t = t.reshape(-1)[0].item() if t.numel() else float("nan")
    try:
        return f"{float(t):.6g}"
    except (TypeError, ValueError):
        return repr(t)


def _describe(out: Any) -> str:
    if not isinstance(out, torch.Tensor):
        return type(out).__name__
    return f"a {out.dtype} tensor of shape {tuple(out.shape)} on {out.device}"


class CheckedScore:
    """`score_fn` wrapped with an evaluation counter (`nfe`), a first-call check and NaN detection.

    Args:
        score_fn: the caller's score_fn(x, t).
        where: the run it serves, for messages ("sampler 'ode'", "log_likelihood", ...).
        check_every: evaluations between reads of the pending extremes; default 1 on the
            CPU and 8 on an accelerator (read with one host synchronisation).
    """

    def __init__(self, score_fn: Callable, where: str = "sampling", check_every: int | None = None):
        if not callable(score_fn):
            raise TypeError(f"score_fn: expected a callable score_fn(x, t), found {type(score_fn).__name__}")
        self.score_fn, self.where, self.check_every, self.nfe = score_fn, where, check_every, 0
        self._pending: list[tuple[int, Any, torch.Tensor]] = []      # (evaluation, t, extremes (4,))
        if callable(getattr(score_fn, "x0", None)):     # a model's data prediction, counted and checked alike
            self.x0 = lambda x, t: self._evaluate(score_fn.x0, x, t)

    @property
    def data_shape(self):
        return getattr(self.score_fn, "data_shape", None)

    def __call__(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        return self._evaluate(self.score_fn, x, t)

    def _evaluate(self, fn: Callable, x: torch.Tensor, t: Any) -> torch.Tensor:
        self.nfe += 1
        out = fn(x, t)
        if self.nfe == 1:
            self._check_first(x, t, out)
            return out
        # min and max of x and of the score: NaN and +-inf reach them, in one fused pass each
        # (torch.isfinite(v).all() costs several times more on the CPU)
        x_lo, x_hi = torch.aminmax(x.detach())
        s_lo, s_hi = torch.aminmax(out.detach())
        every = self.check_every or (1 if x.device.type == "cpu" else 8)
        if every == 1 and not self._pending and all(math.isfinite(v.item()) for v in (x_lo, x_hi, s_lo, s_hi)):
            return out                                           # CPU: reading the values costs no sync
        ext = torch.stack([x_lo, x_hi, s_lo, s_hi])             # (4,) on x's device: nothing crosses to the host
        self._pending.append((self.nfe, t, ext))
        if len(self._pending) >= every:
            self.flush()
        return out

    def _check_first(self, x: torch.Tensor, t: Any, out: Any) -> None:
        expected = f"a tensor shaped like x {tuple(x.shape)} ({x.dtype}, on {x.device})"
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"score_fn: expected {expected}, found {_describe(out)}")
        if out.shape != x.shape:
            raise ValueError(f"score_fn: expected {expected}, found {_describe(out)}")
        if out.dtype != x.dtype or out.device != x.device:
            raise TypeError(f"score_fn: expected {expected}, found {_describe(out)}")
        bad_x, bad_out = nonfinite_count(x), nonfinite_count(out)
        if bad_x:
            raise NonFiniteError(f"{self.where}: the input of the first score evaluation (t = {_time(t)}) holds "
                                 f"{bad_x} NaN/inf of {x.numel()} values")
        if bad_out:
            raise NonFiniteError(f"score_fn returned {bad_out} NaN/inf of {out.numel()} values at t = {_time(t)} "
                                 f"(first evaluation, finite input) in {self.where}; the model or its weights "
                                 "are broken")

    def flush(self) -> None:
        """Read the pending extremes (one host synchronisation) and raise at the first non-finite value."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        ext = torch.stack([e for _, _, e in pending]).cpu().tolist()      # (k, 4): x min/max, score min/max
        for (nfe, t, _), (x_lo, x_hi, s_lo, s_hi) in zip(pending, ext):
            if not (math.isfinite(x_lo) and math.isfinite(x_hi)):
                raise NonFiniteError(f"{self.where}: the state x became NaN/inf before the score evaluation at "
                                     f"t = {_time(t)} (evaluation {nfe}) although every score so far was finite; "
                                     "the steps are unstable: use more steps (or a tighter tolerance)")
            if not (math.isfinite(s_lo) and math.isfinite(s_hi)):
                raise NonFiniteError(f"score_fn returned NaN/inf at t = {_time(t)} (evaluation {nfe}) for a finite "
                                     f"input in {self.where}; the model or its weights are broken")
