"""Metrics of files: samples and references given as paths (.npy / .npz arrays, image folders, FID
statistics .npz, built-in data set names, a run directory's samples), as `scoresde evaluate` reads them."""
from __future__ import annotations

import os

import numpy as np
import torch

from scoresde.evaluation.metrics.features import extract_features, get_feature_net, FEATURE_DIMS, check_input
from scoresde.evaluation.metrics.fid import (check_full_rank, feature_stats, save_stats as
                                             write_stats)
from scoresde.data.datasets import list_datasets, load_dataset
from scoresde._common.toml import load_toml

from scoresde.evaluation.metrics.evaluate import Reference, metrics_from_features, parse_metrics
from scoresde.evaluation.metrics.prompt_accuracy import pair_glyphs

__all__ = ["is_stats_file", "load_inputs", "evaluate_files"]


def is_stats_file(path: str) -> bool:
    """Whether `path` is an `.npz` holding `mu` and `sigma` (reference statistics rather than data)."""
    if not (isinstance(path, str) and path.endswith(".npz") and os.path.isfile(path)):
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return {"mu", "sigma"} <= set(z.keys())
    except (ValueError, OSError, EOFError):
        return False


def _is_canvas(x) -> bool:
    """A batch of digit-pair canvases (N, 1, 16, 32) (the built-in `digitpairs` data and its models' samples)."""
    return isinstance(x, torch.Tensor) and tuple(x.shape[1:]) == (1, 16, 32)


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
    names = parse_metrics(metrics)
    if features is not None and features not in FEATURE_DIMS:
        raise KeyError(f"features: expected one of {', '.join(FEATURE_DIMS)}, found {features!r}")
    if save_stats and not str(save_stats).endswith(".npz"):
        raise ValueError(f"--save-stats {save_stats!r}: expected a file name ending in .npz")
    x, labels, desc, run_cfg = load_inputs(samples, n=n, what="SAMPLES")
    if label is not None:
        labels = np.full(len(x), label)
    pairs = features in (None, "digits") and _is_canvas(x)
    if pairs:                                                   # digit pairs: both halves' glyphs (labels: per digit)
        x, labels = torch.cat(pair_glyphs(x)), None
        desc += f", {len(x)} glyphs 1x8x8"
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
        if pairs and _is_canvas(xr):
            xr = torch.cat(pair_glyphs(xr))
            ref_desc += f", {len(xr)} glyphs 1x8x8"
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
