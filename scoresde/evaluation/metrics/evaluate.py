"""Sample quality in one call: `evaluate` (FID, KID, precision/recall, IS, class accuracy over a feature
network), `run_metrics` (the metric of a training run, cheap enough for every few thousand steps),
and the loading of samples and references for `scoresde evaluate`.

Metric names: "fid" (Heusel et al. 2017, arXiv:1706.08500), "kid" (Binkowski et al. 2018,
arXiv:1801.01401; reported with "kid_std" over subsets), "pr" ("precision", "recall"; Kynkäänniemi
et al. 2019, arXiv:1904.06991, k = 3), "is" ("is", "is_std"; Salimans et al. 2016,
arXiv:1606.03498), "acc" ("class_accuracy": the classifier's class of each sample equals its label).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from scoresde.evaluation.metrics.features import extract_features, get_feature_net, FEATURE_DIMS, check_input
from scoresde.evaluation.metrics.fid import (check_full_rank, feature_stats, frechet_distance, load_stats, save_stats as
                                             write_stats)
from scoresde.evaluation.metrics.kid import kid as kid_fn
from scoresde.evaluation.metrics.precision_recall import precision_recall
from scoresde.evaluation.metrics.scores import class_accuracy, inception_score
from scoresde.sde.analytic import mode_stats
from scoresde.data.datasets import list_datasets, load_dataset
from scoresde._common.toml import load_toml


__all__ = ["METRICS", "Reference", "evaluate", "evaluate_files", "metrics_from_features", "run_metrics",
           "run_metric_name", "floor_metrics", "load_inputs"]

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


def _parse_metrics(metrics) -> list[str]:
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
    names = _parse_metrics(metrics)
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
    names = _parse_metrics(metrics)
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


_REFERENCES: dict = {}          # the digits features of the last dataset seen by run_metrics


def run_metric_name(dataset) -> str | None:
    """The headline metric `run_metrics` reports for a dataset (lower is better), or None."""
    if getattr(dataset, "mixture", None) is not None:
        return "mode_weight_tv"
    if _is_digits(dataset):
        return "fid"
    if getattr(dataset, "kind", None) == "points":
        return "kid"
    return None


def _is_digits(dataset) -> bool:
    return getattr(dataset, "name", None) == "digits" and tuple(dataset.x.shape[1:]) == (1, 8, 8)


def run_metrics(dataset, samples: torch.Tensor, *, labels=None, seed: int = 0) -> dict[str, float]:
    """The sample-quality metrics of a training run on `dataset` (a `scoresde.data.Dataset`), for `samples`.

    - the four-mode mixture (a dataset with its exact law): mode-weight total variation and the largest
      relative error of within-mode stds (`scoresde.analytic.mode_stats`);
    - the built-in digits: FID and KID in the digits classifier's features against all the dataset's
      images (needs more than 64 samples for FID), plus class accuracy when `labels` are given;
    - other 2-D point sets: KID in data space;
    - anything else: {} (Inception needs a weights file and is slow on CPU: use `scoresde evaluate`).
    The headline metric is `run_metric_name(dataset)`. Features run on the samples' device.
    """
    if getattr(dataset, "mixture", None) is not None:
        tv, std_err = mode_stats(dataset.mixture, samples.detach().cpu())
        return {"mode_weight_tv": tv, "within_mode_std_error": std_err}
    if _is_digits(dataset):
        device = samples.device
        net = get_feature_net("digits", device=device)
        key = (id(dataset.x), dataset.x.data_ptr(), len(dataset.x), str(device))
        ref = _REFERENCES.get(key)
        if ref is None:
            ref = Reference.from_features(extract_features(net, dataset.x, progress=False)[0], name="digits")
            _REFERENCES.clear()
            _REFERENCES[key] = ref
        return evaluate(samples, ref, features=net, metrics=("fid", "kid"), labels=labels, progress=False,
                        kid_subsets=50, seed=seed)
    if getattr(dataset, "kind", None) == "points":
        x, y = samples.detach().cpu().flatten(1), dataset.x.flatten(1)
        m, s = kid_fn(x, y, subsets=20, subset_size=1000, seed=seed)
        return {"kid": m, "kid_std": s}
    return {}


def is_stats_file(path: str) -> bool:
    """Whether `path` is an `.npz` holding `mu` and `sigma` (reference statistics rather than data)."""
    if not (isinstance(path, str) and path.endswith(".npz") and os.path.isfile(path)):
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return {"mu", "sigma"} <= set(z.keys())
    except (ValueError, OSError, EOFError):
        return False


def load_inputs(spec: str, *, n: int | None = None, what: str = "samples"):
    """(x (N, *D) float32, labels or None, description, run config or None) from a CLI argument.

    `spec`: a built-in dataset name, a `.npy`/`.npz` array, an image folder, or a training run directory
    (a folder with config.toml: its samples.npy, written at the end of training or by
    `scoresde sample --checkpoint RUN --out RUN/samples.npy`). Arrays are (N, C, H, W) or (N, H, W, C) with
    C = 1 or 3, in [-1, 1] (floats) or 0..255 (uint8).
    """
    cfg = None
    if os.path.isdir(spec) and os.path.isfile(os.path.join(spec, "config.toml")):
        cfg = load_toml(os.path.join(spec, "config.toml"))
        path = os.path.join(spec, "samples.npy")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what} {spec!r}: a run directory without samples.npy; make one with "
                                    f"scoresde sample --checkpoint {spec} --n 2000 --out {path}")
        spec_used = path
    else:
        spec_used = spec
    if spec_used not in list_datasets() and not os.path.exists(spec_used):
        raise FileNotFoundError(f"{what} {spec!r}: no such file or directory, and not a built-in dataset "
                                f"({', '.join(list_datasets())})")
    ds = load_dataset(spec_used, size=n or 50000)
    x, y = ds.x, ds.labels
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2).contiguous()          # (N, H, W, C) arrays (EDM's, guided-diffusion's npz)
    if n is not None:
        x, y = x[:n], (y[:n] if y is not None else None)
    desc = f"{spec} ({len(x)} x {'x'.join(map(str, x.shape[1:]))})"
    return x, y, desc, cfg


def evaluate_files(samples: str, ref: str | None = None, *, features: str | None = None,
                   inception_weights: str | None = None, metrics="fid,kid,pr", label: int | None = None,
                   n: int | None = None, batch_size: int | None = None, save_stats: str | None = None,
                   seed: int = 0, device=None, progress: bool = True) -> dict:
    """`scoresde evaluate`: metrics of the samples named by `samples` against `ref` (see `load_inputs`;
    `ref` may also be a statistics `.npz`). Returns {"samples", "reference", "features", "dims", "n",
    "metrics"} ("metrics" None when only `save_stats` was asked for). Every check that needs no
    network (shapes, N > F for FID) runs before the feature network is loaded.
    """
    names = _parse_metrics(metrics)
    if features is not None and features not in FEATURE_DIMS:
        raise KeyError(f"features: expected one of {', '.join(FEATURE_DIMS)}, found {features!r}")
    if save_stats and not str(save_stats).endswith(".npz"):
        raise ValueError(f"--save-stats {save_stats!r}: expected a file name ending in .npz")
    x, labels, desc, run_cfg = load_inputs(samples, n=n, what="SAMPLES")
    if label is not None:
        labels = np.full(len(x), label)
    if ref is None and run_cfg is not None:                     # a run directory: its training data
        ref = run_cfg.get("data", {}).get("name")
    needs_ref = any(m in ("fid", "kid", "pr") for m in names)
    if ref is None and needs_ref and not save_stats:
        raise ValueError("--ref: expected a reference (dataset, array, image folder or stats .npz), found none")
    features = features or ("digits" if tuple(x.shape[1:]) == (1, 8, 8) else "inception")
    check_input(features, tuple(x.shape[1:]), "SAMPLES")
    dims = FEATURE_DIMS.get(features)
    if save_stats or ("fid" in names and ref is not None):     # a full-rank covariance needs N > F
        check_full_rank(len(x), dims, "SAMPLES")
    reference = xr = None
    if ref is None:                                             # IS / class accuracy need no reference
        ref_desc = "none"
    elif is_stats_file(ref):
        reference, ref_desc = Reference.from_stats(ref), f"{ref} (statistics)"
        if len(reference.mu) != dims:
            raise ValueError(f"--ref {ref!r}: statistics of {len(reference.mu)} features, but the {features!r} "
                             f"features have {dims}")
    else:
        xr, _, ref_desc, _ = load_inputs(ref, what="--ref")
        check_input(features, tuple(xr.shape[1:]), "--ref")
        if "fid" in names:
            check_full_rank(len(xr), dims, "--ref")
    net = get_feature_net(features, inception_weights=inception_weights, device=device)
    f, logits = extract_features(net, x, batch_size=batch_size, progress=progress, desc="sample features",
                                 what="SAMPLES")
    out = {"samples": desc, "reference": ref_desc, "features": features, "dims": int(f.shape[1]), "n": len(f),
           "metrics": None}
    if save_stats:
        write_stats(save_stats, *feature_stats(f, "SAMPLES"))
        if ref is None:
            return out
    if xr is not None:
        ref_f, _ = extract_features(net, xr, batch_size=batch_size, progress=progress, desc="reference features",
                                    what="--ref")
        reference = Reference.from_features(ref_f, name=ref)
    elif reference is None:
        reference = Reference(np.zeros(f.shape[1]), np.eye(f.shape[1]), name="none")
    out["metrics"] = metrics_from_features(f, logits, reference, metrics=names, labels=labels, feature_name=features,
                                           seed=seed)
    return out
