"""`scoresde train` and `scoresde train-autoencoder`: build a config (TOML file <- flags <- --set) and run
the training engine (`scoresde.training.api.train`); both share one body, `run_training`.

train-autoencoder trains the first stage of latent diffusion (Rombach et al. 2022, arXiv:2112.10752). It is a
command of its own rather than a flag of `train`: the autoencoder has its own options (downsampling, latent
channels, KL and discriminator weights), its own defaults (the `autoencoder` task's: digits32, Adam 1e-3, no
EMA, no clipping) and its own output (reconstructions and a latent scale factor, not samples). It only builds
a config with `task = "autoencoder"`, so a TOML file with `task = "autoencoder"` trains the same thing
through `scoresde train --config`.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import click

from scoresde._common.toml import load_toml, to_toml
from scoresde.cli.common import allow_unverified_option, names, user_errors
from scoresde.runs.plots import metrics_summary
from scoresde.training.api import resolve_config, train as run
from scoresde.training.engine import TrainResult
from scoresde.training.config import DEFAULTS, parse_override, set_dotted


__all__ = ["train", "train_autoencoder", "run_training", "run_options"]


def run_options(f):
    """--resume, --allow-unverified, --progress and --dry-run: the options every train command has."""
    f = click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")(f)
    f = click.option("--progress/--no-progress", default=None, help="Progress bar with the loss.")(f)
    f = allow_unverified_option(f)
    return click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")(f)


def run_training(command: str, config_file: str | None, flags: dict[str, Any], sets: tuple[str, ...], *,
                 out: str | None, resume: bool, dry_run: bool, summary: Callable[[TrainResult], str],
                 task: str | None = None, dump_weights: bool = False, verify: bool = True) -> int:
    """The body of a train command: the config (TOML file, then the flags given, then --set KEY=VALUE), its
    resolved TOML with `dry_run`, else the run; `summary` gives the lines printed after it (rank 0)."""
    with user_errors():
        cfg: dict[str, Any] = load_toml(config_file) if config_file else {}
        for key, value in [*((k, v) for k, v in flags.items() if v is not None), *map(parse_override, sets)]:
            set_dotted(cfg, key, value)
        if task is not None and cfg.get("task") != task:
            raise ValueError(f"task: {command} trains task = \"{task}\", found {cfg.get('task')!r}")
        if dry_run:
            resolved = resolve_config(cfg, out=out, resume=resume, verify=verify)   # the task checks its data
            click.echo(to_toml(resolved), nl=False)
            return 0
        result = run(cfg, out=out, resume=resume, dump_weights=dump_weights, verify=verify)
        steps = cfg.get("train", {}).get("steps")
    if result.interrupted:
        click.echo(f"interrupted by {result.interrupted} at step {result.step}; checkpoint {result.checkpoint}\n"
                   f"resume with: scoresde {command} --out {result.run_dir} --resume", err=True)
        return 130 if result.interrupted == "SIGINT" else 0
    if result.rank != 0:           # the other ranks of a torchrun job stay quiet
        return 0
    if result.resumed_from and not result.steps_this_call:
        asked = f"--steps {steps} (the total to reach, not steps to add)" if steps is not None else "its train.steps"
        click.echo(f"nothing to do: {result.run_dir} is at step {result.step} ({result.resumed_from}), at or past "
                   f"{asked}; pass a larger --steps to continue. Nothing was trained, sampled or written.")
        return 0
    if result.resumed_from:
        click.echo(f"resumed at step {result.step - result.steps_this_call} from {result.resumed_from}")
    click.echo(summary(result))
    return 0


def _trained(result: TrainResult) -> str:
    """"trained 6000 steps in 80.1 s", or on a resume "trained 4000 more steps (to step 8000) in 80.1 s"."""
    if result.resumed_from:
        return f"trained {result.steps_this_call} more steps (to step {result.step}) in {result.seconds:.1f} s"
    return f"trained {result.step} steps in {result.seconds:.1f} s"


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="TOML config; flags override it.")
@click.option("--task", type=click.Choice(["score", "masked", "autoregressive"]), show_default=DEFAULTS["task"],
              help="What is trained: a score model, a masked diffusion language model, or its autoregressive "
                   "baseline (both on tokens, options in [discrete]).")
@click.option("--data", metavar="NAME|PATH", show_default=DEFAULTS["data"]["name"],
              help="Built-in dataset (mixture, moons, swissroll, checkerboard, rings, digits, digits32; captioned: "
                   "digitpairs), a .npy/.npz array (N, *D) (captions: key text) or an image folder (captions: "
                   "metadata.jsonl/.csv with file_name, text); for --task masked: a language (brackets, sums), a text "
                   "file or a .npy array of token ids (N, L).")
@click.option("--sde", type=click.Choice(names("sde")), show_default=DEFAULTS["sde"]["name"], help="Forward SDE.")
@click.option("--model", type=click.Choice(names("model")), show_default=DEFAULTS["model"]["name"],
              help="Score network.")
@click.option("--steps", type=click.IntRange(min=1), show_default=str(DEFAULTS["train"]["steps"]),
              help="Training steps (the total, also when resuming).")
@click.option("--batch-size", type=click.IntRange(min=1), show_default=str(DEFAULTS["train"]["batch_size"]),
              help="Batch size per process.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), show_default=str(DEFAULTS["train"]["lr"]),
              help="Adam learning rate (after warm-up).")
@click.option("--sampler", type=click.Choice(names("sampler")), show_default=DEFAULTS["sample"]["sampler"],
              help="Sampler for the sample plots.")
@click.option("--seed", type=click.IntRange(min=0), show_default="0", help="Seed of weights, data order and noise.")
@click.option("--out", type=click.Path(file_okay=False), metavar="DIR", show_default="runs/<name or timestamp>",
              help="Run directory.")
@click.option("--name", help="Run name (run directory runs/NAME).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), show_default="auto")
@click.option("--autoencoder", metavar="RUN|DIR", show_default="none (pixel space)",
              help="Latent diffusion: train on the scaled latents of this autoencoder (a train-autoencoder run "
                   "or a diffusers AutoencoderKL directory); samples are decoded to images.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any config value, e.g. --set train.ema_decay=0.9999 --set model.width=256 (repeatable).")
@run_options
@click.option("--debug-dump-weights", is_flag=True, hidden=True)
def train(config_file, task, data, sde, model, steps, batch_size, lr, sampler, seed, out, name, device, autoencoder,
          sets, resume, allow_unverified, progress, dry_run, debug_dump_weights):
    """Train a model (a score model; --task masked: a masked diffusion LM); writes config.toml, checkpoints,
    log.csv, loss.png and samples.png.

    \b
    Examples:
      scoresde train --data digits --model ddpm_unet --steps 1500 --out runs/digits
      scoresde train --data points.npy --sde subvp --set model.width=256
      scoresde train --out runs/digits --resume --steps 6000     # continue to 6000 steps
      torchrun --nproc-per-node=2 -m scoresde train --data moons  # data-parallel
      scoresde train --task masked --data brackets --out runs/brackets
      scoresde train --task masked --data poems.txt --set model.width=256 --out runs/poems
    """
    flags = {"task": task, "data.name": data, "sde.name": sde, "model.name": model, "train.steps": steps,
             "train.batch_size": batch_size, "train.lr": lr, "sample.sampler": sampler, "seed": seed,
             "name": name, "device": device, "train.progress": progress, "autoencoder": autoencoder}
    return run_training("train", config_file, flags, sets, out=out, resume=resume, dry_run=dry_run,
                        verify=not allow_unverified,
                        summary=_train_summary, dump_weights=debug_dump_weights)


def _train_summary(result: TrainResult) -> str:
    m = result.metrics
    extra = f", mode-weight TV {m['mode_weight_tv']:.3f}" if "mode_weight_tv" in m else ""
    extra += f", samples {metrics_summary(m)}" if "valid_fraction" in m else ""       # validity and diversity
    loss = f"{result.loss:.4f}" if result.loss is not None else "n/a"
    return (f"{_trained(result)}, final loss {loss}, {result.skipped} skipped{extra}\nrun directory: {result.run_dir}\n"
            f"checkpoint:    {result.checkpoint}\nsamples plot:  {result.samples_path}")


@click.command("train-autoencoder")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="TOML config; flags override it.")
@click.option("--data", metavar="NAME|PATH", show_default="digits32",
              help="Images: a built-in set (digits32, digits), a .npy/.npz array (N, C, H, W) or an image folder.")
@click.option("--downsample", type=click.Choice(["1", "2", "4", "8", "16", "32"]), metavar="F",
              show_default="4 (vae.ch_mult = [1, 2, 2])",
              help="Downsampling factor f = 2^k: sets vae.ch_mult to [1, 2, ..., 2] (k twos).")
@click.option("--latent-channels", type=click.IntRange(min=1), show_default="4", help="Latent channels c.")
@click.option("--ch", type=click.IntRange(min=1), show_default="32", help="Base width of the autoencoder.")
@click.option("--loss", type=click.Choice(["l1", "l2"]), show_default="l1", help="Reconstruction loss.")
@click.option("--kl-weight", type=click.FloatRange(min=0), show_default="1e-06", help="Weight of the KL term.")
@click.option("--disc-weight", type=click.FloatRange(min=0), show_default="0 (no discriminator)",
              help="Patch-discriminator loss weight (LDM's adaptive weight times this).")
@click.option("--disc-start", type=click.IntRange(min=0), show_default="0", help="Step the discriminator starts at.")
@click.option("--steps", type=click.IntRange(min=1), show_default="3000", help="Training steps (the total).")
@click.option("--batch-size", type=click.IntRange(min=1), show_default="64", help="Batch size per process.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), show_default="0.001", help="Adam learning rate.")
@click.option("--seed", type=click.IntRange(min=0), show_default="0")
@click.option("--out", type=click.Path(file_okay=False), metavar="DIR", show_default="runs/<name or timestamp>",
              help="Run directory.")
@click.option("--name", help="Run name (run directory runs/NAME).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), show_default="auto")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any config value, e.g. --set vae.num_res_blocks=2 --set vae.ch_mult=[1,2,4] (repeatable).")
@run_options
def train_autoencoder(config_file, data, downsample, latent_channels, ch, loss, kl_weight, disc_weight, disc_start,
                      steps, batch_size, lr, seed, out, name, device, sets, resume, allow_unverified, progress, dry_run):
    """Train a KL-regularised autoencoder (LDM's first stage) for latent diffusion.

    Writes checkpoints (with the measured latent scale factor), log.csv (with reconstruction MSE and PSNR
    at train.eval_every), loss.png and samples.png (data above reconstructions).

    \b
    Examples:
      scoresde train-autoencoder --data digits32 --downsample 4 --latent-channels 4 --out runs/ae
      scoresde train --autoencoder runs/ae --data digits32 --model ddpm_unet --out runs/latent
      scoresde sample --checkpoint runs/latent --n 64 --out latent.png
    """
    k = int(math.log2(int(downsample))) if downsample else None
    flags = {"task": "autoencoder", "data.name": data, "vae.ch_mult": None if k is None else [1] + [2] * k,
             "vae.z_channels": latent_channels, "vae.ch": ch, "vae.loss": loss, "vae.kl_weight": kl_weight,
             "vae.disc_weight": disc_weight, "vae.disc_start": disc_start, "train.steps": steps,
             "train.batch_size": batch_size, "train.lr": lr, "seed": seed, "name": name, "device": device,
             "train.progress": progress}
    return run_training("train-autoencoder", config_file, flags, sets, out=out, resume=resume, dry_run=dry_run,
                        verify=not allow_unverified,
                        summary=_autoencoder_summary, task="autoencoder")


def _autoencoder_summary(result: TrainResult) -> str:
    m = result.metrics
    loss = f"{result.loss:.4f}" if result.loss is not None else "n/a"
    return (f"{_trained(result)}, final loss {loss}, reconstruction PSNR "
            f"{m['psnr']:.2f} dB (MSE {m['rec_mse']:.5f}), latent scale factor {m['scale_factor']:.5f}\n"
            f"run directory:   {result.run_dir}\ncheckpoint:      {result.checkpoint}\n"
            f"reconstructions: {result.samples_path}\n"
            f"latent diffusion on it: scoresde train --autoencoder {result.run_dir} --data <the same images> "
            "--model ddpm_unet")
