"""What a score model is conditioned on: the `Cond` container and class-label validation.

A condition travels as ONE object, `Cond`, with named optional fields (as k-diffusion's conditioning
keys), so a new kind of conditioning changes no sampler and no guidance code: samplers only ever see
`score_fn(x, t)`; a network reads the fields it was built for and refuses the others.

- `labels` (B,) long: class labels in [0, K) for K classes; index K = `num_classes` is the null label
  (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", arXiv:2207.12598).
- `context` (B, L, D) float with `context_mask` (B, L) bool (True = a real token, False = padding): a
  token sequence for cross-attention, e.g. a text encoder's hidden states (LDM, Rombach et al. 2022,
  arXiv:2112.10752, Sec. 3.3).
- `image` (B, C, h, w) float with `image_level` (B,) float: an image condition (the low-resolution
  image of a super-resolution stage, SR3 arXiv:2104.07636) and the level s of its noise
  augmentation (Cascaded Diffusion Models, Ho et al. 2021, arXiv:2106.15282).
- `pooled` (B, P) float: one vector per prompt beside the token sequence (SDXL's pooled text embedding,
  `text_embeds`; Podell et al. 2023, arXiv:2307.01952, Sec. 2.1), and `micro` (B, M) float: size
  micro-conditioning (SDXL's `time_ids`: original size, crop top-left, target size; Sec. 2.2).

The unconditional branch of classifier-free guidance is `cond.null_like(K)`: labels -> K, context and
pooled -> zeros (context with an all-False mask), the image condition and micro-conditioning kept (see
`Cond.null_like`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from scoresde._common.tensors import append_dims
from scoresde._common.validation import check_int


__all__ = ["Cond", "as_cond", "call_conditional", "ConditionedScore", "check_num_classes", "check_labels", "validated_labels",
           "batch_labels"]


# --- validation -----------------------------------------------------------------------------------
def check_num_classes(num_classes: Any, owner: Any = None) -> int:
    """K from the argument, else from `owner.num_classes` (a ScoreModel / network / classifier)."""
    if num_classes is None:
        num_classes = getattr(owner, "num_classes", None)
        if num_classes is None:
            raise ValueError("num_classes: expected an int >= 1 (or a model with a `num_classes` attribute), "
                             "found None")
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


# --- the conditioning object ----------------------------------------------------------------------
_FIELDS = {  # name: (rank, None = any >= 2; dtype kind; what is expected)
    "labels": (1, "integer", "(B,) integer tensor of class labels"),
    "context": (3, "float", "(B, L, D) floating-point tensor (a token sequence)"),
    "context_mask": (2, "bool", "(B, L) bool tensor (True = token, False = padding)"),
    "image": (None, "float", "(B, C, h, w) floating-point tensor"),
    "image_level": (1, "float", "(B,) floating-point tensor of noise-augmentation levels"),
    "pooled": (2, "float", "(B, P) floating-point tensor (a pooled text embedding)"),
    "micro": (2, "float", "(B, M) floating-point tensor (size micro-conditioning, e.g. SDXL's time_ids)"),
}


def _kind(v: torch.Tensor) -> str:
    return ("bool" if v.dtype == torch.bool else "float" if v.is_floating_point()
            else "complex" if v.is_complex() else "integer")


@dataclasses.dataclass(frozen=True, eq=False)
class Cond:
    """A batch of conditions: optional named fields, validated at construction, never mutated.

    Fields (each None or a tensor whose first dim is the batch B, the same B for all):
        labels: (B,) integer class labels in [0, K], K = the null label; an int is one label (batch 1).
        context: (B, L, D) float token sequence (e.g. a text encoder's hidden states).
        context_mask: (B, L) bool, True where `context` holds a token (None: every position does).
        image: (B, C, h, w) float image condition (any rank >= 2).
        image_level: (B,) float noise-augmentation level of `image`; a number is used for every row.
        pooled: (B, P) float pooled embedding of the prompt (SDXL's `text_embeds`).
        micro: (B, M) float micro-conditioning (SDXL's `time_ids`, M = 6).
    A batch-1 condition is broadcast to a batch by `expand` (ScoreModel does it). `Cond()` (no field) is
    the unconditional call, as `cond=None`. Label ranges are checked where K is known (the network,
    guidance), not here.
    """

    labels: torch.Tensor | None = None
    context: torch.Tensor | None = None
    context_mask: torch.Tensor | None = None
    image: torch.Tensor | None = None
    image_level: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    micro: torch.Tensor | None = None

    def __post_init__(self):
        for dep, on in (("context_mask", "context"), ("image_level", "image")):
            if getattr(self, dep) is not None and getattr(self, on) is None:
                raise ValueError(f"{dep}: expected together with {on}, found {on}=None")
        if isinstance(self.labels, int) and not isinstance(self.labels, bool):
            object.__setattr__(self, "labels", torch.tensor([self.labels]))
        level = self.image_level
        if isinstance(level, (int, float)) and not isinstance(level, bool) and isinstance(self.image, torch.Tensor):
            object.__setattr__(self, "image_level", torch.full(self.image.shape[:1], float(level),
                                                               dtype=self.image.dtype, device=self.image.device))
        for name, (rank, kind, what) in _FIELDS.items():
            v = getattr(self, name)
            if v is None:
                continue
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"{name}: expected a {what}, found {type(v).__name__}")
            if _kind(v) != kind:
                raise TypeError(f"{name}: expected a {what}, found dtype {v.dtype}")
            if (v.ndim != rank) if rank else v.ndim < 2:
                raise ValueError(f"{name}: expected a {what}, found shape {tuple(v.shape)}")
        if self.context_mask is not None and self.context_mask.shape != self.context.shape[:2]:
            raise ValueError(f"context_mask: expected shape {tuple(self.context.shape[:2])} (B, L of context), "
                             f"found {tuple(self.context_mask.shape)}")
        batches = {k: v.shape[0] for k, v in self.items()}
        if len(set(batches.values())) > 1:
            raise ValueError("Cond: expected one batch size B for every field, found "
                             + ", ".join(f"{k} {b}" for k, b in batches.items()))

    # --- views ------------------------------------------------------------------------------------
    def keys(self) -> tuple[str, ...]:
        """The names of the fields that are set, in field order."""
        return tuple(k for k in _FIELDS if getattr(self, k) is not None)

    def items(self) -> tuple[tuple[str, torch.Tensor], ...]:
        return tuple((k, getattr(self, k)) for k in self.keys())

    @property
    def batch_size(self) -> int | None:
        """B, or None for the empty `Cond()`."""
        return next((v.shape[0] for _, v in self.items()), None)

    @property
    def device(self) -> torch.device | None:
        """The device of the first field set, or None for the empty `Cond()`."""
        return next((v.device for _, v in self.items()), None)

    def __repr__(self) -> str:
        return "Cond(" + ", ".join(f"{k}={tuple(v.shape)} {v.dtype}" for k, v in self.items()) + ")"

    def _map(self, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> Cond:
        return Cond(**{k: fn(k, v) for k, v in self.items()})

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> Cond:
        """On `device`, floating-point fields cast to `dtype` (labels and masks keep theirs); `to(dtype)` too."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        return self._map(lambda k, v: v.to(device=device, dtype=dtype if v.is_floating_point() else None))

    def expand(self, batch: int) -> Cond:
        """The condition for `batch` rows: a batch-1 condition broadcast (views), one of that batch itself."""
        B = self.batch_size
        if B is None or B == batch:
            return self
        if B != 1:
            raise ValueError(f"cond: expected a batch of 1 or {batch} (the batch of x), found {B}")
        return self._map(lambda k, v: v.expand(batch, *v.shape[1:]))

    # --- classifier-free guidance -------------------------------------------------------------------
    def null_like(self, num_classes: int | None = None) -> Cond:
        """The unconditional condition of the same batch, the branch classifier-free guidance moves away from.

        labels -> the null label K = `num_classes` (needed when labels are set: the network's class table
        keeps its null row K, so old weights stay valid); context -> zeros with an all-False mask (no
        token, as diffusers' `force_zeros_for_empty_prompt`; a text pipeline passes the encoding of "" or
        of a negative prompt as its own unconditional Cond instead); pooled -> zeros (the same SDXL rule);
        image, image_level and micro are KEPT: in a cascade the low-resolution image is what is being
        upsampled, not what guidance amplifies, so both branches see it and guidance acts on the class /
        text only; SDXL's size conditioning is the same in both branches (diffusers' default).
        """
        out = dict(self.items())
        if self.labels is not None:
            if num_classes is None:
                raise ValueError("num_classes: expected the network's null label index K (an int >= 1) to null "
                                 "labels, found None")
            out["labels"] = torch.full_like(self.labels, check_int("num_classes", num_classes))
        if self.context is not None:
            out["context"] = torch.zeros_like(self.context)
            out["context_mask"] = torch.zeros(self.context.shape[:2], dtype=torch.bool, device=self.context.device)
        if self.pooled is not None:
            out["pooled"] = torch.zeros_like(self.pooled)
        return Cond(**out)

    def is_null(self, num_classes: int | None = None) -> torch.Tensor:
        """(B,) bool: the rows that are the null condition (labels == K and a context without any token; the
        image condition, pooled and micro do not count). A 0-dim True for the empty `Cond()`."""
        rows = []
        if self.labels is not None:
            rows.append(self.labels == check_num_classes(num_classes))
        if self.context is not None:
            mask = self.context_mask
            rows.append(~mask.any(1) if mask is not None else torch.zeros_like(self.context[:, 0, 0], dtype=torch.bool))
        if not rows:
            B = self.batch_size
            return torch.ones(() if B is None else (B,), dtype=torch.bool, device=self.device)
        return rows[0] if len(rows) == 1 else rows[0] & rows[1]

    @staticmethod
    def cat(*conds: Cond) -> Cond:
        """The conditions stacked along the batch, e.g. `Cond.cat(cond, cond.null_like(K))` for one batched
        guidance call. Every one must set the same fields (a missing context_mask counts as all True)."""
        conds = _aligned(conds, "conds")
        return Cond(**{k: torch.cat([c[k] for c in conds]) for k in conds[0]})

    def where(self, keep: torch.Tensor, other: Cond) -> Cond:
        """Row-wise choice as `torch.where(keep, self, other)`: row i of self where keep[i], else of other (same
        fields, same batch); label dropout is `cond.where(~drop, cond.null_like(K))`."""
        if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool or keep.shape != (self.batch_size,):
            found = f"{keep.dtype} {tuple(keep.shape)}" if isinstance(keep, torch.Tensor) else type(keep).__name__
            raise ValueError(f"keep: expected a ({self.batch_size},) bool tensor, found {found}")
        a, b = _aligned((self, other), "other")
        if other.batch_size != self.batch_size:
            raise ValueError(f"other: expected a Cond of batch {self.batch_size}, found {other.batch_size}")
        return Cond(**{k: torch.where(append_dims(keep, v.ndim), v, b[k]) for k, v in a.items()})


def _aligned(conds, name: str) -> list[dict[str, torch.Tensor]]:
    """Fields of each Cond as dicts with the same keys (masks filled with True) and the same per-row shapes."""
    if not conds or not all(isinstance(c, Cond) for c in conds):
        raise TypeError(f"{name}: expected Cond objects, found {[type(c).__name__ for c in conds]}")
    masked = any(c.context_mask is not None for c in conds)
    out = []
    for c in conds:
        d = dict(c.items())
        if masked and c.context is not None and c.context_mask is None:
            d["context_mask"] = torch.ones(c.context.shape[:2], dtype=torch.bool, device=c.context.device)
        out.append({k: d[k] for k in _FIELDS if k in d})
    for d in out[1:]:
        if tuple(d) != tuple(out[0]):
            raise ValueError(f"{name}: expected the same fields in every Cond, found {tuple(out[0])} and {tuple(d)}")
        for k, v in d.items():
            if v.shape[1:] != out[0][k].shape[1:]:
                raise ValueError(f"{k}: expected the same shape after the batch in every Cond, found "
                                 f"{tuple(out[0][k].shape[1:])} and {tuple(v.shape[1:])}")
    return out


def as_cond(cond: Any = None, y: Any = None) -> Cond | None:
    """The condition of a call: a Cond, or None for the unconditional call (also for `Cond()`). Class labels
    where the condition goes, an int or a (B,) integer tensor, positionally or through the former keyword
    `y=`, become `Cond(labels=...)`, so `model(x, t, labels)` and `model(x, t, y=labels)` keep working."""
    if y is not None:
        if cond is not None:
            raise TypeError("y: the former label keyword and cond exclude each other, found both; pass cond only")
        cond = y
    if cond is None or isinstance(cond, Cond):
        return cond if cond is not None and cond.keys() else None
    if isinstance(cond, bool) or not isinstance(cond, (int, torch.Tensor)):
        raise TypeError(f"cond: expected a Cond, class labels (an int or a (B,) integer tensor) or None, "
                        f"found {type(cond).__name__}")
    return Cond(labels=cond)


def call_conditional(fn: Callable, x: torch.Tensor, t: torch.Tensor, cond: Cond | None) -> torch.Tensor:
    """fn(x, t) without a condition, fn(x, t, y=labels) for labels alone (the label protocol every
    class-conditional score model here follows, ScoreModel included), else fn(x, t, cond)."""
    if cond is None or not cond.keys():
        return fn(x, t)
    if cond.keys() == ("labels",):
        return fn(x, t, y=cond.labels)
    return fn(x, t, cond)


class ConditionedScore:
    """score_fn(x, t) = model(x, t, cond): a model's score under one fixed condition (batch-1 or one row per row of
    x), with the model's `data_shape`, for samplers that take score_fn(x, t)."""

    def __init__(self, model: Callable, cond: Any):
        self.model, self.cond = model, cond

    @property
    def data_shape(self):
        return getattr(self.model, "data_shape", None)

    def __call__(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        return self.model(x, t, self.cond)

    def __repr__(self) -> str:
        return f"conditioned({self.model!r}, {self.cond!r})"
