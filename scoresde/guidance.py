"""Controllable generation: class-conditional training, classifier-free and classifier guidance,
and imputation (inpainting).

- Classifier-free guidance: Ho & Salimans (2022), "Classifier-Free Diffusion Guidance",
  arXiv:2207.12598. One network learns both the conditional score s(x, t, y) and, with the label
  replaced by a null label with probability p_uncond during training, the unconditional score
  s(x, t, null). Sampling uses the guided score
      s_w(x, t, y) = (1 - w) s(x, t, null) + w s(x, t, y),
  w = 0 unconditional, w = 1 conditional, w > 1 sharper (fidelity up, diversity down).
- Classifier guidance: Dhariwal & Nichol (2021), "Diffusion Models Beat GANs on Image Synthesis",
  arXiv:2105.05233, Sec. 4; Song et al. (2021), arXiv:2011.13456, Sec. 5 / App. I.1. A classifier
  p(y | x_t, t) trained on perturbed data x_t = alpha x0 + sigma z steers an unconditional score:
      s(x, t) + scale grad_x log p(y | x_t, t)      (scale = 1: Bayes' rule, the exact conditional).
- Imputation: Song et al. (2021), App. I.2, the "replacement" method. Known entries (mask == 1) are
  set after every sampler update to a fresh forward-perturbed copy of the known data at the new
  time, alpha(t) x_known + sigma(t) z, so the unknown entries follow the joint score; at the end
  they are set to x_known exactly. The paper derives it as an approximation,
  p_t(x_unknown | x_known(0)) ~ p_t(x_unknown | x_known(t) drawn from the forward kernel): it is
  exact when known and unknown entries are independent and biased (toward the unconditional
  distribution) when they are strongly correlated at high noise levels.

Labels are (B,) long tensors in [0, K) for K classes; index K = `num_classes` is the null label.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .losses import _check_generator, _check_x0, _noise, _train_time, dsm_loss
from .nets.layers import check_data_shape, linear, make_embedding
from .parameterization import CONDITIONINGS, _check_fn, _check_sde, conditioning_value
from .checks import CheckedScore, NonFiniteError, nonfinite_count
from .samplers import check_samples, progress_range, uniform_grid
from .samplers.langevin import CORRECTORS
from .samplers.sde_samplers import PREDICTORS, check_discretization
from .utils import append_dims, as_time, check_choice, check_int, check_positive, thread_policy

__all__ = ["label_dropout", "conditional_dsm_loss", "classifier_free_score", "ClassifierFreeScore",
           "NoiseConditionalClassifier", "classifier_loss", "classifier_guided_score", "ClassifierGuidedScore",
           "impute"]


# --- validation -----------------------------------------------------------------------------------
def _check_num_classes(num_classes: Any, owner: Any = None) -> int:
    """K from the argument, else from `owner.num_classes` (a ScoreModel / network / classifier)."""
    if num_classes is None:
        num_classes = getattr(owner, "num_classes", None)
        if num_classes is None:
            raise ValueError("num_classes: expected an int >= 1 (or a model with a `num_classes` attribute), found None")
    return check_int("num_classes", num_classes)


def _check_labels(y: Any, batch: int | None, num_classes: int, *, allow_null: bool, device=None) -> torch.Tensor:
    """An int (broadcast to the batch) or a (B,) integer tensor, in [0, K) or with `allow_null` [0, K]."""
    hi = num_classes if allow_null else num_classes - 1
    what = f"labels in [0, {hi}]" + (f" ({num_classes} = the null label)" if allow_null else "")
    if isinstance(y, bool) or not isinstance(y, (int, torch.Tensor)):
        raise TypeError(f"y: expected an int or a (B,) integer tensor of {what}, found {type(y).__name__}")
    if isinstance(y, int):
        if batch is None:
            raise ValueError("y: an int label needs a batch size")
        y = torch.full((batch,), y, dtype=torch.long, device=device)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y: expected an integer tensor of {what}, found dtype {y.dtype}")
    if y.ndim != 1 or (batch is not None and y.shape[0] != batch):
        raise ValueError(f"y: expected shape ({batch if batch is not None else 'B'},), found {tuple(y.shape)}")
    if y.numel() and bool(((y < 0) | (y > hi)).any()):
        raise ValueError(f"y: expected {what}, found min {int(y.min())}, max {int(y.max())}")
    return y.to(device=device if device is not None else y.device, dtype=torch.long)


def _validated_labels(y: Any, num_classes: int) -> int | torch.Tensor:
    """A requested class: an int in [0, K) (kept an int) or a (B,) integer tensor (as long)."""
    if isinstance(y, int) and not isinstance(y, bool):
        _check_labels(y, 1, num_classes, allow_null=False)
        return y
    return _check_labels(y, None, num_classes, allow_null=False)


def _batch_labels(y: int | torch.Tensor, batch: int, device) -> torch.Tensor:
    """Labels validated at construction, as a (B,) long tensor on `device` (shape checked, no host sync)."""
    if isinstance(y, int):
        return torch.full((batch,), y, dtype=torch.long, device=device)
    if y.shape != (batch,):
        raise ValueError(f"y: expected shape ({batch},) to match the batch of x, found {tuple(y.shape)}")
    return y.to(device)


def _check_real(name: str, value: Any, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name}: expected a finite real number, found {type(value).__name__} {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name}: expected a number in [{lo}, {hi}], found {value!r}")
    return float(value)


# --- classifier-free guidance ---------------------------------------------------------------------
def label_dropout(y: torch.Tensor, p_uncond: float, num_classes: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by the null label `num_classes` with probability `p_uncond` (Ho & Salimans 2022, Alg. 1)."""
    K = check_int("num_classes", num_classes)
    p = _check_real("p_uncond", p_uncond, 0.0, 1.0)
    _check_generator(generator)
    y = _check_labels(y, None, K, allow_null=True)
    device = generator.device if generator is not None else y.device
    u = torch.rand(y.shape, generator=generator, device=device).to(y.device)
    return torch.where(u < p, torch.full_like(y, K), y)


def conditional_dsm_loss(score_model: Callable, sde: Any, x0: torch.Tensor, y: torch.Tensor, *,
                         p_uncond: float = 0.1, num_classes: int | None = None,
                         generator: torch.Generator | None = None, **dsm_kwargs: Any) -> torch.Tensor:
    """Denoising score matching of a class-conditional model with label dropout.

    The labels `y` (B,) are first passed through `label_dropout` (null label with probability
    `p_uncond`, drawn first from `generator`), then `dsm_loss` trains score_model(x, t, y=labels)
    with the same `generator` and any of its keyword options (likelihood_weighting, eps, t, noise,
    reduce_mean, per_sample). `num_classes` defaults to `score_model.num_classes`.
    """
    _check_fn(score_model, "score_model")
    K = _check_num_classes(num_classes, score_model)
    x0 = _check_x0(x0)
    y = _check_labels(y, x0.shape[0], K, allow_null=True, device=x0.device)
    y_in = label_dropout(y, p_uncond, K, generator)
    return dsm_loss(lambda x, t: score_model(x, t, y=y_in), sde, x0, generator=generator, **dsm_kwargs)


class ClassifierFreeScore:
    """score_fn(x, t) = (1 - w) s(x, t, null) + w s(x, t, y); see `classifier_free_score`."""

    def __init__(self, score_model: Callable, y: Any, w: float, num_classes: int):
        self.score_model, self.y, self.w, self.num_classes = score_model, y, w, num_classes

    @property
    def data_shape(self):
        return getattr(self.score_model, "data_shape", None)

    def __call__(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        B = x.shape[0]
        y = _batch_labels(self.y, B, x.device)
        t = as_time(t, x)
        null = torch.full_like(y, self.num_classes)
        # one network call on the doubled batch [x; x] with labels [y; null]
        s = self.score_model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, null]))
        s_cond, s_uncond = s[:B], s[B:]
        # s_w = (1 - w) s(x, t, null) + w s(x, t, y) = s_null + w (s_y - s_null)   (Ho & Salimans 2022, eq. 6)
        return s_uncond + self.w * (s_cond - s_uncond)

    def __repr__(self) -> str:
        return f"classifier_free_score({self.score_model!r}, w={self.w})"


def classifier_free_score(score_model: Callable, y: Any, w: float, *, num_classes: int | None = None) -> ClassifierFreeScore:
    """The classifier-free guided score function score_fn(x, t) for labels `y` and weight `w`.

    Args:
        score_model: a class-conditional score model called as score_model(x, t, y=labels), labels
            (B,) long with the null label K (e.g. a `ScoreModel` on a net built with num_classes=K).
        y: the requested class, an int in [0, K) for the whole batch or a (B,) long tensor.
        w: guidance weight; 0 = unconditional, 1 = conditional, > 1 = guided (w >= 0 expected, any
            finite w accepted).
        num_classes: K, default `score_model.num_classes`.
    Each call evaluates the network ONCE on a doubled batch (conditional and unconditional halves
    concatenated), so a sampler's NFE counts network calls of batch 2B.
    """
    _check_fn(score_model, "score_model")
    K = _check_num_classes(num_classes, score_model)
    w = _check_real("w", w)
    y = _validated_labels(y, K)
    return ClassifierFreeScore(score_model, y, w, K)


# --- classifier guidance --------------------------------------------------------------------------
class NoiseConditionalClassifier(nn.Module):
    """A noise-conditional classifier p(y | x_t, t): an MLP on flattened x (any rank), logits (B, K).

    Conditioning follows `ScoreModel`: the network sees c = 999 t ("t", sinusoidal features; VP /
    sub-VP), c = sde.timestep(t) ("timestep", sinusoidal; a discrete schedule's timesteps) or
    c = log sigma(t) ("log_sigma", Gaussian Fourier features; VE); "auto" picks the
    SDE's default. The embedding of c is added to every hidden layer.
    forward(x, t) with t a float or (B,) tensor returns the logits.
    """

    def __init__(self, sde: Any, data_shape: Sequence[int], num_classes: int, width: int = 128,
                 depth: int = 3, conditioning: str = "auto", embed_dim: int = 64):
        super().__init__()
        self.sde = _check_sde(sde)
        self.data_shape = check_data_shape(data_shape, image=False)
        self.num_classes = check_int("num_classes", num_classes)
        width, depth, embed_dim = check_int("width", width), check_int("depth", depth), check_int("embed_dim", embed_dim)
        check_choice("conditioning", conditioning, CONDITIONINGS)
        if conditioning == "auto":
            conditioning = getattr(sde, "default_conditioning", "t")
        self.conditioning = conditioning
        self._config = dict(data_shape=list(self.data_shape), num_classes=self.num_classes, width=width,
                            depth=depth, conditioning=conditioning, embed_dim=embed_dim)
        kind = "sinusoidal" if conditioning in ("t", "timestep") else "fourier"
        self.embed = make_embedding(kind, embed_dim if kind == "sinusoidal" else embed_dim // 2 or 1)
        self.temb = nn.Sequential(linear(self.embed.out_dim, width), nn.SiLU(), linear(width, width))
        self.inp = linear(math.prod(self.data_shape), width)
        self.hidden = nn.ModuleList(linear(width, width) for _ in range(depth))
        self.cond = nn.ModuleList(linear(width, width) for _ in range(depth))
        self.out = linear(width, self.num_classes)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (except the SDE), for checkpoints."""
        return dict(self._config)

    def forward(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or tuple(x.shape[1:]) != self.data_shape:
            found = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected a floating-point tensor of shape (B, {', '.join(map(str, self.data_shape))}), "
                             f"found {found}")
        t = as_time(t, x)
        _, sigma = self.sde.marginal_coefs(t)
        c = conditioning_value(self.conditioning, self.sde, t, sigma)
        dtype = self.inp.weight.dtype
        emb = F.silu(self.temb(self.embed(c.to(dtype))))                       # (B, width)
        h = self.inp(x.to(dtype).flatten(1)) + emb
        for lin, cond in zip(self.hidden, self.cond):
            h = F.silu(lin(h) + cond(emb))
        return self.out(h)                                                       # (B, K) logits


def classifier_loss(classifier: Callable, sde: Any, x0: torch.Tensor, y: torch.Tensor, *, eps: float = 1e-5,
                    t: Any = None, noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                    per_sample: bool = False) -> torch.Tensor:
    """Cross-entropy of classifier(x_t, t) on perturbed data x_t = alpha(t) x0 + sigma(t) z, t ~ U(eps, T).

    `classifier(x, t) -> (B, K)` logits; `y` (B,) labels in [0, K). Random t (first) and z come
    from `generator`; `t` and `noise` may be given. Returns the batch mean (or (B,) values).
    """
    _check_fn(classifier, "classifier")
    _check_sde(sde)
    x0 = _check_x0(x0)
    _check_generator(generator)
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
    y = _check_labels(y, x0.shape[0], logits.shape[1], allow_null=False, device=x0.device)
    losses = F.cross_entropy(logits, y, reduction="none")                  # -log p(y | x_t, t)
    return losses if per_sample else losses.mean()


class ClassifierGuidedScore:
    """score_fn(x, t) + scale grad_x log p(y | x, t); see `classifier_guided_score`."""

    def __init__(self, score_fn: Callable, classifier: Callable, y: Any, scale: float):
        self.score_fn, self.classifier, self.y, self.scale = score_fn, classifier, y, scale

    @property
    def data_shape(self):
        return getattr(self.score_fn, "data_shape", None)

    def log_prob_grad(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        """grad_x log p(y | x_t = x, t) by autograd, shaped like x (works inside torch.no_grad)."""
        t = as_time(t, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = self.classifier(xg, t)                                     # (B, K)
            y = _batch_labels(self.y, x.shape[0], x.device)
            log_p = F.log_softmax(logits.float() if logits.dtype == torch.float16 else logits, 1)
            grad, = torch.autograd.grad(log_p.gather(1, y[:, None]).sum(), xg)
        return grad.to(x.dtype)

    def __call__(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        # s(x, t) + scale grad_x log p(y | x_t, t)   (Dhariwal & Nichol 2021, Sec. 4.1; Song et al. 2021, eq. 14)
        return self.score_fn(x, t) + self.scale * self.log_prob_grad(x, t)


def classifier_guided_score(score_fn: Callable, classifier: Callable, y: Any, scale: float = 1.0) -> ClassifierGuidedScore:
    """The classifier-guided score function score_fn(x, t) + scale grad_x log p(y | x_t, t).

    Args:
        score_fn: an (unconditional) score function score_fn(x, t).
        classifier: classifier(x, t) -> (B, K) logits of p(y | x_t, t), e.g. a trained
            `NoiseConditionalClassifier`; differentiable in x.
        y: the requested class, an int in [0, K) or a (B,) long tensor.
        scale: guidance scale s (1 = Bayes' rule, the conditional score; > 1 sharper).
    The gradient is taken by autograd under `torch.enable_grad()`, so it works inside the
    samplers' `torch.no_grad()` (not under `torch.inference_mode()`). One NFE = one score call
    plus one classifier forward/backward.
    """
    _check_fn(score_fn, "score_fn")
    _check_fn(classifier, "classifier")
    scale = _check_real("scale", scale)
    if isinstance(y, bool) or not isinstance(y, (int, torch.Tensor)):
        raise TypeError(f"y: expected an int or a (B,) integer tensor of class labels, found {type(y).__name__}")
    K = getattr(classifier, "num_classes", None)      # without it, labels are checked by the gather
    y = _validated_labels(y, K if K is not None else 2 ** 62)
    return ClassifierGuidedScore(score_fn, classifier, y, scale)


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
    _check_sde(sde)
    _check_fn(score_fn, "score_fn")
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
    _check_generator(generator)
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
