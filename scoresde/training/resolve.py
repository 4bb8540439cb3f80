"""Which run directory a config names, and the state a resumed run starts from (`resolve_run`)."""
from __future__ import annotations

import os
import time
from typing import Any, Mapping

from scoresde._common.toml import load_toml
from scoresde.training.config import DEFAULTS, resolve
from scoresde.training.tasks.base import get_task
from scoresde.runs.directory import newest_intact


def run_dir_of(cfg: dict[str, Any]) -> str:
    """The run directory a config names (`out`, else runs/<name or timestamp>)."""
    if cfg["out"]:
        return cfg["out"]
    return os.path.join("runs", cfg["name"] or time.strftime("%Y%m%d-%H%M%S"))


_UNREPORTED = ("out", "name", "train.steps", "train.progress")     # expected to differ on a resume


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """["train.batch_size 512 -> 256", ...]: the values of `new` (a resumed run's config) that differ from
    `old` (its checkpoint's), but for the run's place and name, train.steps and train.progress, and keys added
    to the defaults since the checkpoint was written that keep their default (e.g. train.recipe = "dsm")."""
    def flat(cfg: Mapping[str, Any]) -> dict[str, Any]:
        return {f"{k}.{s}" if isinstance(v, Mapping) else k: w for k, v in cfg.items()
                for s, w in (v.items() if isinstance(v, Mapping) else [(None, v)])}
    a, b, defaults = flat(old), flat(new), flat(DEFAULTS)
    return [f"{k} {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in sorted(a.keys() | b.keys())
            if k not in _UNREPORTED and a.get(k) != b.get(k)
            and not (k not in a and k in defaults and b.get(k) == defaults[k])]


def resolve_run(config: Any = None, *, out: str | None = None, resume: bool = False, task: str | None = None,
                verify: bool = True, data: Any = None):
    """(cfg, task class, resume state) of a run: the config resolved over the defaults (over the checkpoint's
    config on `resume`) and validated; the resume state is (path, tensors, meta, damaged) or None. A new run
    trains `task` (default: the config's `task`; a score model with an `autoencoder` is the
    "latent" task); a resumed one the task its checkpoint names. `verify=False` resumes from a checkpoint
    that cannot prove its integrity (written before metadata digests), which is refused otherwise. `data`: the
    in-memory data of `train(data=...)`, read by the defaults that depend on the data (`Task.data_defaults`)."""
    overrides: dict[str, Any] = {"out": out} if out else {}
    if task and not resume:
        overrides["task"] = task
    state = None
    if resume:      # the run directory first (the task, and so the sections it reads, come from its checkpoint)
        raw = load_toml(config) if isinstance(config, (str, os.PathLike)) else config
        first = resolve({k: raw[k] for k in ("out", "name") if k in raw} if isinstance(raw, Mapping) else raw,
                        overrides)
        if not (first["out"] or first["name"]):
            raise ValueError("resume: name the run directory to continue with --out DIR (or --name NAME)")
        state = newest_intact(run_dir_of(first), verify=verify)
        cfg = resolve(config, overrides, base=state[2]["config"])
        task = state[2].get("task", "score")                   # checkpoints before the engine: "score"
    else:
        cfg = resolve(config, overrides, data=data)
        task = cfg["task"]
        if task == "score" and cfg["autoencoder"]:           # a score model on an autoencoder's latents
            task = overrides["task"] = "latent"
            cfg = resolve(config, overrides, data=data)       # with the latent task's own defaults
    task_cls = get_task(task)
    cfg["task"] = task
    task_cls.check_config(cfg)
    return cfg, task_cls, state
