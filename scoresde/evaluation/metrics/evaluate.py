"""Sample quality in one call: `evaluate` (FID, KID, precision/recall, IS, class accuracy over a feature
network) and `floor_metrics`. The metric of a training run is in `runs.py`, the files `scoresde evaluate`
reads in `files.py`.

Metric names: "fid" (Heusel et al. 2017, arXiv:1706.08500), "kid" (Binkowski et al. 2018,
arXiv:1801.01401; reported with "kid_std" over subsets), "pr" ("precision", "recall"; Kynkäänniemi
et al. 2019, arXiv:1904.06991, k = 3), "is" ("is", "is_std"; Salimans et al. 2016,
arXiv:1606.03498), "acc" ("class_accuracy": the classifier's class of each sample equals its label).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from scoresde.evaluation.metrics.features import extract_features, get_feature_net
from scoresde.evaluation.metrics.fid import (check_full_rank, feature_stats, frechet_distance, load_stats)
from scoresde.evaluation.metrics.kid import kid as kid_fn
from scoresde.evaluation.metrics.precision_recall import precision_recall
from scoresde.evaluation.metrics.scores import class_accuracy, inception_score


__all__ = ["METRICS", "Reference", "evaluate", "metrics_from_features", "floor_metrics", "parse_metrics"]

METRICS = ("fid", "kid", "pr", "is", "acc")


@dataclass
class Reference:
    """Reference features (N, F), or only their statistics `mu`, `sigma` (enough for FID alone)."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None = None
    name: str = "reference"

    @classmethod
    def from_features(cls, features: np.ndarray, name: str = "reference") -> "Reference":
        return cls(*feature_stats(features, name), features=features, name=name)

    @classmethod
    def from_stats(cls, path: str) -> "Reference":
        return cls(*load_stats(path), name=path)


def parse_metrics(metrics) -> list[str]:
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise ValueError(f"metrics: expected a list of {', '.join(METRICS)}, found {bad or names!r}")
    return names


def evaluate(samples, reference, *, features="inception", metrics=("fid", "kid", "pr"), labels=None,
             inception_weights: str | None = None, batch_size: int | None = None, device=None,
             progress: bool = True, kid_subsets: int = 100, kid_subset_size: int = 1000, k: int = 3,
             is_splits: int = 10, seed: int = 0) -> dict[str, float]:
    """Metrics of `samples` (N, *D) against `reference`: data (M, *D), a `Reference`, or a stats `.npz` path.

    `features`: "inception" (weights from `inception_weights` or $SCORESDE_INCEPTION_WEIGHTS), "digits",
    a callable features(x) -> (B, F) or a `FeatureNet`. With `labels` (N,) and a classifier, "acc" is
    added. FID needs more samples than feature dimensions (N > F) on both sides.
    """
    names = parse_metrics(metrics)
    net = get_feature_net(features, inception_weights=inception_weights, device=device)
    f, logits = extract_features(net, samples, batch_size=batch_size, device=device, progress=progress,
                                 desc="sample features")
    if isinstance(reference, str):
        reference = Reference.from_stats(reference)
    elif not isinstance(reference, Reference):
        ref_f, _ = extract_features(net, reference, batch_size=batch_size, device=device, progress=progress,
                                    desc="reference features", what="reference")
        reference = Reference.from_features(ref_f)
    return metrics_from_features(f, logits, reference, metrics=names, labels=labels, feature_name=net.name,
                                 kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, k=k,
                                 is_splits=is_splits, seed=seed)


def metrics_from_features(f: np.ndarray, logits: np.ndarray | None, reference: Reference, *,
                          metrics=("fid", "kid", "pr"), labels=None, feature_name: str = "features",
                          kid_subsets: int = 100, kid_subset_size: int = 1000, k: int = 3, is_splits: int = 10,
                          seed: int = 0) -> dict[str, float]:
    """The metrics of `evaluate` from sample features (N, F) (and logits (N, K) or None) and a `Reference`."""
    names = parse_metrics(metrics)
    if labels is not None and logits is not None and "acc" not in names:
        names.append("acc")
    if len(reference.mu) != f.shape[1]:
        raise ValueError(f"reference {reference.name!r}: statistics of {len(reference.mu)} features, but the "
                         f"{feature_name!r} features have {f.shape[1]}")
    needs_features = [m for m in names if m in ("kid", "pr")]
    if needs_features and reference.features is None:
        raise ValueError(f"metrics {', '.join(needs_features)}: need the reference's features, but "
                         f"{reference.name!r} holds only mu and sigma (FID alone); pass reference data instead")
    out: dict[str, float] = {}
    for m in names:
        if m == "fid":
            check_full_rank(len(f), f.shape[1], "samples")
            if reference.features is not None:
                check_full_rank(len(reference.features), f.shape[1], "reference")
            out["fid"] = frechet_distance(*feature_stats(f), reference.mu, reference.sigma)
        elif m == "kid":
            out["kid"], out["kid_std"] = kid_fn(f, reference.features, subsets=kid_subsets,
                                                subset_size=kid_subset_size, seed=seed)
        elif m == "pr":
            out.update(precision_recall(reference.features, f, k=k))
        elif m in ("is", "acc") and logits is None:
            raise ValueError(f"metrics {m}: need a classifier's logits; the {feature_name!r} features have none")
        elif m == "is":
            out["is"], out["is_std"] = inception_score(logits, splits=min(is_splits, len(logits)))
        elif m == "acc":
            if labels is None:
                raise ValueError("metrics acc: needs the class label of each sample, found no labels")
            out["class_accuracy"] = class_accuracy(logits, labels)
    return out


def floor_metrics(net, x_train, x_test, *, progress: bool = False) -> dict[str, float]:
    """FID / KID / precision-recall of the held-out images `x_test` against the train images `x_train`:
    the best a model of the training data can expect from this many samples."""
    fn = (lambda x: net(x)[0]) if isinstance(net, torch.nn.Module) else net
    return evaluate(x_test, x_train, features=fn, metrics=("fid", "kid", "pr"), progress=progress)


