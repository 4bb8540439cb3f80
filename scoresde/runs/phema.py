"""Post-hoc EMA in a run directory (EDM2, arXiv:2312.02696; the maths in `scoresde.models.phema`).

With `train.phema_std = [0.05, 0.10]` the engine tracks one power-function EMA per value and writes
snapshots of them every `train.phema_every` steps (and at the last step) to

    RUN/phema/phema-<step:08d>-<sigma_rel:.3f>.safetensors     (`save_snapshot`; `scoresde._common.statefile`)

each written atomically, holding {"format", "step", "sigma_rel", "shadow": {parameter: tensor}}. A resume drops
the snapshots newer than its checkpoint (they are written again, identically). `reconstruct_run` (the
`scoresde ema` command) fits any EMA length from them and writes a checkpoint that `scoresde.load` and
`scoresde sample --checkpoint` open like a run's:

    RUN/phema/ema-<sigma_rel:.3f>-<step:08d>.safetensors

(the run's latest checkpoint with its trainable weights and its EMA replaced by the reconstruction; its
metadata records how: {"phema": {"step", "sigma_rel", "snapshots", "weights", "profile_error"}}).
"""
from __future__ import annotations

import os
import re
from typing import Any, Sequence

from scoresde._common.statefile import StateFileError, load_state, save_state
from torch import nn

from scoresde.models.phema import PowerFunctionEMA, Snapshot, check_sigma_rel, reconstruct
from scoresde.runs.checkpoint import find_checkpoint, flatten_state, read_checkpoint, save_checkpoint


__all__ = ["PosthocEMA", "PHEMA_DIR", "snapshot_path", "save_snapshot", "list_snapshots", "load_snapshots", "drop_snapshots_after",
           "reconstruct_run", "reconstruction_path"]

PHEMA_DIR = "phema"
_FORMAT = "scoresde.phema"
_NAME = re.compile(r"^phema-(\d{8,})-(\d+\.\d{3})\.safetensors$")


def snapshot_path(run_dir: str | os.PathLike, step: int, sigma_rel: float) -> str:
    """RUN/phema/phema-<step:08d>-<sigma_rel:.3f>.safetensors."""
    return os.path.join(os.fspath(run_dir), PHEMA_DIR, f"phema-{step:08d}-{sigma_rel:.3f}.safetensors")


def reconstruction_path(run_dir: str | os.PathLike, sigma_rel: float, step: int) -> str:
    """RUN/phema/ema-<sigma_rel:.3f>-<step:08d>.safetensors: where `reconstruct_run` writes by default."""
    return os.path.join(os.fspath(run_dir), PHEMA_DIR, f"ema-{sigma_rel:.3f}-{step:08d}.safetensors")


def save_snapshot(run_dir: str | os.PathLike, snap: Snapshot) -> str:
    """Write one snapshot atomically; its path."""
    path = snapshot_path(run_dir, snap.step, snap.sigma_rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_state(path, {"format": _FORMAT, "step": int(snap.step), "sigma_rel": float(snap.sigma_rel),
                      "shadow": dict(snap.shadow)})
    return path


def list_snapshots(run_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """(step, path) of the snapshot files in RUN/phema, by step."""
    d = os.path.join(os.fspath(run_dir), PHEMA_DIR)
    if not os.path.isdir(d):
        return []
    found = [(int(m.group(1)), os.path.join(d, n)) for n in os.listdir(d) if (m := _NAME.match(n))]
    return sorted(p for p in found if os.path.isfile(p[1]))


def load_snapshots(run_dir: str | os.PathLike) -> list[Snapshot]:
    """Every snapshot of a run; ValueError when there are none or one does not read."""
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise ValueError(f"run: expected a run directory, found {run_dir!r} (no such directory)")
    found = list_snapshots(run_dir)
    if not found:
        raise ValueError(f"run {run_dir!r}: no power-function EMA snapshots in {os.path.join(run_dir, PHEMA_DIR)} "
                         "(train with train.phema_std, e.g. --set 'train.phema_std=[0.05, 0.1]')")
    out = []
    for step, path in found:
        try:
            state = load_state(path)
        except StateFileError as e:
            raise ValueError(f"snapshot {path!r}: damaged ({e})") from None
        if not isinstance(state, dict) or state.get("format") != _FORMAT or state.get("step") != step:
            raise ValueError(f"snapshot {path!r}: not a power-function EMA snapshot of step {step}")
        out.append(Snapshot(step, float(state["sigma_rel"]), state["shadow"]))
    return out


def drop_snapshots_after(run_dir: str | os.PathLike, step: int) -> None:
    """Remove the snapshots newer than `step` (a resume from the checkpoint of `step` writes them again)."""
    for s, path in list_snapshots(run_dir):
        if s > step:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


class PosthocEMA:
    """What the engine keeps for post-hoc EMA: one `PowerFunctionEMA` per `sigma_rels` value, updated after every
    training step (a skipped step too: the weights held still are part of the profile), and snapshotted to
    `run_dir` every `every` steps by the main process. `state_dict` / `load_state_dict` go into checkpoints."""

    def __init__(self, model: nn.Module, sigma_rels: Sequence[float], every: int, run_dir: str, main: bool = True):
        self.emas = [PowerFunctionEMA(model, s) for s in sigma_rels]
        self.every, self.run_dir, self.main = int(every), run_dir, main
        self.last = -1                                   # the step of the last snapshot written

    def update(self, model: nn.Module, step: int) -> None:
        """Update every EMA with the weights after training step `step` (their `step`-th update), then snapshot
        when `step` is a multiple of `every`."""
        for e in self.emas:
            e.update(model)
        if step % self.every == 0:
            self.snapshot(step)

    def snapshot(self, step: int) -> None:
        """Write every EMA's snapshot of `step` (main process only; once per step)."""
        if self.main and step != self.last and step > 0:
            for e in self.emas:
                save_snapshot(self.run_dir, e.snapshot())
        self.last = step

    def resume(self, states: Any, step: int) -> None:
        """Load the checkpoint's EMA states (`states`: `state_dict()`, None for a checkpoint without them) and drop
        the snapshots after its `step`; ValueError when they are not the configured EMAs."""
        sigma_rels = [e.sigma_rel for e in self.emas]
        found = None if states is None else [float(s["sigma_rel"]) for s in states]
        if found != sigma_rels or any(int(s["num_updates"]) != step for s in states):
            raise ValueError(f"config train.phema_std: the checkpoint of step {step} tracked power-function EMAs "
                             f"{found or 'none'}, the config asks for {sigma_rels}; a post-hoc EMA must be tracked "
                             "from step 0 (keep train.phema_std as it was, or start a new run)")
        for e, s in zip(self.emas, states):
            e.load_state_dict(s)
        if self.main:
            drop_snapshots_after(self.run_dir, step)

    def state_dict(self) -> list[dict[str, Any]]:
        return [e.state_dict() for e in self.emas]


def reconstruct_run(run_dir: str | os.PathLike, sigma_rels: Sequence[float], step: int | None = None,
                    out: str | os.PathLike | None = None, verify: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """For each `sigma_rels` value, the power-function EMA of that length at `step` (default: the last snapshot)
    reconstructed from the run's snapshots and written as a checkpoint: RUN/phema/ema-<s>-<step>.safetensors, or
    that name in the directory `out`, or the file `out` itself (a name ending in .safetensors, one sigma_rel only).
    [(path, info)], info as `reconstruct`'s."""
    run_dir = os.fspath(run_dir)
    if not sigma_rels:
        raise ValueError("sigma_rel: expected one or more relative EMA lengths, found none")
    sigma_rels = [check_sigma_rel(s) for s in sigma_rels]
    out = None if out is None else os.fspath(out)
    to_file = out is not None and out.endswith(".safetensors") and not os.path.isdir(out)
    if to_file and len(sigma_rels) > 1:
        raise ValueError(f"out: one file {out!r} for {len(sigma_rels)} sigma_rel values; name a directory instead")
    snaps = load_snapshots(run_dir)
    tensors, meta = read_checkpoint(find_checkpoint(run_dir), verify=verify)
    done = []
    for sigma_rel in sigma_rels:
        shadow, info = reconstruct(snaps, sigma_rel, step)
        weights = {k: v for k, v in tensors.items() if k.startswith("model/")}
        missing = sorted(k for k in shadow if f"model/{k}" not in weights)
        if missing:
            raise ValueError(f"run {run_dir!r}: the snapshots hold weights the checkpoint's model lacks "
                             f"({missing[0]!r}): snapshots of another model")
        out_tensors = {**weights, **{f"model/{k}": v.to(weights[f"model/{k}"].dtype) for k, v in shadow.items()}}
        ema_state = {"decay": 0.0, "warmup": False, "num_updates": info["step"], "shadow": shadow}
        out_meta = {**meta, "step": info["step"], "state": {"ema": flatten_state(ema_state, "ema", out_tensors)},
                    "phema": info}
        path = reconstruction_path(run_dir, sigma_rel, info["step"])
        if out is not None:
            path = out if to_file else os.path.join(out, os.path.basename(path))
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        save_checkpoint(path, out_tensors, out_meta)
        done.append((path, info))
    return done
