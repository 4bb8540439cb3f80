"""Training as a library function: `scoresde.train(config)` trains a score model.

What is trained is the score task (`scoresde.tasks.score`: denoising score matching of a network over
an SDE, Song et al. 2021, arXiv:2011.13456, eq. 7); how it is trained, checkpointed, resumed and
stopped is the engine's (`scoresde.engine`). See `train` for the arguments.
"""
from __future__ import annotations

from typing import Any

from scoresde.training.engine import Engine, TrainResult, TrainingError
from scoresde.training.resolve import resolve_run


__all__ = ["train", "resolve_config", "TrainResult", "TrainingError"]


def resolve_config(config: Any = None, *, out: str | None = None, resume: bool = False,
                   verify: bool = True) -> dict[str, Any]:
    """The resolved config `train` would use (over the checkpoint's config on `resume`), validated."""
    return resolve_run(config, out=out, resume=resume, verify=verify)[0]


def train(config: Any = None, *, data: Any = None, out: str | None = None, resume: bool = False,
          progress: bool | None = None, dump_weights: bool = False, verify: bool = True) -> TrainResult:
    """Train the config's task (`task`: a score model by default; "masked" / "autoregressive": a sequence model,
    `scoresde.tasks.masked`); returns a `TrainResult` (the model with EMA weights, paths, metrics).

    Args:
        config: a TOML path or a (partial) nested dict over `scoresde.config.DEFAULTS`, e.g.
            {"data": {"name": "moons"}, "train": {"steps": 2000}}. On `resume` it is merged over
            the checkpoint's config instead (so {"train": {"steps": 4000}} extends a run).
        data: optional array/tensor (N, *D) or `Dataset` to train on instead of `config.data.name`.
        out: run directory (default `config.out`, else runs/<name or timestamp>).
        resume: continue from the newest intact checkpoint in the run directory.
        verify: with False, `resume` also continues from a checkpoint that cannot prove its integrity
            (written before metadata digests, format version 1), which is refused otherwise.
        progress: progress bar (default `config.train.progress`).
        dump_weights: every rank writes the SHA-256 of its weights to `weights_rank<r>.sha256`.
    Raises:
        ValueError / TypeError / KeyError / FileNotFoundError for bad configs or data,
        CheckpointError for an unusable checkpoint, RunLockedError when another live run holds the
        directory, StorageError when the disk is full, TrainingError when the loss stays non-finite.
    """
    cfg, task_cls, state = resolve_run(config, out=out, resume=resume, verify=verify, data=data)
    return Engine(task_cls(cfg, data), cfg, state, progress=progress, dump_weights=dump_weights).run()
