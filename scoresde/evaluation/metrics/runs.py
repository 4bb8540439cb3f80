"""The metric a training run reports for its data set: the digits FID for the digits data sets (for the
captioned digit pairs, `digitpairs`, of both halves' glyphs, with the prompt accuracy of the samples against
their captions), mode weights and moments for the built-in 2-D mixture (exact, from its analytic modes),
none otherwise."""
from __future__ import annotations

import torch

from scoresde.evaluation.metrics.features import extract_features, get_feature_net
from scoresde.evaluation.metrics.kid import kid as kid_fn
from scoresde.evaluation.metrics.prompt_accuracy import pair_glyphs, prompt_accuracy
from scoresde.evaluation.metrics.evaluate import Reference, evaluate
from scoresde.sde.analytic import mode_stats

__all__ = ["run_metric_name", "run_metrics"]

_REFERENCES: dict = {}          # the digits features of the last dataset seen by run_metrics


def run_metric_name(dataset) -> str | None:
    """The headline metric `run_metrics` reports for a dataset (lower is better), or None."""
    if getattr(dataset, "mixture", None) is not None:
        return "mode_weight_tv"
    if _is_digits(dataset) or _is_pairs(dataset):
        return "fid"
    if getattr(dataset, "kind", None) == "points":
        return "kid"
    return None


def _is_digits(dataset) -> bool:
    return getattr(dataset, "name", None) == "digits" and tuple(dataset.x.shape[1:]) == (1, 8, 8)


def _is_pairs(dataset) -> bool:
    return getattr(dataset, "name", None) == "digitpairs" and tuple(dataset.x.shape[1:]) == (1, 16, 32)


def _digits_metrics(dataset, reference_images, samples: torch.Tensor, labels, seed: int) -> dict[str, float]:
    """FID and KID of 8x8 `samples` in the digits classifier's features against `reference_images` (cached)."""
    device = samples.device
    net = get_feature_net("digits", device=device)
    key = (id(dataset.x), dataset.x.data_ptr(), len(dataset.x), str(device))
    ref = _REFERENCES.get(key)
    if ref is None:
        ref = Reference.from_features(extract_features(net, reference_images(), progress=False)[0], name="digits")
        _REFERENCES.clear()
        _REFERENCES[key] = ref
    return evaluate(samples, ref, features=net, metrics=("fid", "kid"), labels=labels, progress=False,
                    kid_subsets=50, seed=seed)


def run_metrics(dataset, samples: torch.Tensor, *, labels=None, prompts=None, seed: int = 0) -> dict[str, float]:
    """The sample-quality metrics of a training run on `dataset` (a `scoresde.data.Dataset`), for `samples`.

    - the four-mode mixture (a dataset with its exact law): mode-weight total variation and the largest
      relative error of within-mode stds (`scoresde.analytic.mode_stats`);
    - the built-in digits: FID and KID in the digits classifier's features against all the dataset's
      images (needs more than 64 samples for FID), plus class accuracy when `labels` are given;
    - the built-in digit pairs (`digitpairs`, 1x16x32 canvases): FID and KID of both halves' 8x8 glyphs
      (`pair_glyphs`: 2 N glyphs, so more than 32 samples) against the dataset's glyphs, and with `prompts`
      (one caption per sample) the prompt accuracy (`prompt_accuracy`: both digits read in place),
      "left_accuracy", "right_accuracy" and "full_accuracy" (the named sizes and weights too);
    - other 2-D point sets: KID in data space;
    - anything else: {} (Inception needs a weights file and is slow on CPU: use `scoresde evaluate`).
    The headline metric is `run_metric_name(dataset)`. Features run on the samples' device.
    """
    if getattr(dataset, "mixture", None) is not None:
        tv, std_err = mode_stats(dataset.mixture, samples.detach().cpu())
        return {"mode_weight_tv": tv, "within_mode_std_error": std_err}
    if _is_digits(dataset):
        return _digits_metrics(dataset, lambda: dataset.x, samples, labels, seed)
    if _is_pairs(dataset):
        out = _digits_metrics(dataset, lambda: torch.cat(pair_glyphs(dataset.x)),
                              torch.cat(pair_glyphs(samples)).to(samples.device), None, seed)
        if prompts is not None:
            r = prompt_accuracy(samples, prompts)
            out.update({k: r[k] for k in ("prompt_accuracy", "left_accuracy", "right_accuracy", "full_accuracy")})
        return out
    if getattr(dataset, "kind", None) == "points":
        x, y = samples.detach().cpu().flatten(1), dataset.x.flatten(1)
        m, s = kid_fn(x, y, subsets=20, subset_size=1000, seed=seed)
        return {"kid": m, "kid_std": s}
    return {}
