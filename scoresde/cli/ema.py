"""`scoresde ema`: post-hoc EMA (Karras et al. 2024, EDM2, arXiv:2312.02696): the weights of any EMA length,
reconstructed from the power-function EMA snapshots a run wrote with `train.phema_std`, as checkpoints that
`scoresde sample --checkpoint` opens (`scoresde.runs.phema.reconstruct_run`).
"""
from __future__ import annotations

import click

from scoresde.cli.common import allow_unverified_option, user_errors
from scoresde.models.phema import SIGMA_REL_MAX
from scoresde.runs.phema import reconstruct_run


__all__ = ["ema"]


@click.command("ema")
@click.argument("run", type=click.Path(), metavar="RUN")
@click.option("--sigma-rel", "sigma_rels", multiple=True, required=True, type=float, metavar="X",
              help=f"EMA length relative to the training time, in (0, {SIGMA_REL_MAX:.4f}] (EDM2's sigma_rel; "
                   "e.g. 0.05 to 0.2); repeatable.")
@click.option("--step", type=click.IntRange(min=1), show_default="the last snapshot",
              help="Training step of the reconstruction (snapshots up to it are used).")
@click.option("--out", type=click.Path(), metavar="DIR|FILE", show_default="RUN/phema",
              help="Directory for the checkpoints (named ema-<sigma_rel>-<step>.safetensors), or a .safetensors "
                   "file for one --sigma-rel.")
@allow_unverified_option
def ema(run, sigma_rels, step, out, allow_unverified):
    """Post-hoc EMA: reconstruct the EMA of length --sigma-rel of RUN (trained with train.phema_std) and write
    it as a checkpoint. Prints one line per result: where, from how many snapshots, and the relative L2 error of
    the fitted EMA profile.

    \b
    Examples:
      scoresde train --data moons --set 'train.phema_std=[0.05, 0.1]' --out runs/moons
      scoresde ema runs/moons --sigma-rel 0.08 --sigma-rel 0.15
      scoresde sample --checkpoint runs/moons/phema/ema-0.080-00006000.safetensors --out moons.png
    """
    with user_errors({"sigma_rel": "--sigma-rel", "step": "--step", "out": "--out"}):
        done = reconstruct_run(run, sigma_rels, step, out, verify=not allow_unverified)
    for path, info in done:
        click.echo(f"sigma_rel {info['sigma_rel']:.3f} at step {info['step']}: {path} (from "
                   f"{len(info['snapshots'])} snapshots; profile error {info['profile_error']:.2g})")
