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

Prompts (a model with a `text_encoder`, `models/text.py`) are encoded to a Cond of their context; the
unconditional branch is the negative prompt's encoding or `text_encoder.null(B)` (the empty prompt), as
Stable Diffusion's pipelines do; guidance rescale (Lin et al. 2024, arXiv:2305.08891) is optional.

Labels are (B,) long tensors in [0, K) for K classes; index K = `num_classes` is the null label. Any
other condition is a `Cond` (scoresde/models/conditioning.py), its unconditional branch `Cond.null_like`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from scoresde._common.tensors import append_dims, as_time
from scoresde._common.validation import check_choice, check_fn, check_real
from scoresde.models.conditioning import (Cond, batch_labels, call_conditional, check_labels, check_num_classes,
                                          validated_labels)
from scoresde.models.text import check_prompts


__all__ = ["classifier_free_score", "ClassifierFreeScore", "classifier_guided_score", "ClassifierGuidedScore",
           "rescale_guidance", "RESCALE_SPACES"]

RESCALE_SPACES = ("eps", "x0", "v")


def _prompt_batch(prompts: list[str] | None, batch: int, name: str) -> list[str] | None:
    """One prompt per row: a single prompt broadcast, or exactly `batch` of them."""
    if prompts is None or len(prompts) == batch:
        return prompts
    if len(prompts) == 1:
        return prompts * batch
    raise ValueError(f"{name}: expected 1 prompt or {batch} (one per row of x), found {len(prompts)}")


def _same_length(a: Cond, b: Cond) -> tuple[Cond, Cond]:
    """Two text conditions with contexts of one length L: the shorter padded with masked-out zeros (an encoder
    that pads to the longest prompt of a batch gives the prompt and the null branch different lengths)."""
    La, Lb = a.context.shape[1], b.context.shape[1]
    if La == Lb:
        return a, b

    def pad(c: Cond, L: int) -> Cond:
        B, n, D = c.context.shape
        mask = c.context_mask if c.context_mask is not None else torch.ones(B, n, dtype=torch.bool,
                                                                             device=c.context.device)
        fields = dict(c.items())
        fields["context"] = torch.cat([c.context, c.context.new_zeros(B, L - n, D)], 1)
        fields["context_mask"] = torch.cat([mask, mask.new_zeros(B, L - n)], 1)
        return Cond(**fields)
    return (pad(a, Lb), b) if La < Lb else (a, pad(b, La))


def rescale_guidance(pred_cfg: torch.Tensor, pred_cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps Are Flawed",
    arXiv:2305.08891, Sec. 3.4, eqs. 15-17): the guided prediction rescaled to the per-sample standard
    deviation of the conditional one, mixed with the unrescaled one by phi (diffusers' `rescale_noise_cfg`,
    std with Bessel's correction over all but the batch dimension)."""
    dims = list(range(1, pred_cfg.ndim))
    ratio = pred_cond.std(dim=dims, keepdim=True) / pred_cfg.std(dim=dims, keepdim=True)
    # x_rescaled = x_cfg std(x_pos) / std(x_cfg);  x_final = phi x_rescaled + (1 - phi) x_cfg
    return phi * (pred_cfg * ratio) + (1 - phi) * pred_cfg


class ClassifierFreeScore:
    """score_fn(x, t) = (1 - w) s(x, t, null) + w s(x, t, cond); see `classifier_free_score`."""

    def __init__(self, score_model: Callable, y: Any, w: float, num_classes: int | None, uncond: Cond | None = None,
                 *, prompt: list[str] | None = None, negative_prompt: list[str] | None = None,
                 guidance_rescale: float = 0.0, rescale_on: str = "eps"):
        self.score_model, self.y, self.w, self.num_classes, self.uncond = score_model, y, w, num_classes, uncond
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.guidance_rescale, self.rescale_on = guidance_rescale, rescale_on
        self._encoded: tuple[Any, tuple[Cond, Cond]] | None = None

    @property
    def data_shape(self):
        return getattr(self.score_model, "data_shape", None)

    def _encoder_state(self) -> tuple:
        """What the cached encodings depend on besides the batch: the encoder's weights (their in-place
        version counters, bumped by every optimiser step and load), its training mode and its plain settings
        (e.g. SDXL's sizes and crop)."""
        enc = self.score_model.text_encoder
        settings = tuple(sorted((k, repr(v)) for k, v in vars(enc).items()
                                if not k.startswith("_") and isinstance(v, (bool, int, float, str, tuple, list))))
        return (settings, tuple(p._version for p in enc.parameters()))

    def _prompt_conditions(self, batch: int, device: Any) -> tuple[Cond, Cond]:
        """(the prompts' Cond, the null branch's) for `batch` rows, encoded once and cached: a sampler calls
        the score with one batch at every step, so the text encoder runs once per sampler call."""
        key = (batch, str(device), self._encoder_state())
        if self._encoded is None or self._encoded[0] != key:
            enc = self.score_model.text_encoder
            with torch.no_grad():
                cond = enc.encode(_prompt_batch(self.prompt, batch, "prompt"))
                neg = _prompt_batch(self.negative_prompt, batch, "negative_prompt")
                null = enc.encode(neg) if neg is not None else enc.null(batch)
            self._encoded = (key, _same_length(cond.to(device), null.to(device)))
        return self._encoded[1]

    def conditions(self, batch: int, device: Any) -> tuple[Cond, Cond]:
        """(the condition, the unconditional one) for a batch of `batch` rows on `device`."""
        if self.prompt is not None:
            return self._prompt_conditions(batch, device)
        if isinstance(self.y, Cond):
            cond = self.y.expand(batch).to(device)
        else:
            cond = Cond(labels=batch_labels(self.y, batch, device))
        null = cond.null_like(self.num_classes) if self.uncond is None else self.uncond.expand(batch).to(device)
        return cond, null

    def __call__(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        B = x.shape[0]
        cond, null = self.conditions(B, x.device)
        t = as_time(t, x)
        # one network call on the doubled batch [x; x] with conditions [cond; null] (labels alone: y=labels)
        s = call_conditional(self.score_model, torch.cat([x, x]), torch.cat([t, t]), Cond.cat(cond, null))
        s_cond, s_uncond = s[:B], s[B:]
        # s_w = (1 - w) s(x, t, null) + w s(x, t, y) = s_null + w (s_y - s_null)   (Ho & Salimans 2022, eq. 6)
        s_w = s_uncond + self.w * (s_cond - s_uncond)
        if not self.guidance_rescale:
            return s_w
        return self._rescaled(s_w, s_cond, x, t)

    def _rescaled(self, s_w: torch.Tensor, s_cond: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Guidance rescale applied to the prediction `rescale_on` (eps, x0 or v) derived from the scores, then
        converted back. On eps it acts on the score itself: eps = -sigma s is the score scaled per sample, and
        the rescale is invariant to that scale."""
        phi = self.guidance_rescale
        if self.rescale_on == "eps":
            return rescale_guidance(s_w, s_cond, phi)
        alpha, sigma = self.score_model.sde.marginal_coefs(t)
        a, sg = append_dims(alpha, x.ndim), append_dims(sigma, x.ndim)

        def pred(s):                       # x0 = (x + sigma^2 s) / alpha;  v = alpha eps - sigma x0, eps = -sigma s
            x0 = (x + sg ** 2 * s) / a
            return x0 if self.rescale_on == "x0" else a * (-sg * s) - sg * x0
        p = rescale_guidance(pred(s_w), pred(s_cond), phi)
        x0 = p if self.rescale_on == "x0" else (a * x - sg * p) / (a ** 2 + sg ** 2)     # x0 from v
        return (a * x0 - x) / sg ** 2                                                   # score from x0

    def __repr__(self) -> str:
        what = f", prompt={self.prompt!r}" if self.prompt is not None else ""
        return f"classifier_free_score({self.score_model!r}, w={self.w}{what})"


def classifier_free_score(score_model: Callable, y: Any = None, w: float | None = None, *,
                          prompt: str | Sequence[str] | None = None, negative_prompt: str | Sequence[str] | None = None,
                          guidance_rescale: float = 0.0, rescale_on: str = "eps", num_classes: int | None = None,
                          uncond: Cond | None = None) -> ClassifierFreeScore:
    """The classifier-free guided score function score_fn(x, t) for the condition `y` or `prompt` and weight `w`.

    Args:
        score_model: a conditional score model (e.g. a `ScoreModel`), called as score_model(x, t, y=labels)
            for labels alone (the label protocol: labels (B,) long with the null label K, e.g. a net built
            with num_classes=K) and as score_model(x, t, cond) for any other `Cond`.
        y: the condition: a requested class, an int in [0, K) for the whole batch or a (B,) long tensor,
            or a `Cond` (batch 1, broadcast, or the batch of x; its labels in [0, K)). Not with `prompt`.
        w: guidance weight; 0 = unconditional, 1 = conditional, > 1 = guided (w >= 0 expected, any
            finite w accepted).
        prompt: text, for a model with a `text_encoder`: one prompt for every row, or a list of prompts (one
            per row of x, or one, broadcast). Encoded once per batch size (cached across a sampler's steps).
        negative_prompt: the unconditional branch's text (same rules); default `text_encoder.null(B)`
            (the encoding of "", or the encoder's own null condition).
        guidance_rescale: phi of guidance rescale (Lin et al. 2024, arXiv:2305.08891, Sec. 3.4) in [0, 1]; 0 off.
        rescale_on: the prediction it rescales, "eps" (diffusers' epsilon models; equal to rescaling the score),
            "v" (v-prediction models, where diffusers rescales v) or "x0".
        num_classes: K, default `score_model.num_classes` (needed for labels only).
        uncond: the unconditional condition (same fields as the condition, e.g. a negative prompt's
            encoding); default `cond.null_like(K)`: the null label K, zero context with no token, the
            image condition kept.
    Each call evaluates the network ONCE on a doubled batch (conditional and unconditional halves
    concatenated), so a sampler's NFE counts network calls of batch 2B.
    """
    check_fn(score_model, "score_model")
    if w is None:
        raise TypeError("w: expected the guidance weight (a number), found none")
    w = check_real("w", w)
    phi = check_real("guidance_rescale", guidance_rescale)
    if not 0.0 <= phi <= 1.0:
        raise ValueError(f"guidance_rescale: expected phi in [0, 1], found {guidance_rescale!r}")
    rescale_on = check_choice("rescale_on", rescale_on, RESCALE_SPACES)
    if phi and rescale_on != "eps" and getattr(score_model, "sde", None) is None:
        raise ValueError(f"rescale_on: {rescale_on!r} needs a score model with an `sde` (its alpha, sigma), found "
                         f"{type(score_model).__name__}")
    if prompt is not None or negative_prompt is not None:
        if prompt is None:
            raise ValueError("negative_prompt: expected together with prompt, found prompt=None")
        if y is not None or uncond is not None:
            raise ValueError(f"{'y' if y is not None else 'uncond'}: a prompt is the condition; pass either y/uncond "
                             "or prompt/negative_prompt, found both")
        if getattr(score_model, "text_encoder", None) is None:
            raise ValueError("prompt: expected a text-conditional model (a ScoreModel with a text_encoder), found "
                             f"{type(score_model).__name__} without one")
        prompts = check_prompts(prompt, "prompt")
        negative = None if negative_prompt is None else check_prompts(negative_prompt, "negative_prompt")
        if negative is not None and len(negative) not in (1, len(prompts)) and len(prompts) != 1:
            raise ValueError(f"negative_prompt: expected 1 prompt or {len(prompts)} (as many as prompt), found "
                             f"{len(negative)}")
        return ClassifierFreeScore(score_model, None, w, num_classes, None, prompt=prompts, negative_prompt=negative,
                                   guidance_rescale=phi, rescale_on=rescale_on)
    if y is None:
        raise TypeError("y: expected the condition (class labels or a Cond) or prompt=..., found neither")
    labels = not isinstance(y, Cond) or y.labels is not None
    K = check_num_classes(num_classes, score_model) if labels else num_classes
    if isinstance(y, Cond):
        if y.labels is not None:
            check_labels(y.labels, None, K, allow_null=False)
    else:
        y = validated_labels(y, K)
    if uncond is not None:
        if not isinstance(uncond, Cond):
            raise TypeError(f"uncond: expected a Cond or None, found {type(uncond).__name__}")
        if uncond.labels is not None:
            check_labels(uncond.labels, None, check_num_classes(K, score_model), allow_null=True)
    return ClassifierFreeScore(score_model, y, w, K, uncond, guidance_rescale=phi, rescale_on=rescale_on)


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
            y = batch_labels(self.y, x.shape[0], x.device)
            log_p = F.log_softmax(logits.float() if logits.dtype == torch.float16 else logits, 1)
            grad, = torch.autograd.grad(log_p.gather(1, y[:, None]).sum(), xg)
        return grad.to(x.dtype)

    def __call__(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        # s(x, t) + scale grad_x log p(y | x_t, t)   (Dhariwal & Nichol 2021, Sec. 4.1; Song et al. 2021, eq. 14)
        return self.score_fn(x, t) + self.scale * self.log_prob_grad(x, t)


def classifier_guided_score(score_fn: Callable, classifier: Callable, y: Any,
                            scale: float = 1.0) -> ClassifierGuidedScore:
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
    check_fn(score_fn, "score_fn")
    check_fn(classifier, "classifier")
    scale = check_real("scale", scale)
    if isinstance(y, bool) or not isinstance(y, (int, torch.Tensor)):
        raise TypeError(f"y: expected an int or a (B,) integer tensor of class labels, found {type(y).__name__}")
    K = getattr(classifier, "num_classes", None)      # without it, labels are checked by the gather
    y = validated_labels(y, K if K is not None else 2 ** 62)
    return ClassifierGuidedScore(score_fn, classifier, y, scale)
