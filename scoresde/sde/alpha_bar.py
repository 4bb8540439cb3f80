"""VP SDEs given by an alpha-bar schedule: any discrete DDPM table, and the cosine schedule.

A VP SDE dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw is fixed by its signal level
alpha_bar(t) = alpha(t)^2, with beta(t) = -d log alpha_bar / dt and the kernel
x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) z (Song et al. 2021, arXiv:2011.13456, App. B).

- `DiscreteVPSDE`: a discrete DDPM schedule alpha_bar_0 > ... > alpha_bar_{M-1} (Ho et al. 2020,
  arXiv:2006.11239; the tables of diffusers' schedulers: "linear", "scaled_linear",
  "squaredcos_cap_v2", "sigmoid", or any beta / alpha-bar array) in continuous time. Timestep i
  sits at t_i = (i + 1) T / M, and t = 0 is the data (alpha_bar = 1, diffusers' "final alpha" of
  DDIM), so the marginals at the model's timesteps equal the table exactly. log alpha_bar is
  interpolated between these nodes by a C^2 cubic spline (default; beta(t) is then continuous with
  a continuous derivative, which adaptive ODE solvers need), a monotone PCHIP, or linearly
  (beta piecewise constant). Whatever the interpolation, the SDE's transition between two nodes is
  the table's: x_{t_i} | x_{t_{i-1}} ~ N(sqrt(1 - beta_i) x, beta_i I), i.e. DDPM's forward step.
- `CosineVPSDE`: Nichol & Dhariwal (2021), "Improved DDPM", arXiv:2102.09672, eq. 17 in closed
  form, alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t + s) / (1 + s) pi / 2), ending at T = 0.9946
  (alpha_bar(T) ~ 7e-5), as DPM-Solver's cosine schedule does (Lu et al. 2022, arXiv:2206.00927).

Timestep i of an M-step table sits at t_i = (i + 1) / M, as in DPM-Solver's discrete schedule
(which interpolates log alpha linearly). The spline keeps adaptive solvers cheap: the exact
likelihood of the 2-D test mixture takes 98 NFE against 446 with the linear interpolation's jumps
in beta (tests/samplers/test_alpha_bar_sampling.py).

Both discretise into N DDPM steps on the uniform grid t_k = k T / N with
beta_k = 1 - alpha_bar(t_{k+1}) / alpha_bar(t_k) (exact transitions of the SDE), and their
ancestral step is the DDPM posterior q(x_s | x_t, x_0) with variance "posterior" (beta-tilde,
diffusers' "fixed_small") or "beta" ("fixed_large"). The posterior variance leaves out the
uncertainty of x_0 given x_t (Ho et al.'s lower bound), so coarse chains come out narrow: -11% in
variance for a 0.3-std Gaussian with the exact score at 200 steps, about -4% at 500.
"""
from __future__ import annotations

import abc
import copy
import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from scoresde.sde.base import SDE, SDES, check_x
from scoresde._common.tensors import append_dims, as_time
from scoresde._common.validation import check_choice, check_int, check_positive


__all__ = ["AlphaBarVPSDE", "DiscreteVPSDE", "CosineVPSDE", "beta_schedule", "BETA_SCHEDULES"]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
INTERPOLATIONS = ("cubic", "pchip", "linear")
ANCESTRAL_VARIANCES = ("posterior", "beta")


def _cosine_f(t: np.ndarray | float, s: float = 0.008) -> Any:
    # f(t) = cos^2((t + s) / (1 + s) * pi / 2)   (Nichol & Dhariwal 2021, eq. 17)
    return np.cos((np.asarray(t, dtype=np.float64) + s) / (1 + s) * math.pi / 2) ** 2


def beta_schedule(name: str, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """A named discrete beta schedule (float64, shape (num_timesteps,)), as diffusers defines them.

    "linear": linspace(beta_start, beta_end) (Ho et al. 2020); "scaled_linear": linspace of the
    square roots, squared (latent diffusion); "squaredcos_cap_v2": beta_i = min(1 - f((i+1)/M) / f(i/M),
    0.999) with the cosine f (Nichol & Dhariwal 2021, eq. 17); "sigmoid": beta_start +
    (beta_end - beta_start) sigmoid(linspace(-6, 6)) (GeoDiff).
    """
    check_choice("schedule", name, BETA_SCHEDULES)
    M = check_int("num_timesteps", num_timesteps, minimum=2)
    b0, b1 = check_positive("beta_start", beta_start), check_positive("beta_end", beta_end)
    if name == "linear":
        return torch.linspace(b0, b1, M, dtype=torch.float64)
    if name == "scaled_linear":
        return torch.linspace(b0 ** 0.5, b1 ** 0.5, M, dtype=torch.float64).square()
    if name == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, M, dtype=torch.float64)) * (b1 - b0) + b0
    i = np.arange(M, dtype=np.float64)
    return torch.from_numpy(np.minimum(1 - _cosine_f((i + 1) / M) / _cosine_f(i / M), 0.999))


class AlphaBarVPSDE(SDE):
    """A VP SDE defined by log alpha_bar(t); subclasses give it, beta(t) and the inverse map."""

    def __init__(self, N: int = 1000, ancestral_variance: str = "posterior"):
        super().__init__(N)
        self.ancestral_variance = check_choice("ancestral_variance", ancestral_variance, ANCESTRAL_VARIANCES)

    @abc.abstractmethod
    def _log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha_bar(t) for float64 t in [0, T]."""

    @abc.abstractmethod
    def _beta(self, t: torch.Tensor) -> torch.Tensor:
        """beta(t) = -d log alpha_bar / dt for float64 t in [0, T]."""

    @abc.abstractmethod
    def _t_from_log_alpha_bar(self, y: torch.Tensor) -> torch.Tensor:
        """Inverse of `_log_alpha_bar` for float64 y in [log alpha_bar(T), 0]."""

    def log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha_bar(t), in t's dtype (computed in float64)."""
        return self._log_alpha_bar(t.double().clamp(0.0, self.T)).to(t.dtype)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """beta(t) = -d log alpha_bar(t) / dt, in t's dtype."""
        return self._beta(t.double().clamp(0.0, self.T)).to(t.dtype)

    def sde(self, x, t):
        x = check_x(x)
        beta = self.beta(as_time(t, x))
        # dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw
        return -0.5 * append_dims(beta, x.ndim) * x, beta.sqrt()

    def marginal_coefs(self, t):
        y = self._log_alpha_bar(t.double().clamp(0.0, self.T)).clamp(max=0.0)   # round-off at t = 0
        # alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar)
        return (0.5 * y).exp().to(t.dtype), (-torch.expm1(y)).sqrt().to(t.dtype)

    @property
    def prior_std(self) -> float:
        return 1.0

    def t_from_half_log_snr(self, lam):
        # alpha_bar = sigmoid(2 lambda)  =>  log alpha_bar = -softplus(-2 lambda)
        y = -F.softplus(-2 * lam.double())
        lo = float(self._log_alpha_bar(torch.tensor([self.T], dtype=torch.float64)))
        return self._t_from_log_alpha_bar(y.clamp(lo, 0.0)).to(lam.dtype)

    # --- the N-step DDPM discretisation on t_k = k T / N -------------------------------------------
    @property
    def discrete_betas(self) -> torch.Tensor:
        """beta_k = 1 - alpha_bar(t_{k+1}) / alpha_bar(t_k), t_k = k T / N: the SDE's exact N-step chain."""
        cache = self.__dict__.setdefault("_betas", {})
        if self.N not in cache:
            y = self._log_alpha_bar(torch.linspace(0.0, self.T, self.N + 1, dtype=torch.float64))
            cache[self.N] = -torch.expm1(y[1:] - y[:-1])
        return cache[self.N]

    def discrete_beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.table("discrete_betas", t.device)[self.grid_index(t)].to(t.dtype)

    def discretize(self, x, t):
        """DDPM: x_{k+1} = sqrt(1 - beta_k) x_k + sqrt(beta_k) z (Ho et al. 2020), the step ending near t."""
        x = check_x(x)
        beta = self.discrete_beta(as_time(t, x))
        return append_dims((1.0 - beta).sqrt(), x.ndim) * x - x, beta.sqrt()

    def langevin_alpha(self, t):
        return 1.0 - self.discrete_beta(t)

    def ancestral_step(self, x, t, s, score):
        """DDPM's ancestral step t -> s: the posterior q(x_s | x_t, x_0) with Tweedie's x_0 (Ho et al.
        2020, eqs. 6-7), variance beta-tilde ("posterior") or 1 - alpha_bar_t / alpha_bar_s ("beta")."""
        mean, std = super().ancestral_step(x, t, s, score)
        if self.ancestral_variance == "beta":
            a_t, _ = self.marginal_coefs(t)
            a_s, _ = self.marginal_coefs(s)
            std = (1.0 - (a_t / a_s).square()).clamp_min(0).sqrt()
        return mean, std

    def with_steps(self, N: int) -> "AlphaBarVPSDE":
        """The same SDE (same schedule) discretised into `N` steps."""
        new = copy.copy(self)
        new.N = check_int("N", N)
        new.__dict__.pop("_tables", None)
        return new


@SDES.register("discrete_vp")
class DiscreteVPSDE(AlphaBarVPSDE):
    """A VP SDE whose marginals at t_i = (i + 1) T / M equal a discrete alpha-bar table (M timesteps).

    Give one of `alphas_cumprod` (the table, decreasing in (0, 1)), `betas` (alpha_bar_i =
    prod_{j <= i} (1 - beta_j)) or a named `schedule` (see `beta_schedule`; default "linear" with
    beta_start=1e-4, beta_end=0.02, num_timesteps=1000: DDPM's).

    Args:
        interpolation: how log alpha_bar runs between the nodes t_i: "cubic" (not-a-knot C^2 spline,
            default; refused when it is not decreasing everywhere), "pchip" (monotone C^1 Hermite),
            "linear" (beta piecewise constant).
        ancestral_variance: "posterior" (diffusers' "fixed_small", default) or "beta" ("fixed_large").
        N: discretisation steps of `discretize` and the samplers' defaults (default M).

    `timestep(t)` maps time to the model's timestep scale, tau = M t / T - 1 (float, clamped to
    [0, M - 1]; within 1e-3 of an integer it is that integer, absorbing float32 round-off of t),
    and `t_from_timestep(i)` back. `default_eps` = T / M: sampling ends at timestep 0.
    """

    def __init__(self, alphas_cumprod: Sequence[float] | torch.Tensor | None = None, *,
                 betas: Sequence[float] | torch.Tensor | None = None, schedule: str | None = None,
                 num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 interpolation: str = "cubic", ancestral_variance: str = "posterior", N: int | None = None):
        given = [name for name, v in (("alphas_cumprod", alphas_cumprod), ("betas", betas), ("schedule", schedule))
                 if v is not None]
        if len(given) > 1:
            raise ValueError(f"alphas_cumprod/betas/schedule: expected at most one of them, found {', '.join(given)}")
        self.interpolation = check_choice("interpolation", interpolation, INTERPOLATIONS)
        if alphas_cumprod is not None:
            ab = self._table("alphas_cumprod", alphas_cumprod)
            self._source: dict[str, Any] = {"alphas_cumprod": ab.tolist()}
        elif betas is not None:
            b = self._table("betas", betas)
            if not bool(((b > 0) & (b < 1)).all()):
                raise ValueError(f"betas: expected values in (0, 1), found min {float(b.min())}, max {float(b.max())}")
            ab = torch.cumprod(1.0 - b, 0)
            self._source = {"betas": b.tolist()}
        else:
            schedule = "linear" if schedule is None else schedule
            ab = torch.cumprod(1.0 - beta_schedule(schedule, num_timesteps, beta_start, beta_end), 0)
            self._source = {"schedule": schedule, "num_timesteps": num_timesteps, "beta_start": beta_start,
                            "beta_end": beta_end}
        if not (bool((ab[1:] < ab[:-1]).all()) and 0 < float(ab[-1]) and float(ab[0]) < 1):
            raise ValueError("alphas_cumprod: expected a strictly decreasing table in (0, 1) (every beta in (0, 1)), "
                             f"found first {float(ab[0])}, last {float(ab[-1])}")
        self.alphas_cumprod = ab                        # (M,) float64, alpha_bar at timestep i
        self.num_timesteps = M = len(ab)
        super().__init__(M if N is None else N, ancestral_variance)
        self.default_eps = self.T / M
        # nodes t_k = k T / M, k = 0..M, with log alpha_bar = 0 at t = 0 (the data)
        self._nodes = np.arange(M + 1, dtype=np.float64) * self.T / M
        y = np.concatenate([[0.0], np.log(ab.numpy())])
        if self.interpolation == "linear":
            slope = np.diff(y) / np.diff(self._nodes)
            c = np.stack([np.zeros(M), np.zeros(M), slope, y[:-1]])
        else:
            from scipy.interpolate import CubicSpline, PchipInterpolator
            spline = CubicSpline(self._nodes, y) if self.interpolation == "cubic" else PchipInterpolator(self._nodes, y)
            c = np.asarray(spline.c)                    # (4, M): y = c0 u^3 + c1 u^2 + c2 u + c3, u = t - t_k
        self._check_decreasing(c)
        self.coefs = torch.from_numpy(np.ascontiguousarray(c.T))      # (M, 4)
        self.node_values = torch.from_numpy(y)                        # (M + 1,) log alpha_bar at the nodes

    @staticmethod
    def _table(name: str, v: Any) -> torch.Tensor:
        t = torch.as_tensor(v, dtype=torch.float64).detach().cpu() if not isinstance(v, torch.Tensor) else v.detach().double().cpu()
        if t.ndim != 1 or len(t) < 2 or not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: expected a 1-D array of at least 2 finite values, found shape {tuple(t.shape)}")
        return t.clone()

    def _check_decreasing(self, c: np.ndarray) -> None:
        """beta(t) = -(3 c0 u^2 + 2 c1 u + c2) > 0 on every interval: the minimum over u in [0, h]."""
        h = self.T / self.num_timesteps
        d = lambda u: 3 * c[0] * u ** 2 + 2 * c[1] * u + c[2]                # d log alpha_bar / dt
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.where(c[0] != 0, -c[1] / (3 * c[0]), 0.0)                    # vertex of the quadratic
        cand = [d(np.zeros_like(v)), d(np.full_like(v, h)), np.where((v > 0) & (v < h), d(v), -np.inf)]
        worst = float(np.max(cand))
        ok = worst < 0 if self.interpolation != "pchip" else worst <= 0
        if not ok:
            raise ValueError(f"interpolation: the {self.interpolation!r} interpolant of this table has beta(t) <= 0 "
                             f"somewhere (max d log alpha_bar/dt = {worst:.3g}); use interpolation='pchip' (monotone)")

    def _local(self, t: torch.Tensor):
        M = self.num_timesteps
        k = torch.floor(t * (M / self.T)).long().clamp(0, M - 1)
        u = t - k.to(t.dtype) * self.T / M
        return self.table("coefs", t.device)[k], u                        # (..., 4), (...)

    def _log_alpha_bar(self, t):
        c, u = self._local(t)
        return ((c[..., 0] * u + c[..., 1]) * u + c[..., 2]) * u + c[..., 3]

    def _beta(self, t):
        c, u = self._local(t)
        return -((3 * c[..., 0] * u + 2 * c[..., 1]) * u + c[..., 2])

    def _t_from_log_alpha_bar(self, y):
        nodes = self.table("node_values", y.device)                           # decreasing, (M + 1,)
        k = (torch.searchsorted(-nodes, -y.contiguous(), right=True) - 1).clamp(0, self.num_timesteps - 1)
        lo = torch.zeros_like(y)
        hi = torch.full_like(y, self.T / self.num_timesteps)
        c = self.table("coefs", y.device)[k]
        for _ in range(60):                     # bisection on the decreasing cubic of interval k
            mid = 0.5 * (lo + hi)
            val = ((c[..., 0] * mid + c[..., 1]) * mid + c[..., 2]) * mid + c[..., 3]
            right = val > y
            lo, hi = torch.where(right, mid, lo), torch.where(right, hi, mid)
        return k.to(y.dtype) * self.T / self.num_timesteps + 0.5 * (lo + hi)

    # --- the model's timestep scale --------------------------------------------------------------------
    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """tau = M t / T - 1 in t's dtype: timestep i at t_i; clamped to [0, M - 1], snapped within 1e-3."""
        tau = t.double() * (self.num_timesteps / self.T) - 1.0
        r = tau.round()
        tau = torch.where((tau - r).abs() < 1e-3, r, tau).clamp(0.0, self.num_timesteps - 1.0)
        return tau.to(t.dtype)

    def t_from_timestep(self, timestep: Any, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """t_i = (i + 1) T / M for timesteps i (int, sequence or tensor)."""
        i = torch.as_tensor(timestep).to(torch.float64)
        return ((i + 1.0) * self.T / self.num_timesteps).to(dtype)

    def config(self) -> dict[str, Any]:
        return {**self._source, "interpolation": self.interpolation,
                "ancestral_variance": self.ancestral_variance, "N": self.N}

    def __repr__(self) -> str:
        src = (f"schedule={self._source['schedule']!r}" if "schedule" in self._source
               else f"{next(iter(self._source))}=<{self.num_timesteps} values>")
        return (f"DiscreteVPSDE({src}, num_timesteps={self.num_timesteps}, interpolation={self.interpolation!r}, "
                f"ancestral_variance={self.ancestral_variance!r}, N={self.N})")


@SDES.register("cosine_vp")
class CosineVPSDE(AlphaBarVPSDE):
    """The cosine VP SDE alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t + s) / (1 + s) pi / 2), on [0, T].

    beta(t) = pi / (1 + s) tan((t + s) / (1 + s) pi / 2) (Nichol & Dhariwal 2021, eq. 17 in
    continuous time). T defaults to 0.9946, DPM-Solver's choice (alpha_bar(1) = 0 would make the prior
    degenerate).
    """

    def __init__(self, s: float = 0.008, T: float = 0.9946, N: int = 1000, ancestral_variance: str = "posterior"):
        self.s = check_positive("s", s, allow_zero=True)
        self.T = check_positive("T", T)
        if not self.T < 1.0:
            raise ValueError(f"T: expected a final time in (0, 1) (alpha_bar(1) = 0), found {T!r}")
        super().__init__(N, ancestral_variance)
        self._log_cos0 = math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))

    def _phi(self, t):
        return (t + self.s) / (1 + self.s) * (math.pi / 2)

    def _log_alpha_bar(self, t):
        # log alpha_bar = 2 log cos(phi(t)) - 2 log cos(phi(0))
        return 2 * (torch.log(torch.cos(self._phi(t))) - self._log_cos0)

    def _beta(self, t):
        # beta = -d log alpha_bar / dt = 2 tan(phi) phi' = pi / (1 + s) tan(phi)
        return math.pi / (1 + self.s) * torch.tan(self._phi(t))

    def _t_from_log_alpha_bar(self, y):
        # cos(phi) = exp(y / 2 + log cos(phi(0))),  t = phi 2 (1 + s) / pi - s
        phi = torch.arccos(torch.exp(0.5 * y + self._log_cos0).clamp(max=1.0))
        return (phi * (2 * (1 + self.s) / math.pi) - self.s).clamp(0.0, self.T)

    def config(self) -> dict[str, Any]:
        return {"s": self.s, "T": self.T, "N": self.N, "ancestral_variance": self.ancestral_variance}
