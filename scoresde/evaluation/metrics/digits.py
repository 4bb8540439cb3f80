"""The `digits` feature network: a small CNN classifier of scikit-learn's 8x8 digits, shipped with the package.

It plays the part that Inception-v3 plays for FID on natural images (Heusel et al. 2017,
arXiv:1706.08500): FID, KID and precision/recall are computed in its penultimate features (64
numbers per image: the pre-activation of the last hidden layer), and the class accuracy of
class-conditional samples from its logits. It reads images exactly as scoresde trains on them:
(B, 1, 8, 8) in [-1, 1] (`scoresde.data`'s `digits`, 0..16 -> x / 8 - 1); samples are clipped to
[-1, 1] first. The weights (`digits_classifier.safetensors`, beside this file) come from
`python -m scoresde.evaluation.metrics.train_digits`, trained on the fixed split of `digits_split`: the first
20% of the 1797 images (359) held out, the other 1438 for training.
"""
from __future__ import annotations

import json
import os

import torch
import torch.nn as nn
from scoresde.data.datasets import load_dataset

__all__ = ["DigitsClassifier", "digits_split", "load_digits_classifier", "DIGITS_WEIGHTS"]

DIGITS_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_classifier.safetensors")


class DigitsClassifier(nn.Module):
    """conv 3x3 (w) x2 -> pool -> conv 3x3 (2w) -> pool -> linear (features) -> ReLU -> linear (10).

    `forward(x)` on (B, 1, 8, 8) in [-1, 1] returns (features (B, features), logits (B, 10)).
    """

    def __init__(self, width: int = 16, features: int = 64, classes: int = 10, dropout: float = 0.3):
        super().__init__()
        self.config = dict(width=width, features=features, classes=classes, dropout=dropout)
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),            # (B, w, 4, 4)
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),        # (B, 2w, 2, 2)
            nn.Flatten(), nn.Linear(8 * w, features))                             # penultimate features
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(features, classes))
        self.dims = features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(x.to(self.head[-1].weight.dtype).clamp(-1, 1))
        return f, self.head(f)


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test) of the built-in digits: the first 20% (359) held out, in [-1, 1]."""
    ds = load_dataset("digits")
    n_test = len(ds) // 5
    return ds.x[n_test:], ds.labels[n_test:], ds.x[:n_test], ds.labels[:n_test]


def load_digits_classifier(path: str | None = None, device=None) -> DigitsClassifier:
    """The shipped classifier (or one saved by `train_digits` at `path`), in eval mode."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    path = path or DIGITS_WEIGHTS
    if not os.path.isfile(path):
        raise FileNotFoundError(f"digits classifier {path!r}: no such file (train one with "
                                f"python -m scoresde.evaluation.metrics.train_digits --out {path})")
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    net = DigitsClassifier(**json.loads(meta.get("config", "{}")))
    net.load_state_dict(load_file(path))
    return net.requires_grad_(False).eval().to(device or "cpu")
