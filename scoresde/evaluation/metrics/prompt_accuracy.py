"""Prompt accuracy: do generated digit-pair canvases show what their `digitpairs` captions say?

Each caption is parsed back into its left and right digit and the attributes it names
(`scoresde.data.digitpairs.parse_caption`). Each half of a generated 1x16x32 canvas is measured exactly as
the data's captions were measured (`digitpairs.measure`: ink height -> size; the glyph brought back to 8x8
by the inverse of the bilinear upsampling; its ink mass -> weight) and its 8x8 glyph is read by the shipped
digits classifier (`digits.py`, the network of the digits FID). A sample is right ("prompt accuracy") when
the classifier reads the prompt's left digit in the left half and its right digit in the right half; sizes
and weights are scored over the halves whose prompt names them, and "full accuracy" asks for both digits
and every named attribute.

On real held-out canvases the digits part is bounded by the classifier (97.5% held-out accuracy per digit,
so about 95% per canvas); attributes are right by construction there (the captions were measured so).
"""
from __future__ import annotations

import torch

from scoresde.data.digitpairs import SIZES, WEIGHTS, halves, measure, parse_caption, weight_class
from scoresde.evaluation.metrics.digits import load_digits_classifier

__all__ = ["prompt_matches", "prompt_accuracy", "pair_glyphs"]


def _prompts(prompts, n: int) -> list[str]:
    if isinstance(prompts, str):
        return [prompts] * n
    prompts = list(prompts)
    if len(prompts) != n or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts: expected one caption (str) per sample ({n}), or one str for all, found "
                         f"{len(prompts)} entries")
    return prompts


def _check_samples(samples: torch.Tensor) -> torch.Tensor:
    if not isinstance(samples, torch.Tensor):
        raise TypeError(f"samples: expected a tensor (N, 1, 16, 32), found {type(samples).__name__}")
    halves(samples)                                                         # the shape, named
    bad = int((~torch.isfinite(samples)).sum())
    if bad:
        raise ValueError(f"samples: {bad} values are NaN or infinite")
    return samples.detach().float().cpu()


def pair_glyphs(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (left, right) 8x8 glyphs (N, 1, 8, 8) of canvases (N, 1, 16, 32), as the digits features read
    them (for the digits FID of digit pairs: both halves against reference glyphs)."""
    left, right = halves(_check_samples(samples))
    return measure(left)["glyph"], measure(right)["glyph"]


@torch.no_grad()
def prompt_matches(samples: torch.Tensor, prompts, *, classifier=None, batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """Per sample: "left", "right", "digits" (both), "size" and "weight" (1.0 / 0.0 where the prompt names the
    attribute of a half, per half: (N, 2) with NaN where not named), "full"; plus "read" (N, 2) the digits
    the classifier reads. `prompts`: one caption per sample, or one for all. A half's weight is measured
    against the tertiles of the digit its prompt names. `classifier`: a `DigitsClassifier` (default: the
    shipped one)."""
    x = _check_samples(samples)
    parsed = [parse_caption(p) for p in _prompts(prompts, len(x))]
    net = classifier if classifier is not None else load_digits_classifier()
    out: dict[str, torch.Tensor] = {}
    read, size_ok, weight_ok = [], [], []
    for side, half in enumerate(halves(x)):
        m = measure(half)
        logits = torch.cat([net(g)[1].float().cpu() for g in m["glyph"].split(batch_size)])
        read.append(logits.argmax(1))
        glyphs = [p.left if side == 0 else p.right for p in parsed]
        want = torch.tensor([g.digit for g in glyphs])
        wclass = weight_class(m["ink"], want)
        s = [float("nan") if g.size is None else float(bool(m["small"][i]) == (g.size == SIZES[0]))
             for i, g in enumerate(glyphs)]
        w = [float("nan") if g.weight is None else float(int(wclass[i]) == (-1 if g.weight == WEIGHTS[0] else 1))
             for i, g in enumerate(glyphs)]
        size_ok.append(torch.tensor(s))
        weight_ok.append(torch.tensor(w))
        out["left" if side == 0 else "right"] = read[-1] == want
    out["read"] = torch.stack(read, 1)
    out["digits"] = out["left"] & out["right"]
    out["size"], out["weight"] = torch.stack(size_ok, 1), torch.stack(weight_ok, 1)
    attrs = torch.cat([out["size"], out["weight"]], 1)
    out["full"] = out["digits"] & (attrs.nan_to_num(1.0) == 1.0).all(1)
    return out


def prompt_accuracy(samples: torch.Tensor, prompts, *, classifier=None) -> dict[str, float]:
    """Fractions of samples (N, 1, 16, 32) that match their `digitpairs` prompts: "prompt_accuracy" (both
    digits read in place), "left_accuracy", "right_accuracy", "size_accuracy" and "weight_accuracy" (over the
    halves whose prompt names it; NaN when none does), "full_accuracy" (digits and every named attribute);
    "n" samples, "named_sizes" and "named_weights" (halves)."""
    m = prompt_matches(samples, prompts, classifier=classifier)

    def frac(v: torch.Tensor) -> float:
        v = v[~torch.isnan(v)] if v.is_floating_point() else v
        return float(v.double().mean()) if v.numel() else float("nan")

    return {"prompt_accuracy": frac(m["digits"]), "left_accuracy": frac(m["left"]), "right_accuracy": frac(m["right"]),
            "size_accuracy": frac(m["size"]), "weight_accuracy": frac(m["weight"]), "full_accuracy": frac(m["full"]),
            "n": len(m["digits"]), "named_sizes": int((~torch.isnan(m["size"])).sum()),
            "named_weights": int((~torch.isnan(m["weight"])).sum())}
