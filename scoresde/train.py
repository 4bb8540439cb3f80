"""The training loop as a library function: `scoresde.train(config)`.

Continuous-time denoising score matching (Song et al. 2021, "Score-Based Generative Modeling
through SDEs", arXiv:2011.13456, eq. 7) with the reference recipe: Adam with a linear learning-rate
warm-up, gradient-norm clipping, an exponential moving average of the weights used for sampling,
bf16 autocast on CUDA. A run directory holds the resolved `config.toml`, `log.csv`, `loss.png`,
`checkpoints/ckpt_<step>.safetensors` (the last few), sample plots and `samples.npy`.

Resuming is exact: every source of randomness is an explicit generator (data order, the loss's t
and z) or the torch CPU/CUDA RNG (dropout), and all of them are checkpointed with the optimizer and
EMA state, so on CPU 2k steps equal 1k steps + resume 1k, bit for bit. SIGTERM / Ctrl-C stop the
loop at the next step boundary with a checkpoint. A non-finite loss or gradient skips the update;
`max_nonfinite` in a row stop the run with `TrainingError`, leaving the last good checkpoint.
Under torchrun the same loop runs data-parallel (see `scoresde.distributed`).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from . import distributed as D
from .checkpoint import (CheckpointError, atomic_write_bytes, build_model, find_checkpoint, flatten_state,
                         list_checkpoints, prune_checkpoints, read_checkpoint, save_checkpoint, unflatten_state)
from .config import resolve, save_toml
from .data import Dataset, from_array, load_dataset

__all__ = ["train", "resolve_config", "TrainResult", "TrainingError"]

_SCORE_KEYS = ("parameterization", "conditioning", "scale_by_sigma")   # model.* keys for ScoreModel
_LOG_FIELDS = ["step", "loss", "lr", "grad_norm", "skipped", "seconds"]


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


def _run_dir(cfg: dict[str, Any]) -> str:
    if cfg["out"]:
        return cfg["out"]
    return os.path.join("runs", cfg["name"] or time.strftime("%Y%m%d-%H%M%S"))


def _load_data(cfg: dict[str, Any], data: Any) -> Dataset:
    d = cfg["data"]
    if data is None:
        return load_dataset(d["name"], size=d["size"], seed=cfg["seed"], normalize=d["normalize"],
                            image_size=d["image_size"], labels=d["labels"])
    if isinstance(data, Dataset):
        return data
    return from_array(data, name=d["name"], normalize=d["normalize"])


def _num_classes(cfg: dict[str, Any], ds: Dataset) -> int:
    """K of a class-conditional model (0: unconditional), checked against the data's labels;
    "auto" is resolved in `cfg` (K = the number of classes the labels name)."""
    K = cfg["model"].get("num_classes", 0)
    if not K:
        return 0
    if ds.labels is None:
        raise ValueError(f"model.num_classes = {K!r} needs labelled data, but data {ds.name!r} has no labels "
                         "(built-in mixture/moons/rings/digits, .npz key y or labels, image sub-folders); "
                         "set model.num_classes = 0 for an unconditional model")
    lo, hi = int(ds.labels.min()), int(ds.labels.max())
    if K == "auto":
        K = cfg["model"]["num_classes"] = max(hi + 1, len(ds.classes))
    if lo < 0 or hi >= K:
        raise ValueError(f"model.num_classes = {K}: data {ds.name!r} has labels in [{lo}, {hi}], expected "
                         f"[0, {K - 1}]; raise model.num_classes or use \"auto\"")
    return K


def _build(cfg: dict[str, Any], data_shape: tuple[int, ...], device: torch.device):
    """ScoreModel and SDE from the config's [sde] and [model] sections."""
    sde_kw = {k: v for k, v in cfg["sde"].items() if k != "name"}
    model_kw = {k: v for k, v in cfg["model"].items() if k != "name" and k not in _SCORE_KEYS
                and not (k == "num_classes" and not v)}           # num_classes = 0: unconditional
    score_kw = {k: v for k, v in cfg["model"].items() if k in _SCORE_KEYS}
    meta = {"sde": {"name": cfg["sde"]["name"], "config": sde_kw},
            "model": {"name": cfg["model"]["name"], "config": {**model_kw, "data_shape": list(data_shape)},
                      "score_config": score_kw}, "data_shape": list(data_shape)}
    model, sde = build_model(meta)
    return model.to(device), sde


def _weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _rng_states(info, device, data_gen, noise_gen) -> dict[str, Any]:
    """Every rank's RNG states, gathered (a collective: all ranks call it)."""
    states = {"torch": torch.get_rng_state(), "data": data_gen.get_state(), "noise": noise_gen.get_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return {k: D.all_gather_bytes(v, info, device) for k, v in states.items()}


def _save(run_dir, step, cfg, model, ema, opt, rng, counts, meta_model) -> str:
    tensors: dict[str, torch.Tensor] = {f"model/{k}": v.detach().to("cpu", copy=True).contiguous()
                                        for k, v in model.state_dict().items()}
    state = {"ema": flatten_state(ema.state_dict(), "ema", tensors),
             "optim": flatten_state(opt.state_dict(), "optim", tensors),
             "rng": flatten_state(rng, "rng", tensors)}
    meta = {**meta_model, "step": step, "config": cfg, "counts": counts, "state": state,
            "world_size": len(rng["data"])}
    path = os.path.join(run_dir, "checkpoints", f"ckpt_{step:08d}.safetensors")
    save_checkpoint(path, tensors, meta)
    prune_checkpoints(run_dir, cfg["train"]["keep"])
    return path


def _append_log(path: str, rows: list[dict[str, Any]], resume_step: int | None) -> None:
    """Append rows to the CSV log; on resume first drop rows logged after the checkpoint."""
    if resume_step is not None and os.path.exists(path):
        with open(path, newline="") as f:
            kept = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        _write_log(path, kept, "w")
    _write_log(path, rows, "a")


def _write_log(path: str, rows: list[dict[str, Any]], mode: str) -> None:
    new = mode == "w" or not os.path.exists(path)
    with open(path, mode, newline="") as f:
        w = csv.DictWriter(f, fieldnames=_LOG_FIELDS)
        if new:
            w.writeheader()
        w.writerows(rows)


def _sample_and_plot(model, sde, ds: Dataset, cfg, path: str, title: str) -> torch.Tensor:
    from .plotting import plot_samples
    s = cfg["sample"]
    g = torch.Generator(next(model.parameters()).device).manual_seed(cfg["seed"])
    x = sde.sample(model, (s["n"], *ds.shape), sampler=s["sampler"], steps=s["steps"], generator=g,
                   device=next(model.parameters()).device)
    plot_samples(x.cpu(), path, data=ds.x, title=title)
    return x.cpu()


def _check_names(cfg: dict[str, Any]) -> None:
    """Registry names of the config exist (KeyError listing the known names otherwise)."""
    from .nets import MODELS
    from .samplers import SAMPLERS
    from .sde import SDES
    SDES[cfg["sde"]["name"]], MODELS[cfg["model"]["name"]], SAMPLERS[cfg["sample"]["sampler"]]


def resolve_config(config: Any = None, *, out: str | None = None, resume: bool = False, _read: bool = False):
    """The resolved config `train` would use (over the checkpoint's config on `resume`), validated."""
    overrides = {"out": out} if out else {}
    ckpt_tensors = ckpt_meta = None
    if resume:
        first = resolve(config, overrides)
        if not (first["out"] or first["name"]):
            raise ValueError("resume: name the run directory to continue with --out DIR (or --name NAME)")
        ckpt_tensors, ckpt_meta = read_checkpoint(find_checkpoint(_run_dir(first)))
        cfg = resolve(config, overrides, base=ckpt_meta["config"])
    else:
        cfg = resolve(config, overrides)
    _check_names(cfg)
    return (cfg, ckpt_tensors, ckpt_meta) if _read else cfg


def train(config: Any = None, *, data: Any = None, out: str | None = None, resume: bool = False,
          progress: bool | None = None, dump_weights: bool = False) -> TrainResult:
    """Train a score model; returns a `TrainResult` (the model with EMA weights, paths, metrics).

    Args:
        config: a TOML path or a (partial) nested dict over `scoresde.config.DEFAULTS`, e.g.
            {"data": {"name": "moons"}, "train": {"steps": 2000}}. On `resume` it is merged over
            the checkpoint's config instead (so {"train": {"steps": 4000}} extends a run).
        data: optional array/tensor (N, *D) or `Dataset` to train on instead of `config.data.name`.
        out: run directory (default `config.out`, else runs/<name or timestamp>).
        resume: continue from the latest checkpoint in the run directory.
        progress: progress bar (default `config.train.progress`).
        dump_weights: every rank writes the SHA-256 of its weights to `weights_rank<r>.sha256`.
    Raises:
        ValueError / TypeError / KeyError / FileNotFoundError for bad configs or data,
        CheckpointError for an unusable checkpoint, TrainingError when the loss stays non-finite.
    """
    from .ema import EMA
    from .losses import dsm_loss
    from .nets.cuda import autocast

    start = time.perf_counter()
    cfg, ckpt_tensors, ckpt_meta = resolve_config(config, out=out, resume=resume, _read=True)
    info, device = D.setup(cfg["device"])
    threads = torch.get_num_threads()
    try:
        return _train(cfg, data, resume, progress, dump_weights, info, device, ckpt_tensors, ckpt_meta, start,
                      EMA, dsm_loss, autocast)
    finally:
        torch.set_num_threads(threads)
        D.teardown(info)


def _train(cfg, data, resume, progress, dump_weights, info, device, ckpt_tensors, ckpt_meta, start,
           EMA, dsm_loss, autocast) -> TrainResult:
    from .guidance import conditional_dsm_loss
    T = cfg["train"]
    run_dir = D.broadcast_str(os.path.abspath(_run_dir(cfg)), info, device)
    if not resume and list_checkpoints(run_dir):
        raise ValueError(f"run directory {run_dir!r} already holds checkpoints; pass --resume to continue it "
                         "or choose another --out")
    ds = _load_data(cfg, data)
    if device.type == "cpu" and (cfg["threads"] or math.prod(ds.shape) <= 256):
        torch.set_num_threads(cfg["threads"] or 1)
    K = _num_classes(cfg, ds)
    torch.manual_seed(cfg["seed"])                                     # weights: same on every rank
    model, sde = _build(cfg, ds.shape, device)
    meta_model = {"model": {"name": cfg["model"]["name"], "config": model.net.config,
                            "score_config": model.config()},
                  "sde": {"name": cfg["sde"]["name"], "config": sde.config()},
                  "data_shape": list(ds.shape), "data": {"name": ds.name, "kind": ds.kind, "classes": ds.classes}}
    opt = torch.optim.Adam(model.parameters(), lr=T["lr"], betas=(T["beta1"], T["beta2"]), eps=T["adam_eps"],
                           weight_decay=T["weight_decay"])
    ema = EMA(model, decay=T["ema_decay"])
    data_gen = torch.Generator().manual_seed(cfg["seed"] + info.rank)
    noise_gen = torch.Generator(device).manual_seed(cfg["seed"] + 7919 * (info.rank + 1))
    step, skipped = 0, 0
    if ckpt_meta is not None:
        st = ckpt_meta["state"]
        try:
            model.load_state_dict({k[6:]: v for k, v in ckpt_tensors.items() if k.startswith("model/")})
            ema.load_state_dict(unflatten_state(st["ema"], ckpt_tensors))
            opt.load_state_dict(unflatten_state(st["optim"], ckpt_tensors))
            rng = unflatten_state(st["rng"], ckpt_tensors)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint in {run_dir!r} does not match the configured model "
                                  f"({str(e).splitlines()[0]})") from None
        if len(rng["data"]) != info.world_size:
            raise ValueError(f"resume: the checkpoint was written by {len(rng['data'])} processes, this run has "
                             f"{info.world_size}; resume with the same number of processes")
        torch.set_rng_state(rng["torch"][info.rank])
        data_gen.set_state(rng["data"][info.rank])
        noise_gen.set_state(rng["noise"][info.rank])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"][info.rank], device)
        step, skipped = int(ckpt_meta["step"]), int(ckpt_meta["counts"]["skipped"])
        for g in opt.param_groups:                    # the config's optimiser settings win on resume
            g.update(betas=(T["beta1"], T["beta2"]), eps=T["adam_eps"], weight_decay=T["weight_decay"])
    net = D.wrap(model, info, device)
    x_all = ds.x.to(device)
    y_all = ds.labels.to(device) if K else None
    main = info.is_main
    if main:
        os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
        os.makedirs(os.path.join(run_dir, "samples"), exist_ok=True)
        save_toml(cfg, os.path.join(run_dir, "config.toml"))
    log_path = os.path.join(run_dir, "log.csv")
    rows: list[dict[str, Any]] = []
    first_log = step if resume else None
    params = [p for p in model.parameters() if p.requires_grad]
    clip = T["grad_clip"] if T["grad_clip"] >= 0 else math.inf
    show = (T["progress"] if progress is None else progress) and main
    from tqdm.auto import tqdm
    bar = tqdm(total=T["steps"], initial=step, disable=not show, desc="training", dynamic_ncols=True)
    streak, window, last_loss, last_ckpt, interrupted = 0, [], None, None, None
    existing = list_checkpoints(run_dir)
    last_ckpt = existing[-1][1] if existing else None

    ckpt_step = existing[-1][0] if existing else -1

    def checkpoint() -> str | None:
        nonlocal ckpt_step
        ckpt_step = step                                        # the same on every rank
        rng = _rng_states(info, device, data_gen, noise_gen)    # a collective
        if not main:
            return None
        return _save(run_dir, step, cfg, model, ema, opt, rng, {"skipped": skipped}, meta_model)

    def flush_log():
        nonlocal rows, first_log
        if main and rows:
            _append_log(log_path, rows, first_log)
            first_log = None
        rows = []

    with _StopSignals() as stop:
        while step < T["steps"]:
            model.train()
            # linear warm-up: lr_k = lr min(k / warmup, 1)   (score_sde optimization_manager)
            lr = T["lr"] * min((step + 1) / T["warmup"], 1.0) if T["warmup"] > 0 else T["lr"]
            for g in opt.param_groups:
                g["lr"] = lr
            idx = torch.randint(len(ds), (T["batch_size"],), generator=data_gen).to(device)
            x0 = x_all[idx]
            loss_kw = dict(likelihood_weighting=T["likelihood_weighting"], eps=T["loss_eps"], generator=noise_gen)
            with autocast(device, T["amp"]):
                if K:        # label dropout draws from noise_gen first, so resume stays exact
                    loss = conditional_dsm_loss(net, sde, x0, y_all[idx], p_uncond=T["p_uncond"],
                                                num_classes=K, **loss_kw)
                else:
                    loss = dsm_loss(net, sde, x0, **loss_kw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, clip)
            stats = torch.stack([loss.detach().float(), gnorm.detach().float().to(loss.device),
                                 torch.tensor(float(stop.signame is not None), device=loss.device)])
            stats = D.all_reduce_sum(stats, info).tolist()
            loss_v, gnorm_v = stats[0] / info.world_size, stats[1] / info.world_size
            if math.isfinite(loss_v) and math.isfinite(gnorm_v):
                opt.step()
                ema.update(model)
                streak, last_loss = 0, loss_v
                window.append(loss_v)
            else:
                skipped, streak = skipped + 1, streak + 1
            step += 1
            bar.update(1)
            if streak >= T["max_nonfinite"]:
                flush_log()
                bar.close()
                raise TrainingError(
                    f"training stopped at step {step}: the loss was non-finite for {streak} steps in a row "
                    f"(lr {T['lr']:g}); the last good checkpoint is {last_ckpt or 'none (no checkpoint yet)'}. "
                    "Lower the learning rate or check the data.")
            if step % T["log_every"] == 0 or step == T["steps"]:
                mean = sum(window) / len(window) if window else float("nan")
                rows.append({"step": step, "loss": f"{mean:.6g}", "lr": f"{lr:.6g}", "grad_norm": f"{gnorm_v:.6g}",
                             "skipped": skipped, "seconds": f"{time.perf_counter() - start:.2f}"})
                bar.set_postfix(loss=f"{mean:.4f}")
                window = []
                flush_log()
            if stats[2] > 0:
                interrupted = stop.signame or "SIGTERM"
                break
            if step % T["ckpt_every"] == 0:
                flush_log()
                last_ckpt = checkpoint() or last_ckpt
            if T["sample_every"] and step % T["sample_every"] == 0 and main:
                with ema.average_parameters(model):
                    model.eval()
                    _sample_and_plot(model, sde, ds, cfg, os.path.join(run_dir, "samples", f"step_{step:08d}.png"),
                                     f"step {step}")
        bar.close()
        flush_log()
        # skipped steps leave the weights untouched, so a checkpoint after one is still a good one
        if ckpt_step != step:
            last_ckpt = checkpoint() or last_ckpt
    result = TrainResult(run_dir, step, last_loss, 0.0, skipped, last_ckpt, interrupted, rank=info.rank)
    if dump_weights:
        atomic_write_bytes(os.path.join(run_dir, f"weights_rank{info.rank}.sha256"),
                           _weights_digest(model).encode())
    if main and interrupted is None:
        from .plotting import plot_loss
        plot_loss(log_path, os.path.join(run_dir, "loss.png"))
        with ema.average_parameters(model):
            model.eval()
            t0 = time.perf_counter()
            result.samples_path = os.path.join(run_dir, "samples.png")
            x = _sample_and_plot(model, sde, ds, cfg, result.samples_path, f"{ds.name}: {step} steps, EMA")
            result.metrics["sample_seconds"] = round(time.perf_counter() - t0, 2)
        import numpy as np
        buf = __import__("io").BytesIO()
        np.save(buf, x.numpy())
        atomic_write_bytes(os.path.join(run_dir, "samples.npy"), buf.getvalue())
        if ds.mixture is not None:
            from .analytic import mode_stats
            tv, std_err = mode_stats(ds.mixture, x)
            result.metrics.update(mode_weight_tv=round(tv, 4), within_mode_std_error=round(std_err, 4))
    D.barrier(info, device)
    result.seconds = time.perf_counter() - start
    result.metrics.update(steps=step, final_loss=last_loss, skipped=skipped, seconds=round(result.seconds, 2))
    if main:
        atomic_write_bytes(os.path.join(run_dir, "metrics.json"), json.dumps(result.metrics, indent=1).encode())
    ema.copy_to(model)
    model.eval()
    result.model, result.sde = model, sde
    return result
