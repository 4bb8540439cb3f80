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
           "save_samples", "sample_metrics", "metrics_summary", "plot_texts", "save_prompt_grid"]


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


def scatter_2d(samples: torch.Tensor, path: str, data: torch.Tensor | None = None, title: str = "",
               context: torch.Tensor | None = None) -> None:
    """Scatter of the first two coordinates of samples (and of the data, side by side); `context` points (e.g.
    the training data behind class-conditional samples) are drawn in light grey under the samples."""
    _save(scatter_figure(samples, data, title, context), path)


def scatter_figure(samples: torch.Tensor, data: torch.Tensor | None = None, title: str = "",
                   context: torch.Tensor | None = None):
    """The figure of `scatter_2d`: panels on shared limits (0.5 / 99.5 percentiles of everything drawn, context
    included, so a plot of one class still shows where it sits), each as tall as the data's aspect needs
    (no blank band between the title and wide data such as moons)."""
    _finite("samples", samples)
    _finite("data", data)
    _finite("context", context)
    plt = _figure()
    panels = [("data", data), ("samples", samples)] if data is not None else [("samples", samples)]
    pts = [p.detach().float().flatten(1).cpu().numpy() for _, p in panels]
    ctx = None if context is None else context.detach().float().flatten(1).cpu().numpy()
    both = np.concatenate(pts + ([ctx] if ctx is not None else []))
    lo, hi = np.percentile(both[:, :2], 0.5, axis=0), np.percentile(both[:, :2], 99.5, axis=0)
    pad = 0.1 * (hi - lo) + 1e-3
    lo, hi = lo - pad, hi + pad
    width, inner = 4.2, 3.5                       # inches per panel, of which the axes (the rest: tick labels)
    two_d = both.shape[1] > 1
    height = float(np.clip(inner * (hi[1] - lo[1]) / (hi[0] - lo[0]), 1.3, 1.8 * inner)) if two_d else 2.5
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height + (1.2 if title else 0.9)),
                             squeeze=False, layout="constrained")
    for ax, (name, _), p in zip(axes[0], panels, pts):
        if ctx is not None and name == "samples":
            ax.scatter(ctx[:, 0], ctx[:, 1] if two_d else np.zeros(len(ctx)), s=2, c="0.8", linewidths=0,
                       label=f"data ({len(ctx)})")
        y = p[:, 1] if p.shape[1] > 1 else np.zeros(len(p))
        ax.scatter(p[:, 0], y, s=2, alpha=0.5, linewidths=0)
        ax.set_title(f"{name} ({len(p)})" + (", data in grey" if ctx is not None and name == "samples" else ""))
        ax.set_xlim(lo[0], hi[0])
        if two_d:
            ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal" if two_d else "auto")
    if title:
        fig.suptitle(title)
    return fig


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


def save_prompt_grid(path: str, samples: torch.Tensor, prompts: Sequence[str], title: str = "") -> None:
    """Samples of a text-conditional model as a PNG grid: one row per prompt (P, S, C, H, W) in [-1, 1] (clipped),
    the prompt written at the left of its row."""
    if not isinstance(samples, torch.Tensor) or samples.ndim != 5 or samples.shape[2] not in (1, 3, 4):
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise ValueError(f"samples: expected a tensor (P prompts, S samples, C in 1/3/4, H, W), found {shape}")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if len(prompts) != samples.shape[0] or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts: expected {samples.shape[0]} strings (one per row of samples), found "
                         f"{len(prompts)}")
    _finite("samples", samples)
    plt = _figure()
    x = ((samples.detach().float().cpu().clamp(-1, 1) + 1) / 2)[:, :, :3]       # (P, S, C, H, W) in [0, 1]
    P, S, C, H, W = x.shape
    rows = torch.ones(P, C, H, S * (W + 1) - 1)
    for j in range(S):
        rows[..., j * (W + 1):j * (W + 1) + W] = x[:, j]
    width = min(14.0, 0.06 * S * (W + 1) + 0.5)
    label = max(len(p) for p in prompts) * 0.075 + 0.3                           # inches for the prompt text
    fig, axes = plt.subplots(P, 1, figsize=(width + label, max(0.9, 0.06 * H + 0.15) * P + (0.4 if title else 0.1)),
                             squeeze=False)
    for ax, row, prompt in zip(axes[:, 0], rows, prompts):
        img = row.permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if C == 1 else img, cmap="gray" if C == 1 else None, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_ylabel(prompt.replace("$", r"\$") or "(empty prompt)", rotation=0, ha="right", va="center",
                      fontsize=9)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def plot_samples(samples: torch.Tensor, path: str, data: torch.Tensor | None = None, title: str = "",
                 context: torch.Tensor | None = None) -> None:
    """Image grid for image-shaped samples (at most 64 shown; the title then says so), otherwise a 2-D scatter
    (beside `data`, and over `context` in grey: see `scatter_2d`)."""
    if is_image_shape(samples.shape[1:]):
        shown = min(len(samples), 64)
        note = f" ({shown} of {len(samples)} shown)" if shown < len(samples) else ""
        image_grid(samples[:64], path, title=title + note)
    else:
        scatter_2d(samples, path, data=None if data is None else data[: len(samples)], title=title,
                   context=context)


def pair_rows(known: torch.Tensor, mask: torch.Tensor, filled: torch.Tensor, max_pairs: int = 32,
              max_cols: int = 8, originals: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """(images, columns) for an inpainting grid: each row of known images (unknown entries -1, black)
    directly above the row of their fills, and with `originals` the row of the complete images above both;
    a last short row is padded with white (1)."""
    n = min(len(filled), max_pairs)
    shown = torch.where(mask[:n].bool(), known[:n], torch.full_like(known[:n], -1.0))
    cols = min(max_cols, n)
    rows = []
    for lo in range(0, n, cols):
        group = [shown[lo:lo + cols], filled[lo:lo + cols].to(shown)]
        if originals is not None:
            group.insert(0, originals[lo:min(lo + cols, n)].to(shown))
        for part in group:
            rows += [part, torch.ones((cols - len(part), *part.shape[1:]), dtype=part.dtype)]
    return torch.cat(rows), cols


def inpainting_grid(known: torch.Tensor, mask: torch.Tensor, filled: torch.Tensor, path: str,
                    title: str = "", max_pairs: int = 32, originals: torch.Tensor | bool = True) -> None:
    """Inpainting results in groups of rows: the originals, the known images (unknown entries black), their
    fills; the title says so. `originals=True`: `known` holds the complete images (as `scoresde sample --known`
    passes them); a tensor: those; False: only the known and filled rows."""
    _finite("filled", filled)
    orig = known if originals is True else (originals if isinstance(originals, torch.Tensor) else None)
    images, cols = pair_rows(known, mask, filled, max_pairs, originals=orig)
    rows = "rows: original, known (unknown black), filled" if orig is not None else "rows: known (unknown black), filled"
    image_grid(images, path, nrow=cols, title=f"{title}; {rows}" if title else rows)


def save_samples(samples: torch.Tensor, path: str, title: str = "", known: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None, nrow: int | None = None, prompts: Sequence[str] | None = None) -> None:
    """Samples to `path`: a .npy file of the array, else a figure (`plot_samples`); inpainted images (`known`
    and `mask` given) as pairs of rows, the known images above their fills (`inpainting_grid`); images of P
    `prompts` (P rows of samples, in order): `save_prompt_grid`, each row labelled with its prompt; images with
    `nrow`: a grid of `nrow` per row, all shown."""
    if path.lower().endswith(".npy"):
        save_npy(path, samples)
    elif known is not None and is_image_shape(samples.shape[1:]):
        inpainting_grid(known, mask, samples, path, title=title)
    elif prompts and is_image_shape(samples.shape[1:]) and len(samples) % len(prompts) == 0:
        save_prompt_grid(path, samples.reshape(len(prompts), -1, *samples.shape[1:]), list(prompts), title=title)
    elif nrow is not None and is_image_shape(samples.shape[1:]):
        image_grid(samples, path, nrow=nrow, title=title)
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
    x (n, L) of a `MaskedLM` / `AutoregressiveLM`. With validity, `distinct_valid_fraction` is the
    fraction of distinct texts among the valid ones: validity alone rewards a collapse (every sample the
    same short valid string is "100% valid"), so the two are always reported together (`metrics_summary`)."""
    texts = model.decode(x)
    out: dict[str, Any] = {"n": len(texts), "distinct_fraction": round(len(set(texts)) / max(len(texts), 1), 4)}
    if model.eos_id is not None:
        eos = x == model.eos_id
        length = torch.where(eos.any(1), eos.long().argmax(1), torch.full_like(eos[:, 0], x.shape[1], dtype=torch.long))
        out["mean_length"] = round(float(length.float().mean()), 3)
    valid = model.is_valid(x)
    if valid is not None:
        good = [s for s, v in zip(texts, valid) if v]
        out["valid_fraction"] = round(len(good) / max(len(valid), 1), 4)
        out["distinct_valid_fraction"] = round(len(set(good)) / max(len(good), 1), 4)
    return out


def metrics_summary(m: dict[str, Any]) -> str:
    """The sample metrics of a run or a draw (`sample_metrics`, `run_metrics`, metrics.json) in words, for one
    summary line: "97.3% valid, 71.0% distinct among valid", "mode-weight TV 0.012", "digits FID 3.2", ...;
    "" when there is none. Validity never comes without the distinct fraction."""
    parts = []
    if "valid_fraction" in m:
        parts.append(f"{100 * m['valid_fraction']:.1f}% valid")
        if "distinct_valid_fraction" in m:
            parts.append(f"{100 * m['distinct_valid_fraction']:.1f}% distinct among valid")
    elif "distinct_fraction" in m:
        parts.append(f"{100 * m['distinct_fraction']:.1f}% distinct")
    if "mode_weight_tv" in m:
        parts.append(f"mode-weight TV {m['mode_weight_tv']:.3f}")
    if "fid" in m:
        parts.append(f"digits FID {m['fid']:.3g}")
    elif "kid" in m:
        parts.append(f"KID {m['kid']:.3g}")
    return ", ".join(parts)


_LINE = 0.24          # inches per text line of `plot_texts`


def plot_texts(texts: Sequence[str], path: str, valid: Sequence[bool] | None = None, title: str = "",
               rows: int = 32) -> None:
    """The first `rows` texts in a monospace column (green: valid, red: invalid, when known) as a PNG, under
    the title and a line saying how many of how many are shown (and how many are valid and distinct)."""
    _save(text_figure(texts, valid, title, rows), path)


def text_figure(texts: Sequence[str], valid: Sequence[bool] | None = None, title: str = "", rows: int = 32):
    """The matplotlib figure of `plot_texts`: every line at its own height, the title's included."""
    plt = _figure()
    shown = list(texts)[:rows]
    head = [title] if title else []
    count = f"{len(shown)} of {len(texts)} samples shown"
    if valid is not None:
        good = [s for s, v in zip(texts, valid) if v]
        count += (f"; {100 * len(good) / max(len(texts), 1):.1f}% valid, "
                  f"{100 * len(set(good)) / max(len(good), 1):.1f}% distinct among valid")
    head.append(count)
    lines = len(head) + 0.5 + len(shown)          # the header lines, a half-line gap, the texts
    width = max([len(s) for s in shown] + [len(h) // 2 for h in head] + [20])
    height = _LINE * (lines + 1)
    fig = plt.figure(figsize=(min(0.11 * width + 1.0, 16), height))

    def y(i: float) -> float:                     # top of line i (0: the first), half a line of margin above
        return 1 - (0.5 + i) * _LINE / height

    for i, h in enumerate(head):
        fig.text(0.02, y(i), h.replace("$", r"\$"), fontsize=10 if i == 0 and title else 8, va="top",
                 weight="bold" if i == 0 and title else "normal")
    for i, s in enumerate(shown):
        color = "black" if valid is None else ("tab:green" if valid[i] else "tab:red")
        fig.text(0.02, y(len(head) + 0.5 + i), s.replace("$", r"\$") or "(empty)", family="monospace",
                 fontsize=9, color=color, va="top")
    return fig
