"""Fitted step grids (and bns weights) stored in a run directory: `RUN/steps/<sampler>-<NFE>.json`,
written by `scoresde optimize-steps`, read by `scoresde sample`; or in a JSON file anywhere
(`optimize-steps --out`, `sample --steps-file`), for any loadable model. A fit in progress keeps its partial state
in `RUN/steps/<sampler>-<NFE>.partial.safetensors` (`partial_path`, `optimize_steps(checkpoint=...)`), so an
interrupted fit resumes, and the file goes when the fit ends.
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch

from scoresde._common.validation import check_int
from scoresde.samplers.optimize import check_fitted, grid_size
from scoresde._common.files import atomic_write_bytes
from scoresde.samplers.bns import check_weights


# --- storage in a run directory --------------------------------------------------------------------
def steps_path(run_dir: str | os.PathLike, sampler: str, budget: int) -> str:
    """RUN/steps/<sampler>-<budget>.json"""
    return os.path.join(os.fspath(run_dir), "steps", f"{check_fitted(sampler)}-{check_int('budget', budget)}.json")


def partial_path(run_dir: str | os.PathLike, sampler: str, budget: int) -> str:
    """RUN/steps/<sampler>-<budget>.partial.safetensors: the partial fit (`optimize_steps(checkpoint=...)`); its
    folder is made here so the fit can write it."""
    path = steps_path(run_dir, sampler, budget)[:-len(".json")] + ".partial.safetensors"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def save_steps(run_dir: str | os.PathLike, grid: torch.Tensor, info: dict[str, Any], **extra: Any) -> str:
    """Write the grid and its `optimize_steps` info (plus `extra`, e.g. checkpoint=..., seed=...) as JSON."""
    path = steps_path(run_dir, info["sampler"], info["budget"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return save_steps_file(path, grid, info, **extra)


def save_steps_file(path: str | os.PathLike, grid: torch.Tensor, info: dict[str, Any], **extra: Any) -> str:
    """Write a fit (grid, `optimize_steps` info and `extra`) as JSON at `path`, anywhere (its directory exists)."""
    record = {"times": [float(v) for v in grid.double().tolist()], **info, **extra}
    atomic_write_bytes(os.fspath(path), (json.dumps(record, indent=1) + "\n").encode())
    return os.fspath(path)


def load_steps(run_dir: str | os.PathLike, sampler: str, budget: int) -> tuple[torch.Tensor, dict[str, Any]] | None:
    """(grid, record) stored for `sampler` and `budget` in `run_dir`, or None when there is none."""
    path = steps_path(run_dir, sampler, budget)
    if not os.path.isfile(path):
        return None
    return load_steps_file(path, sampler, budget)


def load_steps_file(path: str | os.PathLike, sampler: str | None = None,
                    budget: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """(grid, record) of a stored fit (`save_steps_file`); the record's sampler and budget unless given."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            record = json.load(f)
        grid = torch.tensor(record["times"], dtype=torch.float64)
        sampler = record["sampler"] if sampler is None else sampler
        budget = record["budget"] if budget is None else budget
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a stored time grid ({e}); delete it or rerun optimize-steps") from None
    expected = grid_size(sampler, budget, record.get("denoise", True))
    if grid.ndim != 1 or len(grid) != expected:
        raise ValueError(f"{path}: expected {expected} times for {sampler} at {budget} NFE, found {len(grid)}")
    if sampler == "bns":
        try:
            check_weights(record.get("weights"), len(grid) if record.get("denoise", True) else len(grid) - 1)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a stored bns fit ({e}); delete it or rerun optimize-steps") from None
    return grid, record
