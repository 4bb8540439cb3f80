"""Continuous-time diffusion SDEs: VP (DDPM), sub-VP and VE (SMLD), rectified flow and EDM's path.

Formulas follow Song et al. (2021), "Score-Based Generative Modeling through Stochastic
Differential Equations", arXiv:2011.13456, Appendix B. Every SDE here is linear in x, so its
perturbation kernel is Gaussian, x_t = alpha(t) x_0 + sigma(t) z, and the samplers and losses
work from `marginal_coefs(t) = (alpha, sigma)` without knowing which SDE they hold.

Per-SDE behaviour that samplers need (discretisation, ancestral step, Langevin alpha) is a method
here, so samplers never dispatch on the SDE type.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from scoresde._common.tensors import append_dims, as_time
from scoresde._common.validation import check_positive
from scoresde.sde.base import SDE, SDES, check_x


class _LinearBeta(SDE):
    """Shared pieces of VP and sub-VP: beta(t) = beta_0 + t (beta_1 - beta_0)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(N)
        self.beta_0 = check_positive("beta_min", beta_min)
        self.beta_1 = check_positive("beta_max", beta_max)
        if self.beta_1 <= self.beta_0:
            raise ValueError(f"beta_max: expected > beta_min={beta_min}, found {beta_max}")
        # DDPM's discrete schedule: beta_i = linspace(beta_0 / N, beta_1 / N, N)
        self.discrete_betas = torch.linspace(self.beta_0 / N, self.beta_1 / N, N, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - self.discrete_betas, 0)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        # m(t) = -1/4 t^2 (beta_1 - beta_0) - 1/2 t beta_0, alpha(t) = e^{m(t)}
        return -0.25 * t.square() * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def _t_from_log_mean_coeff(self, m: torch.Tensor) -> torch.Tensor:
        # solve 1/4 d t^2 + 1/2 b0 t + m = 0 for t >= 0, d = beta_1 - beta_0
        d = self.beta_1 - self.beta_0
        return -4 * m / (self.beta_0 + torch.sqrt(self.beta_0 ** 2 - 4 * d * m))

    def discrete_beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.table("discrete_betas", t.device)[self.grid_index(t)].to(t.dtype)

    def langevin_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - self.discrete_beta(t)

    @property
    def prior_std(self) -> float:
        return 1.0

    def config(self) -> dict[str, Any]:
        return {"beta_min": self.beta_0, "beta_max": self.beta_1, "N": self.N}


@SDES.register("vp")
class VPSDE(_LinearBeta):
    """Variance-preserving SDE dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw: DDPM in continuous time."""

    def sde(self, x, t):
        x = check_x(x)
        beta = self.beta(as_time(t, x))
        return -0.5 * append_dims(beta, x.ndim) * x, beta.sqrt()

    def marginal_coefs(self, t):
        m = self.log_mean_coeff(t)
        return m.exp(), (-torch.expm1(2 * m)).sqrt()       # sigma = sqrt(1 - e^{2m})

    def t_from_half_log_snr(self, lam):
        # alpha^2 = 1 / (1 + e^{-2 lam})  =>  m = -1/2 log(1 + e^{-2 lam})
        return self._t_from_log_mean_coeff(-0.5 * torch.nn.functional.softplus(-2 * lam))

    def discretize(self, x, t):
        """DDPM: x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z (Ho et al. 2020)."""
        x = check_x(x)
        beta = self.discrete_beta(as_time(t, x))
        f = append_dims((1.0 - beta).sqrt(), x.ndim) * x - x
        return f, beta.sqrt()

    def ancestral_step(self, x, t, s, score):
        """DDPM ancestral sampling with sigma^2 = beta (Ho et al. 2020, Alg. 2; Song et al. eq. 47).

        x_s = (x_t + beta score) / sqrt(1 - beta) + sqrt(beta) z with 1 - beta = alpha_t^2 / alpha_s^2,
        which for s, t on DDPM's grid is its beta_i.
        """
        a_t, _ = self.marginal_coefs(t)
        a_s, _ = self.marginal_coefs(s)
        beta = 1.0 - (a_t / a_s).square()
        mean = (x + append_dims(beta, x.ndim) * score) / append_dims((1.0 - beta).sqrt(), x.ndim)
        return mean, beta.sqrt()


@SDES.register("subvp")
class SubVPSDE(_LinearBeta):
    """Sub-VP SDE dx = -1/2 beta x dt + sqrt(beta (1 - e^{-2 int beta})) dw (Song et al. 2021, eq. 11)."""

    def sde(self, x, t):
        x = check_x(x)
        t = as_time(t, x)
        beta = self.beta(t)
        discount = -torch.expm1(-2 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t.square())
        return -0.5 * append_dims(beta, x.ndim) * x, (beta * discount).sqrt()

    def marginal_coefs(self, t):
        m = self.log_mean_coeff(t)
        return m.exp(), -torch.expm1(2 * m)                # sigma = 1 - e^{2m}

    def t_from_half_log_snr(self, lam):
        # y = e^m solves e^lam y^2 + y - e^lam = 0; y = 2 e^lam / (1 + sqrt(1 + 4 e^{2 lam}))
        el = lam.exp()
        y = 2 * el / (1 + torch.sqrt(1 + 4 * el.square()))
        return self._t_from_log_mean_coeff(torch.log(y))


@SDES.register("ve")
class VESDE(SDE):
    """Variance-exploding SDE dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw: SMLD / NCSN."""

    default_eps = 1e-5
    default_conditioning = "log_sigma"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N)
        self.sigma_min = check_positive("sigma_min", sigma_min)
        self.sigma_max = check_positive("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max: expected > sigma_min={sigma_min}, found {sigma_max}")
        self.log_ratio = math.log(self.sigma_max / self.sigma_min)
        # SMLD's geometric noise levels sigma_i = sigma_min (sigma_max / sigma_min)^{i / (N - 1)}
        self.discrete_sigmas = torch.exp(torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max),
                                                        N, dtype=torch.float64))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * torch.exp(t * self.log_ratio)

    def sde(self, x, t):
        x = check_x(x)
        sigma = self.sigma(as_time(t, x))
        return torch.zeros_like(x), sigma * math.sqrt(2 * self.log_ratio)

    def marginal_coefs(self, t):
        return torch.ones_like(t), self.sigma(t)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def t_from_half_log_snr(self, lam):
        return (-lam - math.log(self.sigma_min)) / self.log_ratio

    def discretize(self, x, t):
        """SMLD: x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z with sigma_{-1} = 0."""
        x = check_x(x)
        i = self.grid_index(as_time(t, x))
        sigmas = self.table("discrete_sigmas", x.device)
        sigma = sigmas[i]
        prev = torch.where(i == 0, torch.zeros_like(sigma), sigmas[(i - 1).clamp_min(0)])
        return torch.zeros_like(x), (sigma.square() - prev.square()).sqrt().to(x.dtype)

    def config(self) -> dict[str, Any]:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "N": self.N}


@SDES.register("flow")
class FlowSDE(SDE):
    """Rectified flow / flow matching as a linear SDE: x_t = (1 - t) x_0 + t z, alpha = 1 - t, sigma = t.

    The straight path of Liu et al. (2022, arXiv:2209.03003) and Lipman et al. (2022, arXiv:2210.02747)
    is the kernel of dx = f x dt + g dw with f(t) = d ln alpha / dt = -1 / (1 - t) and
    g(t)^2 = d sigma^2 / dt - 2 f sigma^2 = 2 t / (1 - t); its probability-flow drift
    f x - 1/2 g^2 score is the velocity u = z - x_0 (in expectation given x_t), so the samplers here,
    driven by the score, integrate the same ODE a velocity model defines.

    At t = 1 alpha vanishes: x_1 = z carries no information about x_0, the score there is -x for any
    data, and the drift and lambda = log(alpha / sigma) are infinite. Sampling and the likelihood
    therefore start at `T = t_max` (default 1 - 1e-3, the largest time of diffusers' flow DPM-Solver and
    UniPC sigmas) from the path's prior N(0, I) read there, N(0, sigma(T)^2 I); the mass that x_T still carries of x_0, alpha(T) x_0, is
    below every sampler's error floor (its effect on the mean is alpha(T) E[x_0]). An explicit `times` grid
    may start at `t_limit` = 1 itself (diffusers' flow loop does) for `ddim`, which reads the model's own
    data prediction there (`x0(x, t)`), the only thing at t = 1 that carries information about x_0.

    `shift` is SD3's resolution shift (Esser et al. 2024, arXiv:2403.03206), t' = shift t / (1 + (shift - 1) t),
    a property of a trained model that the default sampling grid of this path honours (1: no shift).

    Default grids (`default_schedule`): "quadratic" (sqrt(t) uniform, denser near the data) for the fast
    samplers, "logsnr" for heun: the best of logsnr / uniform / karras / quadratic / shifted (shift < 1) for
    each with the exact scores of two 2-D mixtures at 5-20 evaluations (benchmarks/fast_samplers.py); the step
    samplers keep the uniform grid. With `shift` != 1, SD3's "shifted" grid for every fast sampler, the layout
    the model was trained for.
    """

    default_eps = 1e-3
    default_conditioning = "t"
    t_limit = 1.0          # an explicit grid may start at t = 1 (diffusers' flow loop): the data-prediction samplers
    default_schedule: Any = {"heun": "logsnr", "*": "quadratic"}

    def __init__(self, t_max: float = 1 - 1e-3, shift: float = 1.0, N: int = 1000):
        super().__init__(N)
        t_max = check_positive("t_max", t_max)
        if not t_max < 1:
            raise ValueError(f"t_max: expected a last time in (0, 1) (alpha(1) = 0), found {t_max!r}")
        self.t_max = self.T = float(t_max)
        self.shift = check_positive("shift", shift)
        if self.shift != 1:
            self.default_schedule = "shifted"

    def sde(self, x, t):
        x = check_x(x)
        t = as_time(t, x)
        rest = 1 - t
        return -x / append_dims(rest, x.ndim), (2 * t / rest).sqrt()

    def marginal_coefs(self, t):
        return 1 - t, t

    @property
    def prior_std(self) -> float:
        # N(0, I) at the path's end, read at T = t_max: the marginal there is alpha(T) x_0 + sigma(T) z with
        # sigma(T) = t_max, so sigma(T) is the prior's std (the alpha(T) x_0 = 1e-3 x_0 left is below every
        # sampler's floor; with std 1 instead the likelihood was off by up to 0.0105 nats on a 2-D mixture)
        return self.t_max

    def half_log_snr(self, t):
        return torch.log1p(-t) - torch.log(t)

    def t_from_half_log_snr(self, lam):
        return torch.sigmoid(-lam)                   # (1 - t) / t = e^lam

    def shifted(self, t: torch.Tensor) -> torch.Tensor:
        """SD3's shift t' = shift t / (1 + (shift - 1) t) (maps [0, 1] onto itself; identity at shift 1)."""
        return self.shift * t / (1 + (self.shift - 1) * t)

    def config(self) -> dict[str, Any]:
        return {"t_max": self.t_max, "shift": self.shift, "N": self.N}


@SDES.register("edm")
class EDMSDE(SDE):
    """EDM's path (Karras et al. 2022, arXiv:2206.00364, Table 1): VE with sigma(t) = t, alpha = 1.

    dx = sqrt(2 t) dw (g^2 = d sigma^2 / dt = 2 t), so the probability-flow ODE is dx/dt = -t score =
    (x - D(x; t)) / t, EDM's eq. 3 with time equal to the noise level. Time runs over
    [sigma_min, sigma_max] = [0.002, 80] by default: T = sigma_max, the final time `default_eps` =
    sigma_min, the prior N(0, sigma_max^2 I). The networks' noise input defaults to EDM's ln(sigma) / 4.
    """

    default_eps = 0.002
    default_conditioning = "edm"
    # EDM's rho = 7 grid (eq. 5) for the step samplers that take any grid and for heun / deis (their own
    # default); ddim, dpm_solver, unipc and bns keep "logsnr", which scored better with exact mixture scores
    default_schedule: Any = {"euler_maruyama": "karras", "ancestral": "karras", "heun": "karras", "deis": "karras"}

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, N: int = 1000):
        super().__init__(N)
        self.sigma_min = check_positive("sigma_min", sigma_min)
        self.sigma_max = check_positive("sigma_max", sigma_max)
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max: expected > sigma_min={sigma_min}, found {sigma_max}")
        self.T = self.sigma_max
        self.default_eps = self.sigma_min

    def sde(self, x, t):
        x = check_x(x)
        return torch.zeros_like(x), (2 * as_time(t, x)).sqrt()

    def marginal_coefs(self, t):
        return torch.ones_like(t), t

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def half_log_snr(self, t):
        return -torch.log(t)

    def discretize(self, x, t):
        """SMLD's step on the N-step uniform grid of sigma = t: x_{i+1} = x_i + sqrt(t^2 - (t - T/N)^2) z.

        The variance the exact kernel adds over the step, where Euler-Maruyama's g^2 dt = 2 t T / N overstates
        it by (T/N)^2: near sigma_min the reverse step's g^2 dt score then overshoots the data (reverse
        diffusion and pc with 100 steps drew samples 4x too wide)."""
        x = check_x(x)
        t = as_time(t, x)
        prev = (t - self.T / self.N).clamp_min(0)
        return torch.zeros_like(x), (t.square() - prev.square()).sqrt()

    def t_from_half_log_snr(self, lam):
        return torch.exp(-lam)

    def config(self) -> dict[str, Any]:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "N": self.N}
