"""Denoising score-matching losses: continuous-time DSM, DDPM's epsilon-MSE and SMLD's loss.

- `dsm_loss`: Song et al. (2021), "Score-Based Generative Modeling through SDEs",
  arXiv:2011.13456, eq. 7, with lambda(t) = sigma(t)^2, or the likelihood weighting
  lambda(t) = g(t)^2 of Song et al. (2021), "Maximum Likelihood Training of Score-Based
  Diffusion Models", arXiv:2101.09258.
- `ddpm_loss`: Ho et al. (2020), "Denoising Diffusion Probabilistic Models", arXiv:2006.11239,
  L_simple (eq. 14) at DDPM's integer timesteps.
- `smld_loss`: Song & Ermon (2019), "Generative Modeling by Estimating Gradients of the Data
  Distribution", arXiv:1907.05600, eqs. 5-6, on the VE SDE's geometric noise levels.
- `edm_loss`: Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative Models",
  arXiv:2206.00364, Table 1: lambda(s) ||D(x_t) - x0||^2 with lambda(s) = (s^2 + s_d^2) / (s s_d)^2 and
  ln s ~ N(P_mean, P_std^2) (`edm_times`), s = sigma / alpha the noise level of x_t / alpha.
- `flow_matching_loss`: rectified flow / flow matching (Liu et al. 2022, arXiv:2209.03003; Lipman et al.
  2022, arXiv:2210.02747): ||u(x_t) - (z - x0)||^2, with t uniform or logit-normal and SD3's shift
  (Esser et al. 2024, arXiv:2403.03206; `flow_times`).

`edm_times` and `flow_times` draw a noise level and map it to the SDE's own time with the same
half log-SNR lambda = log(alpha / sigma) = -ln s (`sde.t_from_half_log_snr`), clamped to [eps, T]: on
EDM's path (t = s) and on the flow path (t = s / (1 + s)) that is the distribution itself; on VP or VE it is
the same distribution of noise levels, in the time of that SDE.

All three are the same objective, E ||sigma s(x_t, t) + z||^2 with x_t = alpha x0 + sigma z: for
s = -eps / sigma it is DDPM's E ||eps(x_t, t) - z||^2 (see docs/concepts/ddpm-is-dsm.md).

Per-sample reduction over the data dimensions follows score_sde's losses: `reduce_mean=True`
takes the mean over the data dimensions, `reduce_mean=False` half the sum. The returned loss is
the mean over the batch of these per-sample values, or the (B,) values with `per_sample=True`.
Random draws (times, then noise) come only from `generator`.

Class-conditional training for classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598):
`conditional_dsm_loss` with `label_dropout`, which replaces labels by the null label with probability
p_uncond so one network learns s(x, t, y) and s(x, t, null); and `classifier_loss`, the cross-entropy of
a noise-conditional classifier on perturbed data (classifier guidance).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from scoresde._common.validation import check_fn, check_generator
from scoresde.sde.base import check_sde
from scoresde._common.tensors import append_dims, as_time
from scoresde._common.validation import check_int
from scoresde._common.validation import check_real
from scoresde.models.conditioning import Cond, call_conditional, check_labels, check_num_classes
from scoresde.models.score_model import ScoreModel


# --- classifier-free guidance ---------------------------------------------------------------------
def label_dropout(y: torch.Tensor | Cond, p_uncond: float, num_classes: int,
                  generator: torch.Generator | None = None) -> torch.Tensor | Cond:
    """Replace each label by the null label `num_classes` with probability `p_uncond` (Ho & Salimans 2022, Alg. 1).

    `y` (B,) labels, or a `Cond` whose rows are replaced by its null condition (`Cond.null_like`: null
    label, empty context, image condition kept); one uniform draw per row either way."""
    if isinstance(y, Cond):
        return _cond_dropout(y, p_uncond, num_classes, generator)
    K = check_int("num_classes", num_classes)
    p = check_real("p_uncond", p_uncond, 0.0, 1.0)
    check_generator(generator)
    y = check_labels(y, None, K, allow_null=True)
    device = generator.device if generator is not None else y.device
    u = torch.rand(y.shape, generator=generator, device=device).to(y.device)
    return torch.where(u < p, torch.full_like(y, K), y)


def _cond_dropout(cond: Cond, p_uncond: float, num_classes: int | None, generator: torch.Generator | None) -> Cond:
    """`label_dropout` of a Cond: rows replaced by `cond.null_like(K)` (K needed for labels only)."""
    p = check_real("p_uncond", p_uncond, 0.0, 1.0)
    check_generator(generator)
    if cond.labels is not None:
        check_labels(cond.labels, None, check_int("num_classes", num_classes), allow_null=True)
    if cond.batch_size is None:
        return cond
    device = generator.device if generator is not None else cond.device
    u = torch.rand(cond.batch_size, generator=generator, device=device).to(cond.device)
    return cond.where(u >= p, cond.null_like(num_classes))                  # dropped where u < p


def conditional_dsm_loss(score_model: Callable, sde: Any, x0: torch.Tensor, y: torch.Tensor | Cond, *,
                         p_uncond: float = 0.1, num_classes: int | None = None,
                         generator: torch.Generator | None = None, **dsm_kwargs: Any) -> torch.Tensor:
    """Denoising score matching of a conditional model with condition dropout.

    The condition `y`, (B,) labels or a `Cond` (batch 1, broadcast, or B), is first passed through
    `label_dropout` (the null condition with probability `p_uncond`, drawn first from `generator`),
    then `dsm_loss` trains score_model(x, t, y=labels) (score_model(x, t, cond) for a Cond beyond
    labels) with the same `generator` and any of its keyword options (likelihood_weighting, eps, t,
    noise, reduce_mean, per_sample). `num_classes` defaults to `score_model.num_classes` (needed for
    labels only).
    """
    check_fn(score_model, "score_model")
    if isinstance(y, Cond):
        K = check_num_classes(num_classes, score_model) if y.labels is not None else num_classes
        x0 = _check_x0(x0)
        cond = label_dropout(y.expand(x0.shape[0]).to(x0.device), p_uncond, K, generator)
        return dsm_loss(lambda x, t: call_conditional(score_model, x, t, cond), sde, x0, generator=generator,
                        **dsm_kwargs)
    K = check_num_classes(num_classes, score_model)
    x0 = _check_x0(x0)
    y = check_labels(y, x0.shape[0], K, allow_null=True, device=x0.device)
    y_in = label_dropout(y, p_uncond, K, generator)
    return dsm_loss(lambda x, t: score_model(x, t, y=y_in), sde, x0, generator=generator, **dsm_kwargs)


def classifier_loss(classifier: Callable, sde: Any, x0: torch.Tensor, y: torch.Tensor, *, eps: float = 1e-5,
                    t: Any = None, noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                    per_sample: bool = False) -> torch.Tensor:
    """Cross-entropy of classifier(x_t, t) on perturbed data x_t = alpha(t) x0 + sigma(t) z, t ~ U(eps, T).

    `classifier(x, t) -> (B, K)` logits; `y` (B,) labels in [0, K). Random t (first) and z come
    from `generator`; `t` and `noise` may be given. Returns the batch mean (or (B,) values).
    """
    check_fn(classifier, "classifier")
    check_sde(sde)
    x0 = _check_x0(x0)
    check_generator(generator)
    if isinstance(y, bool) or not isinstance(y, (int, torch.Tensor)):
        raise TypeError(f"y: expected a ({x0.shape[0]},) integer tensor of class labels, found {type(y).__name__}")
    t = _train_time(t, x0, sde, eps, generator)
    z = _noise(noise, x0, generator)
    alpha, sigma = sde.marginal_coefs(t)
    x_t = append_dims(alpha, x0.ndim) * x0 + append_dims(sigma, x0.ndim) * z   # x_t = alpha x0 + sigma z
    logits = classifier(x_t, t)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != x0.shape[0]:
        found = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"classifier: expected logits of shape ({x0.shape[0]}, K), found {found}")
    y = check_labels(y, x0.shape[0], logits.shape[1], allow_null=False, device=x0.device)
    losses = F.cross_entropy(logits, y, reduction="none")                  # -log p(y | x_t, t)
    return losses if per_sample else losses.mean()


__all__ = ["dsm_loss", "ddpm_loss", "smld_loss", "edm_loss", "flow_matching_loss", "edm_times", "flow_times",
           "T_DISTS"]

T_DISTS = ("uniform", "logit_normal")       # `flow_times`' distributions of the flow time


# --- validation at the API boundary -------------------------------------------------------------
def _check_x0(x0: Any) -> torch.Tensor:
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0: expected a torch.Tensor of shape (B, *D), found {type(x0).__name__}")
    if x0.ndim < 1 or x0.shape[0] == 0 or not x0.is_floating_point():
        raise ValueError(f"x0: expected a non-empty floating-point tensor of shape (B, *D), found "
                         f"dtype {x0.dtype} and shape {tuple(x0.shape)}")
    return x0


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, found {type(value).__name__} {value!r}")
    return value



def _noise(noise: Any, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """z ~ N(0, I) shaped like x0, or the given `noise` after a shape check."""
    if noise is None:
        device = generator.device if generator is not None else x0.device
        return torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype).to(x0.device)
    if not isinstance(noise, torch.Tensor):
        raise TypeError(f"noise: expected a torch.Tensor shaped like x0 {tuple(x0.shape)}, "
                        f"found {type(noise).__name__}")
    if noise.shape != x0.shape or not noise.is_floating_point():
        raise ValueError(f"noise: expected a floating-point tensor of shape {tuple(x0.shape)} like x0, found "
                         f"dtype {noise.dtype} and shape {tuple(noise.shape)}")
    return noise.to(device=x0.device, dtype=x0.dtype)


def _index(index: Any, name: str, x0: torch.Tensor, N: int, generator: torch.Generator | None) -> torch.Tensor:
    """A (B,) long tensor of grid indices in [0, N): uniform draws, or the given int / tensor."""
    B = x0.shape[0]
    if index is None:
        device = generator.device if generator is not None else x0.device
        return torch.randint(0, N, (B,), generator=generator, device=device).to(x0.device)
    if isinstance(index, bool) or not isinstance(index, (int, torch.Tensor)):
        raise TypeError(f"{name}: expected an int or an integer tensor of shape ({B},), found {type(index).__name__}")
    if isinstance(index, int):
        index = torch.full((B,), index, dtype=torch.long, device=x0.device)
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor, found dtype {index.dtype}")
    if index.ndim == 0:
        index = index.expand(B)
    if index.shape != (B,):
        raise ValueError(f"{name}: expected shape ({B},) to match the batch of x0, found {tuple(index.shape)}")
    if bool(((index < 0) | (index >= N)).any()):
        raise ValueError(f"{name}: expected indices in [0, N={N}), "
                         f"found min {int(index.min())}, max {int(index.max())}")
    return index.to(device=x0.device, dtype=torch.long)


def _train_time(t: Any, x0: torch.Tensor, sde: Any, eps: Any, generator: torch.Generator | None) -> torch.Tensor:
    """Training times (B,): the given `t` checked to lie in (0, T], or t ~ U(eps, T) from `generator`."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"eps: expected the smallest training time in (0, T={sde.T}), found {eps!r}")
    if t is None:
        device = generator.device if generator is not None else x0.device
        u = torch.rand(x0.shape[0], generator=generator, device=device, dtype=x0.dtype).to(x0.device)
        return eps + (sde.T - eps) * u                          # t ~ U(eps, T)
    t = as_time(t, x0)
    if not bool(((t > 0) & (t <= sde.T)).all()):
        raise ValueError(f"t: expected times in (0, T={sde.T}], found min {t.min().item()}, max {t.max().item()}")
    return t


def _call(fn: Callable, name: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    out = fn(x, t)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        found = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{name}: expected an output of shape {tuple(x.shape)} like x, found {found}")
    return out


def _reduce(sq: torch.Tensor, reduce_mean: bool) -> torch.Tensor:
    """(B, *D) -> (B,): mean over the data dimensions, or half their sum (score_sde's reduce_op)."""
    sq = sq.reshape(sq.shape[0], -1)
    return sq.mean(1) if reduce_mean else 0.5 * sq.sum(1)


def _grid_time(sde: Any, i: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t_i = i T / (N - 1): grid point i of the SDE's N steps (inverse of `sde.grid_index`), or the
    SDE's own time of timestep i when it has one (`DiscreteVPSDE.t_from_timestep`)."""
    if callable(getattr(sde, "t_from_timestep", None)):
        return sde.t_from_timestep(i, dtype)
    return i.to(dtype) * (sde.T / max(sde.N - 1, 1))


# --- losses ---------------------------------------------------------------------------------------
def dsm_loss(score_fn: Callable, sde: Any, x0: torch.Tensor, *, likelihood_weighting: bool = False,
             reduce_mean: bool = True, eps: float = 1e-5, t: Any = None, noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None, per_sample: bool = False) -> torch.Tensor:
    """Continuous-time denoising score matching, t ~ U(eps, T) (Song et al. 2021, eq. 7).

    Per sample, with x_t = alpha(t) x0 + sigma(t) z:
        lambda = sigma^2 (default):      ||sigma s(x_t, t) + z||^2
        lambda = g^2 (likelihood_weighting): g(t)^2 ||s(x_t, t) + z / sigma||^2
    each reduced over the data dimensions by mean (`reduce_mean=True`) or half the sum.

    Args:
        score_fn: score_fn(x, t) -> score shaped like x (e.g. a `ScoreModel`).
        sde: any SDE with `marginal_coefs` (and `sde` for the likelihood weighting).
        x0: clean data (B, *D).
        t: optional times in (0, T], a float or (B,) tensor; drawn from U(eps, T) when None.
        noise: optional z shaped like x0; drawn from N(0, I) when None.
        generator: source of the random t and z (t is drawn first).
        per_sample: return the (B,) per-sample losses instead of their batch mean.
    """
    check_fn(score_fn, "score_fn")
    check_sde(sde)
    x0 = _check_x0(x0)
    _check_bool("likelihood_weighting", likelihood_weighting)
    _check_bool("reduce_mean", reduce_mean)
    _check_bool("per_sample", per_sample)
    check_generator(generator)
    t = _train_time(t, x0, sde, eps, generator)
    z = _noise(noise, x0, generator)
    alpha, sigma = sde.marginal_coefs(t)
    sig = append_dims(sigma, x0.ndim)
    x_t = append_dims(alpha, x0.ndim) * x0 + sig * z              # x_t = alpha x0 + sigma z
    score = _call(score_fn, "score_fn", x_t, t)
    if likelihood_weighting:
        g2 = sde.sde(x_t, t)[1].square()
        losses = g2 * _reduce((score + z / sig).square(), reduce_mean)  # g^2 ||s + z / sigma||^2
    else:
        losses = _reduce((sig * score + z).square(), reduce_mean)       # ||sigma s + z||^2
    return losses if per_sample else losses.mean()


def _discrete_draw(x0, index, index_name: str, N: int, noise, reduce_mean, per_sample, generator):
    """The checked x0, grid indices i (B,) and noise z of a loss on a discrete noise grid."""
    x0 = _check_x0(x0)
    _check_bool("reduce_mean", reduce_mean)
    _check_bool("per_sample", per_sample)
    check_generator(generator)
    i = _index(index, index_name, x0, N, generator)
    return x0, i, _noise(noise, x0, generator)


def ddpm_loss(eps_fn: Callable, vpsde: Any, x0: torch.Tensor, *, t_index: Any = None,
              noise: torch.Tensor | None = None, reduce_mean: bool = True,
              generator: torch.Generator | None = None, per_sample: bool = False) -> torch.Tensor:
    """DDPM's epsilon-MSE at integer timesteps (Ho et al. 2020, eq. 14).

    Per sample, with i ~ U{0, ..., N-1}, alpha_bar_i = `vpsde.alphas_cumprod[i]` and
    x_i = sqrt(alpha_bar_i) x0 + sqrt(1 - alpha_bar_i) z, the loss is ||eps_fn(x_i, t_i) - z||^2
    reduced over the data dimensions (mean, or half the sum), where t_i = i T / (N - 1) is the
    continuous time of grid point i (a `ScoreModel` with "t" conditioning feeds 999 t_i = i to its
    network when N = 1000); for a `DiscreteVPSDE`, N is its number of timesteps and t_i = (i + 1) T / N
    its time of timestep i. A `ScoreModel` passed as `eps_fn` is used through its `.eps`.

    Only the VP SDE has DDPM's discrete schedule *and* a variance-preserving marginal; other SDEs
    raise TypeError.
    """
    if isinstance(eps_fn, ScoreModel):
        eps_fn = eps_fn.eps
    check_fn(eps_fn, "eps_fn")
    if getattr(vpsde, "alphas_cumprod", None) is None or not callable(getattr(vpsde, "marginal_coefs", None)):
        raise TypeError(f"vpsde: expected a variance-preserving SDE with DDPM's discrete schedule "
                        f"(an `alphas_cumprod` attribute, e.g. scoresde.VPSDE), found {type(vpsde).__name__}")
    a, s = vpsde.marginal_coefs(torch.full((1,), 0.5 * vpsde.T, dtype=torch.float64))
    if abs(float(a.square() + s.square()) - 1.0) > 1e-8:
        raise TypeError(f"vpsde: expected a variance-preserving marginal (alpha^2 + sigma^2 = 1), found "
                        f"{type(vpsde).__name__} with alpha^2 + sigma^2 = {float(a.square() + s.square()):.6f} "
                        "at t = T/2")
    x0, i, z = _discrete_draw(x0, t_index, "t_index", len(vpsde.alphas_cumprod), noise, reduce_mean, per_sample,
                              generator)
    alpha_bar = append_dims(vpsde.alphas_cumprod.to(x0.device)[i].to(x0.dtype), x0.ndim)
    x_i = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * z     # q(x_i | x0), Ho et al. eq. 4
    eps_hat = _call(eps_fn, "eps_fn", x_i, _grid_time(vpsde, i, x0.dtype))
    losses = _reduce((eps_hat - z).square(), reduce_mean)          # ||eps(x_i, i) - z||^2
    return losses if per_sample else losses.mean()


def smld_loss(score_fn: Callable, vesde: Any, x0: torch.Tensor, *, sigma_index: Any = None,
              noise: torch.Tensor | None = None, reduce_mean: bool = True,
              generator: torch.Generator | None = None, per_sample: bool = False) -> torch.Tensor:
    """SMLD's noise-conditional score matching on the geometric noise levels, lambda = sigma^2.

    Per sample, with i ~ U{0, ..., N-1}, sigma_i = `vesde.discrete_sigmas[i]` (ascending, sigma_0 =
    sigma_min) and x_i = x0 + sigma_i z, the loss is sigma_i^2 ||score_fn(x_i, t_i) + z / sigma_i||^2
    = ||sigma_i s + z||^2 (Song & Ermon 2019, eq. 6), reduced over the data dimensions, where
    t_i = i T / (N - 1), so that the VE SDE's sigma(t_i) = sigma_i.

    Only an SDE with SMLD's noise levels (`discrete_sigmas`, i.e. VESDE) is accepted.
    """
    check_fn(score_fn, "score_fn")
    if getattr(vesde, "discrete_sigmas", None) is None:
        raise TypeError(f"vesde: expected a variance-exploding SDE with SMLD's noise levels "
                        f"(a `discrete_sigmas` attribute, e.g. scoresde.VESDE), found {type(vesde).__name__}")
    x0, i, z = _discrete_draw(x0, sigma_index, "sigma_index", vesde.N, noise, reduce_mean, per_sample, generator)
    sigma = append_dims(vesde.discrete_sigmas.to(x0.device)[i].to(x0.dtype), x0.ndim)
    x_i = x0 + sigma * z                                             # x_i ~ N(x0, sigma_i^2 I)
    score = _call(score_fn, "score_fn", x_i, _grid_time(vesde, i, x0.dtype))
    losses = _reduce((sigma * score + z).square(), reduce_mean)      # sigma_i^2 ||s + z / sigma_i||^2
    return losses if per_sample else losses.mean()


# --- EDM and flow matching -----------------------------------------------------------------------------
def _check_eps(eps: Any, sde: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"eps: expected the smallest training time in (0, T={sde.T}), found {eps!r}")
    return float(eps)


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive number of times, found {n!r}")
    return n


def _time_of_lambda(sde: Any, lam: torch.Tensor, eps: float) -> torch.Tensor:
    """The SDE's time of half log-SNR `lam`, clamped to [eps, T] (the training range)."""
    return sde.t_from_half_log_snr(lam).clamp(eps, sde.T)


def edm_times(sde: Any, n: int, *, p_mean: float = -1.2, p_std: float = 1.2, eps: float = 1e-5,
              generator: torch.Generator | None = None, device: Any = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n,) training times of EDM: ln s ~ N(p_mean, p_std^2) (Karras et al. 2022, Table 1), s = sigma / alpha,
    mapped to the SDE's time of the same noise level (lambda = -ln s) and clamped to [eps, T].

    One normal draw per time from `generator` (EDM's `rnd_normal`); on EDM's path t = s."""
    check_sde(sde)
    n, eps = _check_n(n), _check_eps(eps, sde)
    p_mean = check_real("p_mean", p_mean)
    p_std = check_real("p_std", p_std, 0.0, interval="(]")
    check_generator(generator)
    gen_device = generator.device if generator is not None else device
    rnd = torch.randn(n, generator=generator, device=gen_device, dtype=dtype).to(device)
    log_s = rnd * p_std + p_mean                                  # ln sigma ~ N(P_mean, P_std^2)
    return _time_of_lambda(sde, -log_s, eps)


def flow_times(sde: Any, n: int, *, t_dist: str = "uniform", logit_mean: float = 0.0, logit_std: float = 1.0,
               shift: float = 1.0, eps: float = 1e-5, generator: torch.Generator | None = None, device: Any = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n,) training times of flow matching, drawn as the flow time tau (x = (1 - tau) x0 + tau z up to scale):

        t_dist = "uniform":       tau ~ U(tau(eps), tau(T)), the SDE's range
        t_dist = "logit_normal":  logit tau ~ N(logit_mean, logit_std^2) (SD3: m = 0, s = 1)

    then SD3's shift tau' = shift tau / (1 + (shift - 1) tau) (1: none), mapped to the SDE's time of the same
    noise level (s = tau / (1 - tau), lambda = -ln s) and clamped to [eps, T]. On the flow path t = tau.
    One uniform or normal draw per time from `generator`."""
    check_sde(sde)
    n, eps = _check_n(n), _check_eps(eps, sde)
    if t_dist not in T_DISTS:
        raise ValueError(f"t_dist: expected one of {', '.join(T_DISTS)}, found {t_dist!r}")
    logit_mean = check_real("logit_mean", logit_mean)
    logit_std = check_real("logit_std", logit_std, 0.0, interval="(]")
    shift = check_real("shift", shift, 0.0, interval="(]")
    check_generator(generator)
    gen_device = generator.device if generator is not None else device
    if t_dist == "uniform":
        ends = sde.half_log_snr(torch.tensor([eps, sde.T], dtype=torch.float64))
        lo, hi = torch.sigmoid(-ends).tolist()                     # tau = sigma / (alpha + sigma) = sigmoid(-lambda)
        u = torch.rand(n, generator=generator, device=gen_device, dtype=dtype).to(device)
        tau = lo + (hi - lo) * u
    else:
        rnd = torch.randn(n, generator=generator, device=gen_device, dtype=dtype).to(device)
        tau = torch.sigmoid(rnd * logit_std + logit_mean)
    if shift != 1:
        tau = shift * tau / (1 + (shift - 1) * tau)
    lam = torch.log1p(-tau) - torch.log(tau)                       # log((1 - tau) / tau) = -ln s
    return _time_of_lambda(sde, lam, eps)


def _perturb(sde: Any, x0: torch.Tensor, t: torch.Tensor, noise: Any, generator: torch.Generator | None):
    """(x_t, z, alpha, sigma) with x_t = alpha x0 + sigma z; alpha, sigma broadcast against x0."""
    z = _noise(noise, x0, generator)
    alpha, sigma = sde.marginal_coefs(t)
    a, s = append_dims(alpha, x0.ndim), append_dims(sigma, x0.ndim)
    return a * x0 + s * z, z, a, s


def edm_loss(denoiser_fn: Callable, sde: Any, x0: torch.Tensor, *, p_mean: float = -1.2, p_std: float = 1.2,
             sigma_data: float = 0.5, eps: float = 1e-5, reduce_mean: bool = True, t: Any = None,
             noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
             per_sample: bool = False) -> torch.Tensor:
    """EDM's loss (Karras et al. 2022, Table 1; NVlabs/edm `EDMLoss`), per sample

        lambda(s) ||D(x_t, t) - x0||^2,   lambda(s) = (s^2 + s_d^2) / (s s_d)^2,   s = sigma(t) / alpha(t),

    with x_t = alpha x0 + sigma z, t from `edm_times` (ln s ~ N(p_mean, p_std^2)) unless given, reduced over
    the data dimensions by mean (`reduce_mean=True`) or half the sum. D is in the units of x0, so on any linear
    SDE this is EDM's loss on x_t / alpha, whose noise level is s.

    Args:
        denoiser_fn: denoiser_fn(x, t) -> D(x, t) = E[x0 | x_t = x] shaped like x (e.g.
            `functools.partial(score_model, output="x0")`).
        sigma_data: s_d of the weight (EDM: 0.5, the data's standard deviation).
        t, noise, generator, per_sample: as `dsm_loss` (t drawn first, then z).
    """
    check_fn(denoiser_fn, "denoiser_fn")
    check_sde(sde)
    x0 = _check_x0(x0)
    _check_bool("reduce_mean", reduce_mean)
    _check_bool("per_sample", per_sample)
    sd = check_real("sigma_data", sigma_data, 0.0, interval="(]")
    check_generator(generator)
    if t is None:
        t = edm_times(sde, x0.shape[0], p_mean=p_mean, p_std=p_std, eps=eps, generator=generator, device=x0.device,
                      dtype=x0.dtype)
    else:
        t = _train_time(t, x0, sde, eps, generator)
    x_t, z, a, s = _perturb(sde, x0, t, noise, generator)
    D = _call(denoiser_fn, "denoiser_fn", x_t, t)
    level = (s / a).reshape(-1)                                      # s = sigma / alpha
    weight = (level.square() + sd ** 2) / (level * sd).square()      # lambda(s)
    losses = weight * _reduce((D - x0).square(), reduce_mean)
    return losses if per_sample else losses.mean()


def flow_matching_loss(velocity_fn: Callable, sde: Any, x0: torch.Tensor, *, t_dist: str = "uniform",
                       logit_mean: float = 0.0, logit_std: float = 1.0, shift: float = 1.0, eps: float = 1e-5,
                       reduce_mean: bool = True, t: Any = None, noise: torch.Tensor | None = None,
                       generator: torch.Generator | None = None, per_sample: bool = False) -> torch.Tensor:
    """Flow matching's velocity loss (rectified flow, Liu et al. 2022; Lipman et al. 2022), per sample

        ||u(x_t, t) - (z - x0)||^2,   x_t = alpha(t) x0 + sigma(t) z,

    t from `flow_times` (uniform or logit-normal flow time, SD3's shift) unless given, reduced over the data
    dimensions by mean (`reduce_mean=True`) or half the sum. On the flow path (alpha = 1 - t, sigma = t)
    u is the ODE's velocity dx_t/dt; on any linear SDE the target z - x0 is the same.

    Args:
        velocity_fn: velocity_fn(x, t) -> u shaped like x (e.g. `functools.partial(score_model, output="u")`).
        t, noise, generator, per_sample: as `dsm_loss` (t drawn first, then z).
    """
    check_fn(velocity_fn, "velocity_fn")
    check_sde(sde)
    x0 = _check_x0(x0)
    _check_bool("reduce_mean", reduce_mean)
    _check_bool("per_sample", per_sample)
    check_generator(generator)
    if t is None:
        t = flow_times(sde, x0.shape[0], t_dist=t_dist, logit_mean=logit_mean, logit_std=logit_std, shift=shift,
                       eps=eps, generator=generator, device=x0.device, dtype=x0.dtype)
    else:
        t = _train_time(t, x0, sde, eps, generator)
    x_t, z, _, _ = _perturb(sde, x0, t, noise, generator)
    u = _call(velocity_fn, "velocity_fn", x_t, t)
    losses = _reduce((u - (z - x0)).square(), reduce_mean)          # ||u - (z - x0)||^2
    return losses if per_sample else losses.mean()
