"""Feature networks by name and batched feature extraction (CPU or CUDA, with a progress bar).

A `FeatureNet` maps a batch of data (B, *D), as scoresde holds it ([-1, 1] for images), to features
(B, F) and, where the network is a classifier, logits (B, K). Three kinds:
- "inception": the FID Inception-v3 (`inception.py`) from a local weights file; images
  (B, 1 or 3, H, W) in [-1, 1] are quantised to 8 bits as saved samples are (EDM's
  x * 127.5 + 128, clipped to 0..255, rounded down; grey images repeated to 3 channels);
- "digits": the shipped 8x8 digits classifier (`digits.py`), on (B, 1, 8, 8) in [-1, 1];
- any callable `features(x) -> (B, F)` (no logits).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm
from scoresde.evaluation.metrics.inception import load_inception
from scoresde.evaluation.metrics.digits import load_digits_classifier

__all__ = ["FeatureNet", "get_feature_net", "extract_features", "check_input", "FEATURE_NETS", "FEATURE_DIMS"]

FEATURE_NETS = ("inception", "digits")


class FeatureNet:
    """`net(x)` -> (features (B, F), logits (B, K) or None) on a batch x (B, *D)."""

    def __init__(self, name: str, fn: Callable, *, check: Callable | None = None, prepare: Callable | None = None,
                 has_logits: bool = False, batch_size: int = 256, device=None):
        self.name, self.fn, self.check, self.prepare = name, fn, check, prepare
        self.has_logits, self.batch_size, self.device = has_logits, batch_size, device

    def __call__(self, x: torch.Tensor):
        out = self.fn(self.prepare(x) if self.prepare else x)
        feats, logits = out if self.has_logits else (out, None)
        if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or feats.shape[0] != x.shape[0]:
            shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise ValueError(f"features {self.name!r}: expected a tensor (B, F) with B = {x.shape[0]}, found {shape}")
        return feats, logits

    def __repr__(self) -> str:
        return f"FeatureNet({self.name!r})"


def _to_uint8_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> 0..255 integer values (float), grey repeated to RGB; uint8 input is kept."""
    x = x.float() if x.dtype == torch.uint8 else torch.floor(x.float() * 127.5 + 128).clamp(0, 255)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _image_check(name: str, channels: tuple[int, ...], size: tuple[int, int] | None = None):
    def check(shape: tuple[int, ...], what: str = "samples") -> None:
        ok = len(shape) == 3 and shape[0] in channels and (size is None or tuple(shape[1:]) == size)
        if not ok:
            ch, hw = " or ".join(map(str, channels)), "H, W" if size is None else ", ".join(map(str, size))
            raise ValueError(f"{what}: the {name!r} features need images of shape (N, {ch}, {hw}), found "
                             f"examples of shape {tuple(shape)}")
    return check


_CHECKS = {"inception": _image_check("inception", (1, 3)), "digits": _image_check("digits", (1,), (8, 8))}
FEATURE_DIMS = {"inception": 2048, "digits": 64}


def check_input(features, shape: tuple[int, ...], what: str = "samples") -> None:
    """Raise ValueError if examples of `shape` cannot go through the named feature network (before loading it)."""
    name = features.name if isinstance(features, FeatureNet) else features
    if isinstance(name, str) and name in _CHECKS:
        _CHECKS[name](tuple(shape), what)


def get_feature_net(features, *, inception_weights: str | None = None, device=None) -> FeatureNet:
    """A `FeatureNet` by name ("inception", "digits"), or wrapping a callable features(x) -> (B, F)."""
    if isinstance(features, FeatureNet):
        return features
    if callable(features) and not isinstance(features, str):
        return FeatureNet(getattr(features, "__name__", type(features).__name__), features, device=device)
    if features == "inception":
        net = load_inception(inception_weights, device=device)
        return FeatureNet("inception", net, check=_CHECKS["inception"], prepare=_to_uint8_range, has_logits=True,
                          batch_size=64, device=device)
    if features == "digits":
        net = load_digits_classifier(device=device)
        return FeatureNet("digits", net, check=_CHECKS["digits"], has_logits=True, batch_size=1024, device=device)
    raise KeyError(f"features: expected one of {', '.join(FEATURE_NETS)} or a callable features(x) -> (B, F), "
                   f"found {features!r}")


@torch.no_grad()
def extract_features(net, x, *, batch_size: int | None = None, device=None, progress: bool = True,
                     desc: str = "features", what: str = "samples") -> tuple[np.ndarray, np.ndarray | None]:
    """(features (N, F) float64, logits (N, K) float64 or None) of data x (N, *D), in batches.

    `what` names the data in error messages."""
    net = get_feature_net(net, device=device)
    x = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"{what}: expected data of shape (N, *D) with N >= 1, found shape {tuple(x.shape)}")
    if net.check:
        net.check(tuple(x.shape[1:]), what)
    if not torch.isfinite(x.float()).all():
        raise ValueError(f"{what}: {int((~torch.isfinite(x.float())).sum())} values are NaN or infinite")
    device = device or net.device or x.device
    batch_size = batch_size or net.batch_size
    feats, logits = [], []
    for batch in tqdm(x.split(batch_size), desc=desc, disable=not progress, leave=False):
        f, z = net(batch.to(device))
        feats.append(f.double().cpu())
        if z is not None:
            logits.append(z.double().cpu())
    return torch.cat(feats).numpy(), (torch.cat(logits).numpy() if logits else None)
