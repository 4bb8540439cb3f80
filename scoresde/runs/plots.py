"""Plots for training runs (matplotlib, Agg backend): samples vs data, image grids, the loss curve.

Non-finite samples are refused with one clear error (`NonFiniteError`, a ValueError) before
matplotlib is reached ("Axis limits cannot be NaN or Inf" is all it would say).
"""
from __future__ import annotations

import csv
import io
import math
import os

import numpy as np
import torch

from typing import Any, Sequence
from scoresde._common.finite import check_finite
from scoresde._common.files import atomic_write_bytes, save_npy


__all__ = ["plot_samples", "scatter_2d", "image_grid", "inpainting_grid", "pair_rows", "plot_loss", "is_image_shape",
           "save_samples", "sample_metrics", "plot_texts"]


def _finite(name: str, x: torch.Tensor | None) -> None:
    if x is not None:
        check_finite(name, x.detach(), "values to plot")


def _figure():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _figure().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def is_image_shape(shape) -> bool:
    """(C, H, W) with C in {1, 3, 4}, or (H, W): plotted as images."""
    shape = tuple(shape)
    return (len(shape) == 3 and shape[0] in (1, 3, 4) and min(shape[1:]) > 1) or (len(shape) == 2 and min(shape) > 2)


def scatter_2d(samples: torch.Tensor, path: str, data: torch.Tensor | None = None, title: str = "") -> None:
    """Scatter of the first two coordinates of samples (and of the data, side by side)."""
    _finite("samples", samples)
    _finite("data", data)
    plt = _figure()
    panels = [("data", data), ("samples", samples)] if data is not None else [("samples", samples)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    pts = [p.detach().float().flatten(1).cpu().numpy() for _, p in panels]
    both = np.concatenate(pts)
    lo, hi = np.percentile(both[:, :2], 0.5, axis=0), np.percentile(both[:, :2], 99.5, axis=0)
    pad = 0.1 * (hi - lo) + 1e-3
    for ax, (name, _), p in zip(axes[0], panels, pts):
        y = p[:, 1] if p.shape[1] > 1 else np.zeros(len(p))
        ax.scatter(p[:, 0], y, s=2, alpha=0.5, linewidths=0)
        ax.set_title(f"{name} ({len(p)})")
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        if p.shape[1] > 1:
            ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_aspect("equal" if p.shape[1] > 1 else "auto")
    if title:
        fig.suptitle(title)
    _save(fig, path)


def image_grid(images: torch.Tensor, path: str, nrow: int | None = None, title: str = "") -> None:
    """A grid of images (B, C, H, W) or (B, H, W) in [-1, 1] (clipped)."""
    _finite("images", images)
    plt = _figure()
    x = images.detach().float().cpu()
    if x.ndim == 3:
        x = x[:, None]
    x = ((x.clamp(-1, 1) + 1) / 2)[:, :3]                                    # [-1, 1] -> [0, 1]
    B, C, H, W = x.shape
    nrow = nrow or math.ceil(math.sqrt(B))
    ncol = math.ceil(B / nrow)
    grid = torch.ones(C, ncol * (H + 1) + 1, nrow * (W + 1) + 1)
    for i in range(B):
        r, c = divmod(i, nrow)
        grid[:, 1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W] = x[i]
    img = grid.permute(1, 2, 0).numpy()
    fig, ax = plt.subplots(figsize=(min(12, 0.08 * img.shape[1] + 1), min(12, 0.08 * img.shape[0] + 1)))
    ax.imshow(img[..., 0] if C == 1 else img, cmap="gray" if C == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
    _save(fig, path)


def plot_samples(samples: torch.Tensor, path: str, data: torch.Tensor | None = None, title: str = "") -> None:
    """Image grid for image-shaped samples (at most 64 shown), otherwise a 2-D scatter."""
    if is_image_shape(samples.shape[1:]):
        image_grid(samples[:64], path, title=title)
    else:
        scatter_2d(samples, path, data=None if data is None else data[: len(samples)], title=title)


def pair_rows(known: torch.Tensor, mask: torch.Tensor, filled: torch.Tensor, max_pairs: int = 32,
              max_cols: int = 8) -> tuple[torch.Tensor, int]:
    """(images, columns) for an inpainting grid: each row of known images (unknown entries -1, black)
    directly above the row of their fills; a last short row is padded with white (1)."""
    n = min(len(filled), max_pairs)
    shown = torch.where(mask[:n].bool(), known[:n], torch.full_like(known[:n], -1.0))
    cols = min(max_cols, n)
    rows = []
    for lo in range(0, n, cols):
        for part in (shown[lo:lo + cols], filled[lo:lo + cols].to(shown)):
            rows += [part, torch.ones((cols - len(part), *part.shape[1:]), dtype=part.dtype)]
    return torch.cat(rows), cols


def inpainting_grid(known: torch.Tensor, mask: torch.Tensor, filled: torch.Tensor, path: str,
                    title: str = "", max_pairs: int = 32) -> None:
    """Inpainting results in pairs of rows: known images (unknown entries black), then their fills."""
    _finite("filled", filled)
    images, cols = pair_rows(known, mask, filled, max_pairs)
    image_grid(images, path, nrow=cols, title=title)


def save_samples(samples: torch.Tensor, path: str, title: str = "", known: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None) -> None:
    """Samples to `path`: a .npy file of the array, else a figure (`plot_samples`); inpainted images (`known`
    and `mask` given) as pairs of rows, the known images above their fills (`inpainting_grid`)."""
    if path.lower().endswith(".npy"):
        save_npy(path, samples)
    elif known is not None and is_image_shape(samples.shape[1:]):
        inpainting_grid(known, mask, samples, path, title=title + "; rows: known, filled")
    else:
        plot_samples(samples, path, title=title)


def plot_loss(csv_path: str, path: str) -> None:
    """Loss against step from a training log (log scale when the loss is positive)."""
    if not os.path.exists(csv_path):
        return
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("loss") not in (None, "", "nan")]
    if not rows:
        return
    plt = _figure()
    steps = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss)
    if all(v > 0 for v in loss):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    _save(fig, path)


def sample_metrics(model, x: torch.Tensor) -> dict[str, Any]:
    """Exact validity (built-in languages), distinct fraction and mean length (tokens before EOS) of samples
    x (n, L) of a `MaskedLM` / `AutoregressiveLM`."""
    texts = model.decode(x)
    out: dict[str, Any] = {"n": len(texts), "distinct_fraction": round(len(set(texts)) / max(len(texts), 1), 4)}
    if model.eos_id is not None:
        eos = x == model.eos_id
        length = torch.where(eos.any(1), eos.long().argmax(1), torch.full_like(eos[:, 0], x.shape[1], dtype=torch.long))
        out["mean_length"] = round(float(length.float().mean()), 3)
    valid = model.is_valid(x)
    if valid is not None:
        out["valid_fraction"] = round(sum(valid) / max(len(valid), 1), 4)
    return out


def plot_texts(texts: Sequence[str], path: str, valid: Sequence[bool] | None = None, title: str = "",
               rows: int = 32) -> None:
    """The first `rows` texts in a monospace column (green: valid, red: invalid, when known) as a PNG."""
    plt = _figure()
    shown = list(texts)[:rows]
    width = max([len(s) for s in shown] + [len(title) // 2, 20])
    fig = plt.figure(figsize=(min(0.11 * width + 1.0, 16), 0.24 * len(shown) + 0.8))
    for i, s in enumerate(shown):
        color = "black" if valid is None else ("tab:green" if valid[i] else "tab:red")
        fig.text(0.02, 1 - (i + 1.5) / (len(shown) + 2), s.replace("$", r"\$") or "(empty)", family="monospace",
                 fontsize=9, color=color)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
