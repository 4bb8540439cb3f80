"""`scoresde train-autoencoder`: the first stage of latent diffusion (Rombach et al. 2022, arXiv:2112.10752).

A command of its own rather than a flag of `train`: the autoencoder has its own options (downsampling,
latent channels, KL and discriminator weights), its own defaults (the `autoencoder` task's: digits32,
Adam 1e-3, no EMA, no clipping) and its own output (reconstructions and a latent scale factor, not
samples). It only builds a config with `task = "autoencoder"` and runs the same engine as `train`, so a
TOML file with `task = "autoencoder"` trains the same thing through `scoresde train --config`.
"""
from __future__ import annotations

import math
from typing import Any

import click

from scoresde.cli.common import ALLOW_UNVERIFIED_HELP, _user_errors
from scoresde._common.toml import to_toml


__all__ = ["train_autoencoder"]


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
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@click.option("--allow-unverified", is_flag=True, help=ALLOW_UNVERIFIED_HELP)
@click.option("--progress/--no-progress", default=None, help="Progress bar with the loss.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")
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
    from scoresde._common.toml import load_toml
    from scoresde.training.config import parse_override, set_dotted
    from scoresde.training.api import resolve_config, train as run
    k = int(math.log2(int(downsample))) if downsample else None
    flags = {"task": "autoencoder", "data.name": data, "vae.ch_mult": None if k is None else [1] + [2] * k,
             "vae.z_channels": latent_channels, "vae.ch": ch, "vae.loss": loss, "vae.kl_weight": kl_weight,
             "vae.disc_weight": disc_weight, "vae.disc_start": disc_start, "train.steps": steps,
             "train.batch_size": batch_size, "train.lr": lr, "seed": seed, "name": name, "device": device,
             "train.progress": progress}
    with _user_errors():
        cfg: dict[str, Any] = load_toml(config_file) if config_file else {}
        for key, value in [*((k, v) for k, v in flags.items() if v is not None), *map(parse_override, sets)]:
            set_dotted(cfg, key, value)
        if cfg.get("task") != "autoencoder":
            raise ValueError(f"task: train-autoencoder trains task = \"autoencoder\", found {cfg.get('task')!r}")
        if dry_run:
            click.echo(to_toml(resolve_config(cfg, out=out, resume=resume, verify=not allow_unverified)), nl=False)
            return 0
        result = run(cfg, out=out, resume=resume, verify=not allow_unverified)
    if result.interrupted:
        click.echo(f"interrupted by {result.interrupted} at step {result.step}; checkpoint {result.checkpoint}\n"
                   f"resume with: scoresde train-autoencoder --out {result.run_dir} --resume", err=True)
        return 130 if result.interrupted == "SIGINT" else 0
    if result.rank != 0:
        return 0
    m = result.metrics
    loss_v = f"{result.loss:.4f}" if result.loss is not None else "n/a"
    click.echo(f"trained {result.step} steps in {result.seconds:.1f} s, final loss {loss_v}, reconstruction PSNR "
               f"{m['psnr']:.2f} dB (MSE {m['rec_mse']:.5f}), latent scale factor {m['scale_factor']:.5f}\n"
               f"run directory:   {result.run_dir}\ncheckpoint:      {result.checkpoint}\n"
               f"reconstructions: {result.samples_path}\n"
               f"latent diffusion on it: scoresde train --autoencoder {result.run_dir} --data <the same images> "
               "--model ddpm_unet")
    return 0
