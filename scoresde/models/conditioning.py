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

from typing import Any

import torch

from scoresde._common.validation import check_int


# --- validation -----------------------------------------------------------------------------------
def check_num_classes(num_classes: Any, owner: Any = None) -> int:
    """K from the argument, else from `owner.num_classes` (a ScoreModel / network / classifier)."""
    if num_classes is None:
        num_classes = getattr(owner, "num_classes", None)
        if num_classes is None:
            raise ValueError("num_classes: expected an int >= 1 (or a model with a `num_classes` attribute), found None")
    return check_int("num_classes", num_classes)


def check_labels(y: Any, batch: int | None, num_classes: int, *, allow_null: bool, device=None) -> torch.Tensor:
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


def validated_labels(y: Any, num_classes: int) -> int | torch.Tensor:
    """A requested class: an int in [0, K) (kept an int) or a (B,) integer tensor (as long)."""
    if isinstance(y, int) and not isinstance(y, bool):
        check_labels(y, 1, num_classes, allow_null=False)
        return y
    return check_labels(y, None, num_classes, allow_null=False)


def batch_labels(y: int | torch.Tensor, batch: int, device) -> torch.Tensor:
    """Labels validated at construction, as a (B,) long tensor on `device` (shape checked, no host sync)."""
    if isinstance(y, int):
        return torch.full((batch,), y, dtype=torch.long, device=device)
    if y.shape != (batch,):
        raise ValueError(f"y: expected shape ({batch},) to match the batch of x, found {tuple(y.shape)}")
    return y.to(device)
