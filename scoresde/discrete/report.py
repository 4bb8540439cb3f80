"""Sample statistics and the text figure of a sequence model's samples."""
from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["sample_metrics", "plot_texts"]


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
    from ..plotting import _figure, _save
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
