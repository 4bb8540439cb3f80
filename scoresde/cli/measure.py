"""`scoresde likelihood` and `scoresde evaluate`: the commands that measure a model or its samples.

- likelihood: log p(x) under the probability-flow ODE (Song et al. 2021, arXiv:2011.13456, Sec. 4.3),
  in nats and bits/dim; for sequence runs the NELBO bound of masked diffusion (Sahoo et al. 2024,
  arXiv:2406.07524) or the exact NLL of the autoregressive baseline.
- evaluate: FID (Heusel et al. 2017, arXiv:1706.08500), KID (Binkowski et al. 2018, arXiv:1801.01401),
  precision/recall (Kynkaanniemi et al. 2019, arXiv:1904.06991) and IS in a feature network's features.
"""
from __future__ import annotations

import json
import math
import os
import time

import click
import numpy as np
import torch

from scoresde._common.distributed import resolve_device
from scoresde._common.files import atomic_write_bytes, save_npy
from scoresde._common.limits import sample_batch
from scoresde._common.threads import SMALL_EXAMPLE, thread_policy
from scoresde._common.toml import load_toml
from scoresde.cli.common import (MODEL_FLAGS, ModelSource, allow_unverified_option, device_option, model_options,
                                 user_errors)
from scoresde.cli.tokens import SEQUENCE_TASKS, likelihood_tokens
from scoresde.data.datasets import load_dataset
from scoresde.evaluation.likelihood import dataset_likelihood
from scoresde.evaluation.metrics.files import evaluate_files
from scoresde.evaluation.metrics.features import FEATURE_DIMS
from scoresde.runs.checkpoint import checkpoint_task, list_checkpoints
from scoresde.samplers.core import SAMPLERS, list_samplers


__all__ = ["likelihood", "evaluate"]


@click.command()
@model_options
@click.option("--data", required=True, metavar="NAME|PATH", help="Dataset to score (as for train).")
@click.option("--n", "n", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Score at most this many examples.")
@click.option("--batch-size", type=click.IntRange(min=1), show_default="all --n examples in one solve for "
              "examples of <= 256 values, else 256", help="Examples per ODE solve.")
@click.option("--tol", type=click.FloatRange(min=0, min_open=True, max=1, max_open=True), default=1e-4,
              show_default=True, help="rtol = atol of the RK45 solve (1e-5: score_sde's; 1e-4 is as accurate "
              "on the benchmark mixture and ~2x faster).")
@click.option("--divergence", type=click.Choice(["auto", "exact", "hutchinson"]), default="auto", show_default=True,
              help="auto: exact for up to 16 dimensions, else Hutchinson.")
@click.option("--draws", type=click.IntRange(min=1), default=16, show_default=True,
              help="Sequence runs (masked): mask draws per sequence for the NELBO bound.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@device_option
@allow_unverified_option
def likelihood(checkpoint, config, data, n, batch_size, tol, divergence, draws, seed, device, allow_unverified):
    """Log-likelihood (nats) and bits/dim of data under the probability-flow ODE; for a sequence run, the
    NELBO bound (masked) or the exact NLL (autoregressive) in nats and bits per token, and the perplexity.

    \b
    Examples:
      scoresde likelihood --checkpoint runs/moons --data moons --n 500
      scoresde likelihood --checkpoint checkpoint_26.pth --config vp/cifar10_ddpmpp_continuous \\
                          --data cifar10_test.npy --n 100
      scoresde likelihood --checkpoint runs/poems --data heldout.txt     # a sequence run: the NELBO bound
    """
    with user_errors(MODEL_FLAGS):
        if checkpoint_task(checkpoint) in SEQUENCE_TASKS:
            click.echo(likelihood_tokens(checkpoint, data, n=n, batch_size=batch_size or 256, draws=draws, seed=seed,
                                         device=device, verify=not allow_unverified))
            return
        dev = resolve_device(device)
        source = ModelSource.parse(checkpoint, config, verify=not allow_unverified)
        if source.pretrained:
            model, sde = source.open(dev)[:2]
            shape = tuple(model.data_shape)
            ds = load_dataset(data, size=n, seed=seed + 1, image_size=shape[-1] if len(shape) == 3 else 0)
        else:
            ds = load_dataset(data, size=n, seed=seed + 1)
            model, sde = source.open(dev)[:2]
        ae, levels, note = getattr(model, "autoencoder", None), ds.levels, ""
        if ae is not None:           # a latent model: the density of the encoded data, in latent space
            ae.check_fits(ds.shape, f"--data {data!r}")
            x, levels = ae.encode_all(ds.x[:n], batch_size or 256)[0].cpu(), None
            note = ("; LATENT SPACE: the log-density of the autoencoder's scaled posterior means, per latent "
                    "dimension, not a likelihood of the images")
        elif tuple(ds.shape) != tuple(model.data_shape):
            raise ValueError(f"--data {data!r}: examples of shape {tuple(ds.shape)}, the model was trained on "
                             f"{tuple(model.data_shape)}")
        else:
            x = ds.x[:n]
        data_range = (-1.0, 1.0)                                  # images are loaded in [-1, 1]
        if source.pretrained and hasattr(model, "from_unit"):            # score_sde's data space ([0, 1] for VE)
            x, data_range = model.from_unit((x + 1) / 2), tuple(model.data_range)
        div = divergence if divergence != "auto" else ("exact" if x[0].numel() <= 16 else "hutchinson")
        # one solve for small examples (the batch shares its steps, so two solves cost twice the NFE), up to
        # `sample_batch` of them (memory: one solve holds the network's activations of its whole batch)
        batch_size = batch_size or (min(len(x), sample_batch(x.shape[1:])) if x[0].numel() <= SMALL_EXAMPLE else 256)
        with thread_policy(x.shape[1:], dev):
            r = dataset_likelihood(model, sde, x, batch_size, divergence=div, levels=levels, rtol=tol, atol=tol,
                                   data_range=data_range, generator=torch.Generator(dev).manual_seed(seed),
                                   device=dev, progress=True)
    click.echo(f"{len(x)} examples: {r['mean_nats']:.4f} nats, {r['mean_bpd']:.4f} +- {r['stderr_bpd']:.4f} "
               f"bits/dim ({div} divergence, tol {tol:g}, {r['nfe']} NFE, {r['seconds']:.1f} s){note}")


@click.command()
@click.argument("samples", metavar="SAMPLES")
@click.option("--ref", metavar="NAME|PATH", show_default="the run's training data for a run directory",
              help="Reference: built-in dataset, .npy/.npz array, image folder, or statistics .npz (mu, sigma; "
                   "pytorch-fid / EDM format; FID only).")
@click.option("--features", type=click.Choice(["inception", "digits"]), show_default="digits for 1x8x8 data, "
              "else inception", help="Feature network.")
@click.option("--inception-weights", type=click.Path(dir_okay=False), metavar="PATH",
              envvar="SCORESDE_INCEPTION_WEIGHTS", show_envvar=True,
              help="FID Inception-v3 weights, pt_inception-2015-12-05-6726825d.pth.")
@click.option("--metrics", "metric_names", default="fid,kid,pr", show_default=True,
              help="Comma-separated: fid, kid, pr (precision/recall), is (Inception Score), acc (class accuracy).")
@click.option("--label", metavar="CLASS", type=click.IntRange(min=0),
              help="All samples are of this class (from sample --label): reports class accuracy.")
@click.option("--n", "n", type=click.IntRange(min=1),
              help="Use the first N samples (default: all); a run directory with fewer draws N (default: as many "
                   "as the metrics need, 2000 or twice the feature dimensions).")
@click.option("--sampler", type=click.Choice(list_samplers()), default="dpm_solver", show_default=True,
              help="A run directory without enough samples: the sampler of its draws.")
@click.option("--steps", type=click.IntRange(min=1), default=20, show_default=True,
              help="A run directory without enough samples: the sampler's steps.")
@click.option("--batch-size", type=click.IntRange(min=1), show_default="64 inception, 1024 digits")
@click.option("--save-stats", type=click.Path(dir_okay=False), metavar="OUT.npz",
              help="Write mu and sigma of SAMPLES' features (reference statistics); --ref is then optional.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also write the results as JSON.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of KID's subsets.")
@device_option
@click.option("--progress/--no-progress", default=True, show_default=True)
def evaluate(samples, ref, features, inception_weights, metric_names, label, n, sampler, steps, batch_size, save_stats,
             json_out, seed, device, progress):
    """Sample quality: FID, KID, precision/recall, IS, class accuracy in a feature network's features.

    SAMPLES is a .npy/.npz array (N, C, H, W) in [-1, 1] or uint8, an image folder, a built-in dataset, or a
    training run directory: its samples.npy (the end-of-training samples) when it holds enough, else samples
    drawn from its latest checkpoint with a fast sampler (--sampler, --steps; --n of them, by default as many as
    the metrics need), kept in RUN/samples/ for the next call. FID needs more samples than feature dimensions
    (digits: 64, inception: 2048).

    \b
    Examples:
      scoresde evaluate runs/digits                              # its samples vs the digits, digits features
      scoresde evaluate samples.npy --ref digits --json quality.json
      scoresde evaluate cifar_train/ --save-stats cifar_ref.npz --inception-weights pt_inception.pth
      scoresde evaluate samples.npz --ref cifar_ref.npz --metrics fid --inception-weights pt_inception.pth
    """
    with user_errors():
        for flag, path in (("--save-stats", save_stats), ("--json", json_out)):
            if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
                raise FileNotFoundError(f"{flag} {path!r}: the directory does not exist")
        fid = bool(save_stats) or "fid" in [m.strip() for m in metric_names.split(",")]
        drawn = _run_samples(samples, n, fid, features, sampler, steps, seed, device, progress) if _is_run(samples) else None
        if drawn is not None:
            samples, ref = drawn, ref or load_toml(os.path.join(samples, "config.toml"))["data"]["name"]
        r = evaluate_files(samples, ref, features=features, inception_weights=inception_weights, metrics=metric_names,
                           label=label, n=n, batch_size=batch_size, save_stats=save_stats, seed=seed,
                           device=resolve_device(device), progress=progress)
    if save_stats:
        click.echo(f"wrote statistics of {r['n']} x {r['dims']} {r['features']} features of {r['samples']} to "
                   f"{save_stats}")
    if r["metrics"] is None:
        return 0
    result = r["metrics"]
    lines = [f"samples:   {r['samples']}", f"reference: {r['reference']}",
             f"features:  {r['features']} ({r['dims']} dims)"]
    for key, value in result.items():
        if key.endswith("_std"):
            continue
        std = result.get(f"{key}_std")
        lines.append(f"  {key:<15} {value:.6g}" + (f" +- {std:.3g}" if std is not None else ""))
    click.echo("\n".join(lines))
    if json_out:
        atomic_write_bytes(json_out, json.dumps(r, indent=1).encode())
    return 0


def _is_run(path: str) -> bool:
    """A training run directory with checkpoints of a score model (one evaluate can draw samples from)."""
    return (os.path.isfile(os.path.join(path, "config.toml")) and bool(list_checkpoints(path))
            and checkpoint_task(path) not in SEQUENCE_TASKS)


def _run_samples(run_dir: str, n: int | None, fid: bool, features: str | None, sampler: str, steps: int, seed: int,
                 device: str, progress: bool) -> str | None:
    """None when RUN/samples.npy holds enough samples (`n`, or more than the features' dimensions for `fid`);
    else the path of `n` samples (default max(2000, 2 F)) drawn from the run's latest checkpoint with `sampler`
    at `steps` (the count and an estimated time printed first), kept as RUN/samples/evaluate-*.npy and reused."""
    path, why = os.path.join(run_dir, "samples.npy"), f"{run_dir} has no samples.npy"
    if os.path.isfile(path):
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        kind = features or ("digits" if tuple(arr.shape[1:]) == (1, 8, 8) else "inception")
        if len(arr) >= (n or (FEATURE_DIMS[kind] + 1 if fid else 1)):
            return None
        dims = FEATURE_DIMS[kind]
        why = f"{path} holds {len(arr)} samples; " + (f"--n {n} asked for" if n else
                                                      f"FID in {dims} {kind} features needs more than {dims}")
    dev = resolve_device(device)
    model, sde, file, meta = ModelSource(run_dir).open(dev)
    shape = tuple(meta.get("data", {}).get("image_shape") or model.data_shape)        # a latent run: its images
    count = n or max(2000, 2 * FEATURE_DIMS[features or ("digits" if shape == (1, 8, 8) else "inception")])
    name = os.path.basename(file).split(".")[0]
    out = os.path.join(run_dir, "samples", f"evaluate-{name}-{sampler}-{steps}-seed{seed}-{count}.npy")
    if os.path.isfile(out):
        click.echo(f"{why}; using the {count} samples drawn before, {out}")
        return out
    nfe, batch = SAMPLERS[sampler].nfe(steps), min(count, 500)
    ae = getattr(model, "autoencoder", None)
    g = torch.Generator(dev).manual_seed(seed)
    with torch.no_grad(), thread_policy(model.data_shape, dev, meta["config"].get("threads", 0)):
        x = torch.randn(batch, *model.data_shape, generator=g, device=dev)
        t = torch.full((batch,), sde.T / 2, device=dev)
        model(x, t)                                               # warm-up, then one timed score evaluation
        t0 = time.perf_counter()
        model(x, t).flatten()[0].item()                           # .item(): waits for an asynchronous device
        eta = (time.perf_counter() - t0) * (nfe or 0) * math.ceil(count / batch)
        eta = ("time unknown (adaptive steps)" if nfe is None else "under a second" if eta < 1 else
               f"about {eta:.0f} s" if eta < 120 else f"about {eta / 60:.0f} min")
        click.echo(f"{why}; drawing {count} samples from {os.path.basename(file)} with {sampler}, {steps} steps "
                   f"({nfe if nfe is not None else 'adaptive'} score evaluations each; {eta})")
        parts = []
        for i in range(0, count, batch):
            z = sde.sample(model, min(batch, count - i), sampler=sampler, steps=steps, generator=g, device=dev,
                           progress=progress)
            parts.append((ae.decode_all(z) if ae is not None else z).cpu())
    os.makedirs(os.path.dirname(out), exist_ok=True)
    save_npy(out, torch.cat(parts))
    click.echo(f"wrote {out}")
    return out
