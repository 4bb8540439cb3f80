"""Post-hoc EMA with power-function profiles (Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models" (EDM2), arXiv:2312.02696, Sec. 3 and App. C).

An EMA whose weight on the parameters of training time tau in [0, t] is the power function

    p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1),          sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))

(the profile's standard deviation relative to its length t; EDM2 eq. 3-4 / App. C.1) is tracked by the
per-step update theta_ema <- beta_t theta_ema + (1 - beta_t) theta_t with beta_t = (1 - 1/t)^(gamma + 1)
(eq. 127), t = 1, 2, ... the number of updates. Exactly so: unrolled, the weight of step k's parameters is
(k^(gamma+1) - (k-1)^(gamma+1)) / t^(gamma+1) = the integral of p_t over (k - 1, k], i.e. the continuous
profile applied to the parameters held constant over each step. So the closed-form inner products below
are exact for the tracked EMAs, with no discretisation error.

During training two such EMAs (e.g. sigma_rel 0.05 and 0.10) are snapshotted now and then. Any other profile
p (any sigma_rel, at any time up to the last snapshot) is then the least-squares combination of the stored
profiles p_i: x = A^{-1} b with A_ij = <p_i, p_j>, b_i = <p_i, p> (App. C.3), normalised to sum to 1, and the
reconstructed weights are sum_i x_i theta_i. The inner product of two profiles (t_a, gamma_a), t_a <= t_b:

    <p_a, p_b> = int_0^{t_a} p_a p_b dtau = (gamma_a + 1)(gamma_b + 1) (t_a / t_b)^gamma_b / ((gamma_a + gamma_b + 1) t_b).

`gamma` is the largest real root of the cubic gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s) = 0, s = sigma_rel^-2
(eq. 126); sigma_rel is taken in (0, 1/sqrt(12)], the profiles with gamma >= 0 (weight not decreasing in tau).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from scoresde.models.ema import EMA


__all__ = ["PowerFunctionEMA", "Snapshot", "sigma_rel_of", "gamma_of", "check_sigma_rel", "power_beta",
           "profile_inner", "solve_weights", "reconstruct", "SIGMA_REL_MAX"]

SIGMA_REL_MAX = 1 / math.sqrt(12)          # sigma_rel at gamma = 0 (a uniform average)


def sigma_rel_of(gamma: float) -> float:
    """sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))  (EDM2 eq. 123)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def check_sigma_rel(sigma_rel: Any, name: str = "sigma_rel") -> float:
    """A relative standard deviation in (0, 1/sqrt(12)]; ValueError/TypeError naming `name` otherwise."""
    if isinstance(sigma_rel, bool) or not isinstance(sigma_rel, (int, float)):
        raise TypeError(f"{name}: expected a number in (0, {SIGMA_REL_MAX:.4f}], found {sigma_rel!r}")
    if not 0 < sigma_rel <= SIGMA_REL_MAX:          # (nan fails too)
        raise ValueError(f"{name}: expected a relative EMA length in (0, {SIGMA_REL_MAX:.4f}] (power-function "
                         f"exponent gamma >= 0; EDM2 uses 0.05 to 0.2), found {sigma_rel!r}")
    return float(sigma_rel)


def gamma_of(sigma_rel: float) -> float:
    """The power-function exponent gamma >= 0 of a sigma_rel: the largest real root of
    gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s) = 0, s = sigma_rel^-2  (EDM2 eq. 126)."""
    s = check_sigma_rel(sigma_rel) ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    gamma = float(max(r.real for r in roots if abs(r.imag) <= 1e-9 * max(1.0, abs(r))))
    return max(gamma, 0.0)                       # sigma_rel = 1/sqrt(12) gives 0 up to round-off


def power_beta(gamma: float, t: int) -> float:
    """beta_t = (1 - 1/t)^(gamma + 1) of the t-th update (t >= 1; beta_1 = 0)  (EDM2 eq. 127)."""
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


def profile_inner(t_a: Any, gamma_a: Any, t_b: Any, gamma_b: Any) -> torch.Tensor:
    """<p_a, p_b> = int p_a(tau) p_b(tau) dtau of two power-function profiles of lengths t and exponents gamma
    (broadcast, float64): (g_a + 1)(g_b + 1) (t_lo / t_hi)^g_hi / ((g_a + g_b + 1) t_hi), where t_hi is the longer
    profile's length and g_hi its exponent (EDM2 App. C.3)."""
    t_a, g_a, t_b, g_b = (torch.as_tensor(v, dtype=torch.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    a_longer = t_a > t_b
    t_hi, t_lo = torch.where(a_longer, t_a, t_b), torch.where(a_longer, t_b, t_a)
    g_hi = torch.where(a_longer, g_a, g_b)
    return (g_a + 1) * (g_b + 1) * (t_lo / t_hi) ** g_hi / ((g_a + g_b + 1) * t_hi)


def solve_weights(times: Sequence[int], sigma_rels: Sequence[float], time: float,
                  sigma_rel: float) -> tuple[torch.Tensor, float]:
    """Least-squares weights x (float64, summing to 1) of stored profiles (times[i], sigma_rels[i]) for the profile
    (time, sigma_rel), and the relative L2 error of the fit ||sum x_i p_i - p|| / ||p||  (EDM2 App. C.3)."""
    if len(times) != len(sigma_rels) or not len(times):
        raise ValueError(f"snapshots: expected one or more (time, sigma_rel) pairs, found {len(times)} times and "
                         f"{len(sigma_rels)} sigma_rel values")
    if any(isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0 for t in times):
        raise ValueError(f"times: expected positive snapshot times, found {list(times)[:8]}")
    if not (isinstance(time, (int, float)) and time > 0):
        raise ValueError(f"time: expected a positive time, found {time!r}")
    g = torch.tensor([gamma_of(s) for s in sigma_rels], dtype=torch.float64)
    t = torch.tensor([float(v) for v in times], dtype=torch.float64)
    g_out = gamma_of(sigma_rel)
    A = profile_inner(t[:, None], g[:, None], t[None, :], g[None, :])          # (n, n) Gram matrix
    b = profile_inner(t, g, float(time), g_out)                                 # (n,)
    x = torch.linalg.lstsq(A, b[:, None], driver="gelsd").solution[:, 0]       # A may be near-singular
    x = x / x.sum()
    pp = float(profile_inner(float(time), g_out, float(time), g_out))
    err2 = float(x @ A @ x - 2 * x @ b) + pp
    return x, math.sqrt(max(err2, 0.0) / pp)


class Snapshot(NamedTuple):
    """A stored power-function EMA: its update count (training steps) `step`, `sigma_rel` and weights `shadow`."""
    step: int
    sigma_rel: float
    shadow: dict[str, torch.Tensor]


def reconstruct(snapshots: Sequence[Snapshot], sigma_rel: float,
                step: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights of the power-function EMA `sigma_rel` at training step `step` (default: the last snapshot's),
    from the snapshots taken at or before `step`: sum_i x_i theta_i with `solve_weights`' x, accumulated in
    float64 and returned in each tensor's dtype. Also returns {"step", "sigma_rel", "snapshots", "weights",
    "profile_error"} (the relative L2 error of the fitted profile)."""
    sigma_rel = check_sigma_rel(sigma_rel)
    if not snapshots:
        raise ValueError("snapshots: expected at least one power-function EMA snapshot, found none")
    last = max(s.step for s in snapshots)
    step = last if step is None else step
    if isinstance(step, bool) or not isinstance(step, int) or not 0 < step <= last:
        raise ValueError(f"step: expected a training step in [1, {last}] (the last snapshot), found {step!r}")
    used = [s for s in snapshots if s.step <= step]
    if not used:
        raise ValueError(f"step: no snapshot at or before step {step}; the first is at step "
                         f"{min(s.step for s in snapshots)}")
    keys = used[0].shadow.keys()
    for s in used[1:]:
        if s.shadow.keys() != keys:
            raise ValueError(f"snapshots: the snapshot of step {s.step} (sigma_rel {s.sigma_rel}) holds other weights "
                             "than the others (another model)")
    x, err = solve_weights([s.step for s in used], [s.sigma_rel for s in used], step, sigma_rel)
    out = {}
    for k in keys:
        acc = sum(float(w) * s.shadow[k].double() for w, s in zip(x, used))
        out[k] = acc.to(used[0].shadow[k].dtype)
    info = {"step": step, "sigma_rel": sigma_rel, "snapshots": [[s.step, s.sigma_rel] for s in used],
            "weights": x.tolist(), "profile_error": err}
    return out, info


class PowerFunctionEMA(EMA):
    """PowerFunctionEMA(model, sigma_rel=0.05): the EMA with the power-function profile of relative length
    `sigma_rel` (EDM2), updated by `update(model)` after every training step: decay_t = (1 - 1/t)^(gamma + 1) at
    the t-th update. Otherwise as `EMA` (`copy_to`, `average_parameters`, `state_dict`, ...)."""

    def __init__(self, model: nn.Module, sigma_rel: float = 0.05):
        super().__init__(model, decay=0.0, warmup=False)
        self.sigma_rel = check_sigma_rel(sigma_rel)
        self.gamma = gamma_of(self.sigma_rel)

    def current_decay(self, n: int | None = None) -> float:
        """decay_n = (1 - 1/n)^(gamma + 1) of the n-th update (default: the next one)."""
        return power_beta(self.gamma, self.num_updates + 1 if n is None else n)

    def snapshot(self) -> Snapshot:
        """The current average as a `Snapshot` (a copy)."""
        return Snapshot(self.num_updates, self.sigma_rel, {k: v.detach().clone() for k, v in self.shadow.items()})

    def state_dict(self) -> dict[str, Any]:
        """{"sigma_rel", "num_updates", "shadow": {param name: tensor}}."""
        return {"sigma_rel": self.sigma_rel, "num_updates": self.num_updates,
                "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if float(state["sigma_rel"]) != self.sigma_rel:
            raise ValueError(f"state: a power-function EMA of sigma_rel {state['sigma_rel']}, this one tracks "
                             f"{self.sigma_rel}")
        super().load_state_dict({**state, "decay": 0.0, "warmup": False})
