"""The training engine: one loop for every task (score models today; any `scoresde.tasks.Task`).

It owns how training runs, following the reference recipe of score_sde (Song et al. 2021,
arXiv:2011.13456): Adam with a linear learning-rate warm-up, gradient-norm clipping, an exponential
moving average of the weights for sampling, bf16 autocast on CUDA. The task owns what is trained.

A run directory holds `.lock` (held while a run is live), the resolved `config.toml`, `log.csv`,
`loss.png`, `checkpoints/ckpt_<step>.safetensors` (the last `train.keep`, each with tensor and
metadata digests), `best.safetensors` (with `train.eval_every`), sample plots, `samples.npy` and `metrics.json`;
with `train.phema_std`, the post-hoc EMA snapshots in `phema/` (`scoresde.runs.phema`).

Resuming is exact: every source of randomness is an explicit generator (data order, loss noise) or
the torch CPU/CUDA RNG (dropout), all checkpointed with the optimiser and EMA state, on every rank, so
on CPU 2k steps equal 1k steps + resume 1k, bit for bit; a damaged newest checkpoint is skipped for
the newest intact one; a resume at or past `train.steps` trains, samples and writes nothing. SIGTERM /
Ctrl-C stop at the next step boundary with a checkpoint. A non-finite loss or gradient skips the update;
`max_nonfinite` in a row raise `TrainingError`, leaving the last good checkpoint. Under torchrun the loop
runs data-parallel (`scoresde.distributed`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from scoresde._common import distributed as D
from scoresde._common.finite import nonfinite_count
from scoresde.runs.checkpoint import (CheckpointError, check_shapes, flatten_state, list_checkpoints, prune_checkpoints,
                                      save_checkpoint, tensor_digests, unflatten_state)
from scoresde._common.files import StorageError, atomic_write_bytes, remove_stale_temporaries, save_npy
from scoresde._common.toml import save_toml
from scoresde.runs.directory import RunLock, RunLockedError, append_log, tidy_run_dir
from scoresde.training.resolve import config_changes, resolve_run, run_dir_of
from scoresde.training.config import check_run_memory
from scoresde.training.tasks.base import Task
from scoresde._common.threads import policy_threads
from scoresde.models.ema import EMA
from scoresde.models.nets.device import autocast
from scoresde.runs.plots import plot_loss
from scoresde.runs.phema import PHEMA_DIR, PosthocEMA


__all__ = ["Engine", "TrainResult", "TrainingError", "make_adam", "resolve_run", "run_dir_of"]

log = logging.getLogger("scoresde")
_LOG_FIELDS = ["step", "loss", "lr", "grad_norm", "skipped", "seconds"]


def make_adam(params, T: Mapping[str, Any]) -> torch.optim.Adam:
    """The engine's Adam (Kingma & Ba 2015, arXiv:1412.6980) from a resolved [train] table (lr, beta1,
    beta2, adam_eps, weight_decay), with the multi-tensor ("foreach") implementation on every device.

    torch's default on CPU is a Python loop of about ten dispatched ops per parameter tensor; foreach
    issues each op once for all tensors and gives bit-identical weights on CPU (so runs written before
    still reproduce and resume exactly): half the optimiser time of a 148-tensor U-Net on one CPU thread.
    torch's fused kernel is faster again but rounds differently (about 1 ulp), which would break that.
    """
    return torch.optim.Adam(params, lr=T["lr"], betas=(T["beta1"], T["beta2"]), eps=T["adam_eps"],
                            weight_decay=T["weight_decay"], foreach=True)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stayed non-finite)."""


@dataclass
class TrainResult:
    """What a run produced. `model` carries the EMA weights (the ones to sample with)."""

    run_dir: str
    step: int
    loss: float | None
    seconds: float
    skipped: int
    checkpoint: str | None
    interrupted: str | None = None          # "SIGTERM" / "SIGINT" when stopped by a signal
    samples_path: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    sde: Any = None
    rank: int = 0                           # this process's rank under torchrun
    resumed_from: str | None = None         # the checkpoint a resume started from
    steps_this_call: int = 0                # steps trained by this call (0: a resume at or past train.steps)


class _StopSignals:
    """SIGTERM / SIGINT set a flag the loop checks at each step boundary (a second Ctrl-C aborts)."""

    def __init__(self):
        self.signame: str | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.signame == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signame = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def _rng_states(info, device, gens: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every rank's RNG states, gathered (a collective: all ranks call it)."""
    states = {"torch": torch.get_rng_state(), **{k: g.get_state() for k, g in gens.items()}}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return {k: D.all_gather_bytes(v, info, device) for k, v in states.items()}


class Engine:
    """Runs one task: `Engine(task, cfg, resume_state).run()` -> `TrainResult`."""

    def __init__(self, task: Task, cfg: dict[str, Any], resume_state=None, *, progress: bool | None = None,
                 dump_weights: bool = False):
        self.task, self.cfg, self.resume_state = task, cfg, resume_state
        self.T = cfg["train"]
        self.show = self.T["progress"] if progress is None else progress
        self.dump_weights = dump_weights

    def run(self) -> TrainResult:
        self.start = time.perf_counter()
        self.info, self.device = D.setup(self.cfg["device"])
        threads = torch.get_num_threads()
        try:
            return self._locked()
        finally:
            torch.set_num_threads(threads)
            D.teardown(self.info)

    # --- the run directory -------------------------------------------------------------------------------
    def _locked(self) -> TrainResult:
        info, device = self.info, self.device
        self.run_dir = D.broadcast_str(os.path.abspath(run_dir_of(self.cfg)), info, device)
        self.main = info.is_main
        lock, err, exc = RunLock(self.run_dir), "", None
        created = not os.path.lexists(self.run_dir)
        if self.main:
            try:
                lock.acquire()
            except (RunLockedError, StorageError) as e:
                err, exc = str(e), e
        err = D.broadcast_str(err, info, device)          # every rank learns it: none is left waiting
        if err:
            if self.main and created and os.path.isdir(self.run_dir) and set(os.listdir(self.run_dir)) <= {".lock"}:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise exc if exc is not None else RunLockedError(err)
        try:
            if self.main:
                if lock.stale:
                    log.warning("run directory %s: took over the lock of a process that is gone (%s)", self.run_dir,
                                lock.stale)
                for sub in ("", "checkpoints", "samples", "steps", PHEMA_DIR):
                    remove_stale_temporaries(os.path.join(self.run_dir, sub))   # left by a write that was killed
            if self.resume_state is None and list_checkpoints(self.run_dir):
                raise ValueError(f"run directory {self.run_dir!r} already holds checkpoints; pass --resume to "
                                 "continue it or choose another --out")
            return self._train()
        finally:
            lock.release()                        # removes .lock
            if self.main:
                tidy_run_dir(self.run_dir, created)   # an empty samples/; the directory of a run that wrote nothing

    def _setup(self) -> None:
        """Task, model, optimiser, EMA and generators; restored from the resume checkpoint if any."""
        cfg, T, info, device, task = self.cfg, self.T, self.info, self.device, self.task
        task.prepare()
        if task.example_numel < 1 << 30:                 # (the base Task's 1 << 30: the size is not known)
            check_run_memory(cfg, task.example_numel)    # batch and samples within the memory budget
        threads = policy_threads((task.example_numel,), device, cfg["threads"])
        if threads is not None:                             # small examples: more threads only synchronise
            torch.set_num_threads(threads)
        torch.manual_seed(cfg["seed"])                      # weights: the same on every rank
        self.model = model = task.build(device)
        self.opt = make_adam(model.parameters(), T)
        self.ema = EMA(model, decay=T["ema_decay"])
        self.phema = (PosthocEMA(model, T["phema_std"], T["phema_every"] or T["ckpt_every"], self.run_dir, self.main)
                      if T["phema_std"] else None)          # post-hoc EMA (EDM2): power-function EMAs, snapshots
        self.gens = {"data": torch.Generator().manual_seed(cfg["seed"] + info.rank),
                     "noise": torch.Generator(device).manual_seed(cfg["seed"] + 7919 * (info.rank + 1))}
        self.step, self.counts, self.resumed_from = 0, {"skipped": 0}, None
        if self.resume_state is not None:
            self._restore(*self.resume_state)

    def _restore(self, path, tensors, meta, damaged) -> None:
        T, info, device = self.T, self.info, self.device
        for msg in damaged:
            log.warning("resume: skipped a damaged checkpoint: %s", msg)
        if damaged:
            log.warning("resume: continuing from the newest intact checkpoint %s", path)
        check_shapes(lambda: self.model, tensors, "model/", path)
        st = meta["state"]
        try:
            self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
            self.ema.load_state_dict(unflatten_state(st["ema"], tensors))
            self.opt.load_state_dict(unflatten_state(st["optim"], tensors))
            rng = unflatten_state(st["rng"], tensors)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint {path!r} does not match the configured model "
                                  f"({str(e).splitlines()[0]})") from None
        if self.phema is not None:
            self.phema.resume(unflatten_state(st["phema"], tensors) if "phema" in st else None, int(meta["step"]))
        if len(rng["data"]) != info.world_size:
            raise ValueError(f"resume: the checkpoint was written by {len(rng['data'])} processes, this run has "
                             f"{info.world_size}; resume with the same number of processes")
        torch.set_rng_state(rng["torch"][info.rank])
        for k, g in self.gens.items():
            g.set_state(rng[k][info.rank])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"][info.rank], device)
        self.step, self.counts = int(meta["step"]), {**self.counts, **meta["counts"]}
        changes = config_changes(meta["config"], self.cfg)
        if changes and self.main:
            log.warning("resume: changed versus the checkpoint's config: %s", ", ".join(changes))
        for g in self.opt.param_groups:                # the config's optimiser settings win on resume
            g.update(betas=(T["beta1"], T["beta2"]), eps=T["adam_eps"], weight_decay=T["weight_decay"],
                     foreach=True, fused=None)
        self.resumed_from = path

    def _checkpoint(self, name: str | None = None) -> str | None:
        """Save the full training state (a collective: every rank calls it); the path on rank 0."""
        self.ckpt_step = self.step
        rng = _rng_states(self.info, self.device, self.gens)
        if not self.main:
            return None
        tensors = {f"model/{k}": v.detach().to("cpu", copy=True).contiguous()
                   for k, v in self.model.state_dict().items()}
        state = {"ema": flatten_state(self.ema.state_dict(), "ema", tensors),
                 "optim": flatten_state(self.opt.state_dict(), "optim", tensors),
                 "rng": flatten_state(rng, "rng", tensors)}
        if self.phema is not None:
            state["phema"] = flatten_state(self.phema.state_dict(), "phema", tensors)
        meta = {**self.task.meta(), "task": self.task.name, "step": self.step, "config": self.cfg,
                "counts": self.counts, "state": state, "world_size": len(rng["data"])}
        path = os.path.join(self.run_dir, "checkpoints", name or f"ckpt_{self.step:08d}.safetensors")
        if os.path.isdir(path):
            log.warning("checkpoint %s not written: a directory of that name is in the way (move it away)", path)
            return None
        save_checkpoint(path, tensors, meta)
        if name is None:
            prune_checkpoints(self.run_dir, self.T["keep"])
        return path

    # --- the loop ----------------------------------------------------------------------------------------
    def _train(self) -> TrainResult:
        self._setup()
        self.first_step = self.step
        if self.resume_state is not None and self.step >= self.T["steps"]:
            return self._nothing_to_do()
        T, info, device, task, model, ema, opt = self.T, self.info, self.device, self.task, self.model, self.ema, self.opt
        net = D.wrap(model, info, device)
        main, run_dir = self.main, self.run_dir
        if main:
            os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
            os.makedirs(os.path.join(run_dir, "samples"), exist_ok=True)
            save_toml(self.cfg, os.path.join(run_dir, "config.toml"))
        self.log_path = os.path.join(run_dir, "log.csv")
        self.fields = [*_LOG_FIELDS, *(task.eval_fields if T["eval_every"] else ())]
        # a resume drops the rows logged after its checkpoint; a new run starts a new log (never appends to
        # the log of an earlier run into this directory that was stopped before its first checkpoint)
        self.rows, self.log_after = [], self.step if self.resume_state is not None else 0
        if main and self.resume_state is None and os.path.exists(self.log_path):
            log.warning("run directory %s: starting a new log.csv (the earlier one is of a run that left no "
                        "checkpoint)", run_dir)
        params = [p for p in model.parameters() if p.requires_grad]
        clip = T["grad_clip"] if T["grad_clip"] >= 0 else math.inf
        from tqdm.auto import tqdm
        bar = tqdm(total=T["steps"], initial=self.step, disable=not (self.show and main), desc="training",
                   dynamic_ncols=True)
        streak, window, last_loss, interrupted = 0, [], None, None
        existing = list_checkpoints(run_dir)
        last_ckpt = existing[-1][1] if existing else None
        self.ckpt_step = existing[-1][0] if existing else -1
        self.best = None
        with _StopSignals() as stop:
            while self.step < T["steps"]:
                model.train()
                # linear warm-up: lr_k = lr min(k / warmup, 1)   (score_sde optimization_manager)
                lr = T["lr"] * min((self.step + 1) / T["warmup"], 1.0) if T["warmup"] > 0 else T["lr"]
                for g in opt.param_groups:
                    g["lr"] = lr
                with autocast(device, T["amp"]):
                    loss = task.loss(net, self.gens["data"], self.gens["noise"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(params, clip)
                stats = torch.stack([loss.detach().float(), gnorm.detach().float().to(loss.device),
                                     torch.tensor(float(stop.signame is not None), device=loss.device)])
                stats = D.all_reduce_sum(stats, info).tolist()     # one host sync per step, for all ranks
                loss_v, gnorm_v = stats[0] / info.world_size, stats[1] / info.world_size
                if math.isfinite(loss_v) and math.isfinite(gnorm_v):
                    opt.step()
                    ema.update(model)
                    streak, last_loss = 0, loss_v
                    window.append(loss_v)
                else:
                    self.counts["skipped"], streak = self.counts["skipped"] + 1, streak + 1
                self.step += 1
                if self.phema is not None:
                    self.phema.update(model, self.step)
                bar.update(1)
                step = self.step
                if streak >= T["max_nonfinite"]:
                    self._flush_log()
                    bar.close()
                    raise TrainingError(
                        f"training stopped at step {step}: the loss was non-finite for {streak} steps in a row "
                        f"(lr {T['lr']:g}); the last good checkpoint is {last_ckpt or 'none (no checkpoint yet)'}. "
                        "Lower the learning rate or check the data.")
                if step % T["log_every"] == 0 or step == T["steps"]:
                    mean = sum(window) / len(window) if window else float("nan")
                    self.rows.append({"step": step, "loss": f"{mean:.6g}", "lr": f"{lr:.6g}",
                                      "grad_norm": f"{gnorm_v:.6g}", "skipped": self.counts["skipped"],
                                      "seconds": f"{time.perf_counter() - self.start:.2f}"})
                    bar.set_postfix(loss=f"{mean:.4f}")
                    window = []
                    self._flush_log()
                if stats[2] > 0:
                    interrupted = stop.signame or "SIGTERM"
                    break
                if step % T["ckpt_every"] == 0:
                    self._flush_log()
                    last_ckpt = self._checkpoint() or last_ckpt
                if T["sample_every"] and step % T["sample_every"] == 0 and main:
                    self._sample(os.path.join(run_dir, "samples", f"step_{step:08d}.png"), f"step {step}")
                if T["eval_every"] and step % T["eval_every"] == 0:
                    self._evaluate()
            bar.close()
            self._flush_log()
            # skipped steps leave the weights untouched, so a checkpoint after one is still a good one
            if self.ckpt_step != self.step:
                last_ckpt = self._checkpoint() or last_ckpt
            if self.phema is not None:
                self.phema.snapshot(self.step)
        return self._finish(last_ckpt, last_loss, interrupted)

    def _flush_log(self) -> None:
        if self.main and self.rows:
            append_log(self.log_path, self.fields, self.rows, self.log_after)
            self.log_after = None
        self.rows = []

    def _sample(self, path: str, title: str, progress: bool = False):
        """EMA samples of the task, drawn with a fresh generator (seeded by the config) and plotted."""
        g = torch.Generator(self.device).manual_seed(self.cfg["seed"])
        with self.ema.average_parameters(self.model):
            self.model.eval()
            x = self.task.sample(self.model, g, self.cfg["sample"]["n"], progress=progress)
        if x is not None:
            _check_finite_samples(x, title)
            self.task.plot(x, path, title)
        return x

    def _evaluate(self) -> None:
        """The task's metrics on EMA samples (on rank 0), logged; an improved figure of merit (the first of
        `eval_fields`, lower is better) is saved as checkpoints/best.safetensors."""
        improved = ""
        if self.main and self.task.eval_fields:
            g = torch.Generator(self.device).manual_seed(self.cfg["seed"] + 1)
            with self.ema.average_parameters(self.model):
                self.model.eval()
                m = self.task.evaluate(self.model, g)
            self.rows.append({"step": self.step, **{k: f"{m[k]:.6g}" for k in self.task.eval_fields if k in m}})
            self._flush_log()
            key = self.task.eval_fields[0]
            if key in m and math.isfinite(m[key]) and (self.best is None or m[key] < self.best[key]):
                self.best, improved = {"step": self.step, **m}, "best"
        if D.broadcast_str(improved, self.info, self.device):        # a collective: all ranks save
            ckpt_step = self.ckpt_step
            self._checkpoint("best.safetensors")
            self.ckpt_step = ckpt_step

    def _finish(self, last_ckpt, last_loss, interrupted) -> TrainResult:
        info, model, ema, task, run_dir = self.info, self.model, self.ema, self.task, self.run_dir
        result = TrainResult(run_dir, self.step, last_loss, 0.0, self.counts["skipped"], last_ckpt, interrupted,
                             rank=info.rank, resumed_from=self.resumed_from, steps_this_call=self.step - self.first_step)
        if self.dump_weights:
            digest = tensor_digests({f"w/{k}": v for k, v in model.state_dict().items()})["w"]
            atomic_write_bytes(os.path.join(run_dir, f"weights_rank{info.rank}.sha256"), digest.encode())
        if self.main and interrupted is None:
            plot_loss(self.log_path, os.path.join(run_dir, "loss.png"))
            t0 = time.perf_counter()
            result.samples_path = os.path.join(run_dir, "samples.png")
            weights = ", EMA" if self.T["ema_decay"] > 0 else ""       # ema_decay = 0: the raw weights
            x = self._sample(result.samples_path, f"{self.step} steps{weights}", progress=self.show)
            if x is not None:
                result.metrics["sample_seconds"] = round(time.perf_counter() - t0, 2)
                save_npy(os.path.join(run_dir, "samples.npy"), x)
                result.metrics.update(task.final_metrics(x))
            else:
                result.samples_path = None
        D.barrier(info, self.device)
        result.seconds = time.perf_counter() - self.start
        result.metrics.update(steps=self.step, final_loss=last_loss, skipped=self.counts["skipped"],
                              seconds=round(result.seconds, 2))
        if self.best is not None:
            result.metrics["best"] = self.best
        if self.main:
            atomic_write_bytes(os.path.join(run_dir, "metrics.json"), json.dumps(result.metrics, indent=1).encode())
        ema.copy_to(model)
        model.eval()
        result.model, result.sde = model, getattr(task, "sde", None)
        return result

    def _nothing_to_do(self) -> TrainResult:
        """A resume at or past train.steps: nothing is trained, sampled or written; the model has the EMA weights."""
        self.ema.copy_to(self.model)
        self.model.eval()
        return TrainResult(self.run_dir, self.step, None, time.perf_counter() - self.start, self.counts["skipped"],
                           self.resumed_from, rank=self.info.rank, resumed_from=self.resumed_from, model=self.model,
                           sde=getattr(self.task, "sde", None))


def _check_finite_samples(x: torch.Tensor, title: str) -> None:
    """Samples with NaN or inf are an error, never a plot (matplotlib would fail on the axis limits)."""
    bad = nonfinite_count(x)
    if bad:
        raise TrainingError(f"sampling at {title!r} produced {bad} non-finite values out of {x.numel()}: the model "
                            "or the sampler diverged (try more sampler steps, a lower lr or more training)")
