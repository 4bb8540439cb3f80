"""The SDE interface (Song et al. 2021, "Score-Based Generative Modeling through Stochastic
Differential Equations", arXiv:2011.13456, Appendix B): drift and diffusion, marginals, prior,
discretisation, the reverse-time SDE / probability-flow ODE, and the registry `get_sde`.

Every SDE here is linear in x, so its perturbation kernel is Gaussian, x_t = alpha(t) x_0 + sigma(t) z,
and the samplers and losses work from `marginal_coefs(t) = (alpha, sigma)` without knowing which SDE
they hold. Per-SDE behaviour that samplers need (discretisation, ancestral step, Langevin alpha) is a
method, so samplers never dispatch on the SDE type. `SDE.sample` and `SDE.log_likelihood` are the
documented shortcuts into the samplers and the likelihood (the one upward reach of the layers, lazy).
"""
from __future__ import annotations

import abc
import math
from typing import Any, Callable, Sequence

import torch

from scoresde._common.registry import Registry
from scoresde._common.tensors import append_dims, as_time
from scoresde._common.validation import check_int


__all__ = ["check_sde", "SDE", "ReverseSDE", "get_sde", "SDES"]


ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SDES = Registry("SDE")


def _check_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list, torch.Size)) or not shape or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape
    ):
        raise ValueError(f"shape: expected a non-empty sequence of positive ints (B, *D), found {shape!r}")
    return tuple(shape)


def check_sde(sde: Any, name: str = "sde") -> Any:
    """An SDE with `marginal_coefs(t)` (duck-typed: VPSDE, VESDE, a user's linear SDE)."""
    if not callable(getattr(sde, "marginal_coefs", None)):
        raise TypeError(f"{name}: expected an SDE with marginal_coefs(t) (e.g. scoresde.VPSDE), "
                        f"found {type(sde).__name__}")
    return sde

def check_x(x: Any, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape (B, *D), found {type(x).__name__}")
    if x.ndim < 1 or not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor of shape (B, *D), found "
                         f"dtype {x.dtype} and shape {tuple(x.shape)}")
    return x


def _sum_dims(v: torch.Tensor) -> torch.Tensor:
    """Sum over every data dimension: `(B, *D) -> (B,)`."""
    return v.flatten(1).sum(1) if v.ndim > 1 else v


class SDE(abc.ABC):
    """A forward diffusion dx = f(x, t) dt + g(t) dw on t in [0, T], discretised into `N` steps.

    Subclasses define `sde`, `marginal_coefs`, `prior_sampling`/`prior_logp` (via `prior_std`),
    and may override `discretize`, `ancestral_step` and `langevin_alpha`.
    """

    T: float = 1.0
    default_eps: float = 1e-3  # final time of sampling (the ODE/SDE is singular at t = 0)
    # what a ScoreModel feeds its network by default: "t" (c = 999 t, DDPM's timestep scale)
    # for VP / sub-VP, "log_sigma" (c = log sigma(t), the NCSN++ convention) for VE
    default_conditioning: str = "t"
    # the time grid the samplers lay out on this path when the caller passes no `schedule=`: a name of
    # `samplers.grids.SCHEDULES` (for the fast samplers), or {sampler name: name, "*": the fast samplers' other};
    # None: each sampler's own default (see `samplers.grids.schedule_for`)
    default_schedule: Any = None

    def __init__(self, N: int = 1000):
        self.N = check_int("N", N)

    @property
    def t_limit(self) -> float:
        """The last time of the kernel: an explicit `times` grid may start there. T, except for a path that
        samples from T below its end (the flow path: T = t_max < t_limit = 1, where alpha = 0)."""
        return self.T

    # --- the interface of score_sde's sde_lib ---------------------------------------------
    @abc.abstractmethod
    def sde(self, x: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift f(x, t) shaped like x and diffusion g(t) of shape (B,)."""

    @abc.abstractmethod
    def marginal_coefs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha(t), sigma(t)) of the perturbation kernel p_0t(x_t | x_0) = N(alpha x_0, sigma^2 I)."""

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior p_T."""

    def marginal_prob(self, x0: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (shaped like x0) and std (B,) of p_0t(x_t | x_0)."""
        x0 = check_x(x0, "x0")
        alpha, sigma = self.marginal_coefs(as_time(t, x0))
        return append_dims(alpha, x0.ndim) * x0, sigma

    def prior_sampling(self, shape: Sequence[int], *, generator: torch.Generator | None = None,
                       device: Any = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Draw x_T ~ N(0, prior_std^2 I) of the given shape (B, *D)."""
        shape = _check_shape(shape)
        if device is None and generator is not None:
            device = generator.device
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return z * self.prior_std

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I) in nats, shape (B,)."""
        z = check_x(z, "z")
        D = z[0].numel()
        s2 = self.prior_std ** 2
        return -0.5 * D * math.log(2 * math.pi * s2) - 0.5 * _sum_dims(z.square()) / s2

    def discretize(self, x: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """One of N forward steps, x_{i+1} = x_i + f_i + G_i z; Euler-Maruyama by default."""
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (or the probability-flow ODE) driven by `score_fn`."""
        if not callable(score_fn):
            raise TypeError(f"score_fn: expected a callable score_fn(x, t), found {type(score_fn).__name__}")
        return ReverseSDE(self, score_fn, probability_flow)

    # --- discrete grid helpers --------------------------------------------------------------
    def table(self, name: str, device: Any) -> torch.Tensor:
        """The float64 grid table `name` on `device`, copied there once (no per-step transfer)."""
        cache = self.__dict__.setdefault("_tables", {})
        key = (name, torch.device(device))
        if key not in cache:
            cache[key] = getattr(self, name).to(device)
        return cache[key]

    def grid_index(self, t: torch.Tensor) -> torch.Tensor:
        """Index i = floor(t (N - 1) / T) of the discrete step that time t falls in, (B,) long.

        A tolerance of 1e-3 of a step absorbs float round-off for t on the grid i T / (N - 1).
        """
        i = torch.floor(t.double() * (self.N - 1) / self.T + 1e-3).long()
        return i.clamp(0, self.N - 1)

    # --- sampler hooks ------------------------------------------------------------------------
    def half_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = log(alpha(t) / sigma(t)), decreasing in t (Lu et al. 2022)."""
        alpha, sigma = self.marginal_coefs(t)
        return torch.log(alpha) - torch.log(sigma)

    @abc.abstractmethod
    def t_from_half_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """Inverse of `half_log_snr`."""

    def ancestral_step(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
                       score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (B,) of one ancestral step x_t -> x_s (s < t).

        The Gaussian posterior q(x_s | x_t, x_0) with x_0 given by Tweedie's formula
        x_0 = (x_t + sigma_t^2 score) / alpha_t (Ho et al. 2020, eq. 7). For VE this is exactly
        SMLD's ancestral step (Song et al. 2021, eq. 47).
        """
        a_t, s_t = self.marginal_coefs(t)
        a_s, s_s = self.marginal_coefs(s)
        a = a_t / a_s                                   # x_t | x_s ~ N(a x_s, v I)
        v = (s_t.square() - a.square() * s_s.square()).clamp_min(0)
        x0 = (x + append_dims(s_t.square(), x.ndim) * score) / append_dims(a_t, x.ndim)
        c_x = a * s_s.square() / s_t.square()           # posterior mean weights
        c_0 = a_s * v / s_t.square()
        mean = append_dims(c_x, x.ndim) * x + append_dims(c_0, x.ndim) * x0
        return mean, (v * s_s.square() / s_t.square()).sqrt()

    def langevin_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_i of the Langevin corrector's step-size rule eps = 2 alpha (snr |z| / |s|)^2."""
        return torch.ones_like(t)

    # --- high-level API -----------------------------------------------------------------------
    def sample(self, score_fn: ScoreFn, shape: Any = None, **kwargs: Any) -> torch.Tensor:
        """Sample with a registered sampler; see `scoresde.samplers.sample` for the options."""
        from scoresde.samplers.core import sample
        return sample(self, score_fn, shape, **kwargs)

    def log_likelihood(self, score_fn: ScoreFn, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """log p_eps(x) in nats via the probability-flow ODE from t = eps; see `scoresde.likelihood`."""
        from scoresde.evaluation.likelihood import log_likelihood
        return log_likelihood(self, score_fn, x, **kwargs)

    def config(self) -> dict[str, Any]:
        """Constructor arguments, for checkpoints and reprs."""
        return {"N": self.N}

    def with_steps(self, N: int) -> "SDE":
        """The same SDE discretised into `N` steps."""
        return type(self)(**{**self.config(), "N": N})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class ReverseSDE:
    """Reverse-time SDE dx = [f - g^2 s] dt + g dw-bar, or with `probability_flow` the ODE
    dx = [f - 1/2 g^2 s] dt (Song et al. 2021, eqs. 6 and 13). Time runs from T down to 0."""

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        self.forward, self.score_fn, self.probability_flow = forward, score_fn, bool(probability_flow)
        self.N, self.T = forward.N, forward.T

    def _score(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        return self.score_fn(x, as_time(t, x))

    def sde(self, x: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        drift, g = self.forward.sde(x, t)
        w = 0.5 if self.probability_flow else 1.0
        # reverse drift f - g^2 s  (1/2 g^2 s for the probability flow)
        drift = drift - append_dims(w * g.square(), x.ndim) * self._score(x, t)
        return drift, torch.zeros_like(g) if self.probability_flow else g

    def discretize(self, x: torch.Tensor, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse of the forward discretisation: f_rev = f - G^2 s (1/2 for the flow), G_rev = G."""
        f, G = self.forward.discretize(x, t)
        w = 0.5 if self.probability_flow else 1.0
        f = f - append_dims(w * G.square(), x.ndim) * self._score(x, t)
        return f, torch.zeros_like(G) if self.probability_flow else G


def get_sde(name: str, **kwargs: Any) -> SDE:
    """Build a registered SDE by name: "vp", "subvp", "ve", "flow", "edm", and the discrete "discrete_vp", "cosine_vp"."""
    return SDES[name](**kwargs)
