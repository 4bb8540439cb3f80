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

Labels are (B,) long tensors in [0, K) for K classes; index K = `num_classes` is the null label. Any
other condition is a `Cond` (scoresde/models/conditioning.py), its unconditional branch `Cond.null_like`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from scoresde._common.validation import check_fn
from scoresde._common.tensors import as_time
from scoresde._common.validation import check_real
from scoresde.models.conditioning import (Cond, batch_labels, call_conditional, check_labels, check_num_classes,
                                          validated_labels)


__all__ = ["classifier_free_score", "ClassifierFreeScore", "classifier_guided_score", "ClassifierGuidedScore"]




class ClassifierFreeScore:
    """score_fn(x, t) = (1 - w) s(x, t, null) + w s(x, t, cond); see `classifier_free_score`."""

    def __init__(self, score_model: Callable, y: Any, w: float, num_classes: int | None, uncond: Cond | None = None):
        self.score_model, self.y, self.w, self.num_classes, self.uncond = score_model, y, w, num_classes, uncond

    @property
    def data_shape(self):
        return getattr(self.score_model, "data_shape", None)

    def conditions(self, batch: int, device: Any) -> tuple[Cond, Cond]:
        """(the condition, the unconditional one) for a batch of `batch` rows on `device`."""
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
        return s_uncond + self.w * (s_cond - s_uncond)

    def __repr__(self) -> str:
        return f"classifier_free_score({self.score_model!r}, w={self.w})"


def classifier_free_score(score_model: Callable, y: Any, w: float, *, num_classes: int | None = None,
                          uncond: Cond | None = None) -> ClassifierFreeScore:
    """The classifier-free guided score function score_fn(x, t) for the condition `y` and weight `w`.

    Args:
        score_model: a conditional score model (e.g. a `ScoreModel`), called as score_model(x, t, y=labels)
            for labels alone (the label protocol: labels (B,) long with the null label K, e.g. a net built
            with num_classes=K) and as score_model(x, t, cond) for any other `Cond`.
        y: the condition: a requested class, an int in [0, K) for the whole batch or a (B,) long tensor,
            or a `Cond` (batch 1, broadcast, or the batch of x; its labels in [0, K)).
        w: guidance weight; 0 = unconditional, 1 = conditional, > 1 = guided (w >= 0 expected, any
            finite w accepted).
        num_classes: K, default `score_model.num_classes` (needed for labels only).
        uncond: the unconditional condition (same fields as the condition, e.g. a negative prompt's
            encoding); default `cond.null_like(K)`: the null label K, zero context with no token, the
            image condition kept.
    Each call evaluates the network ONCE on a doubled batch (conditional and unconditional halves
    concatenated), so a sampler's NFE counts network calls of batch 2B.
    """
    check_fn(score_model, "score_model")
    labels = not isinstance(y, Cond) or y.labels is not None
    K = check_num_classes(num_classes, score_model) if labels else num_classes
    w = check_real("w", w)
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
    return ClassifierFreeScore(score_model, y, w, K, uncond)


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
