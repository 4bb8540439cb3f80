"""The `scoresde` command line: the click group; each command lives in the module of its family.

Each command only builds a config (defaults <- TOML file <- flags) and calls the library
(`scoresde.train`, `scoresde.load`, `sde.sample`, `likelihood.dataset_likelihood`). User errors
(bad flags, paths, data, configs, checkpoints) print one `Error: ...` line and exit 1.
"""
from __future__ import annotations

import sys

import click

from scoresde.cli.ema import ema
from scoresde.cli.measure import evaluate, likelihood
from scoresde.cli.sample import sample
from scoresde.cli.steps import optimize_steps_command
from scoresde.cli.train import train, train_autoencoder


__all__ = ["cli", "main"]


class _Group(click.Group):
    """A click group whose errors are one line on stderr (no usage block, never a traceback)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            click.echo(f"Error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="scoresde", message="%(prog)s %(version)s")
def cli():
    """Score-based generative modelling through SDEs (Song et al. 2021, arXiv:2011.13456).

    \b
    Examples:
      scoresde train                                  # the default 2-D job, about 2 minutes on 2 cores
      scoresde train --data moons --steps 4000 --out runs/moons
      scoresde train --config configs/digits.toml
      scoresde sample --checkpoint runs/moons --sampler ode --out moons.png
      scoresde train --data mixture --set model.num_classes=auto --out runs/cond
      scoresde sample --checkpoint runs/cond --label 3 --guidance 2 --out class3.png
      scoresde likelihood --checkpoint runs/moons --data moons
      scoresde evaluate runs/digits --json quality.json
      scoresde ema runs/moons --sigma-rel 0.08        # post-hoc EMA (a run trained with train.phema_std)
      scoresde train --task masked --data brackets --out runs/brackets    # masked diffusion on tokens
      scoresde sample --checkpoint runs/brackets --sampler llada --steps 64 --n 8
      scoresde train-autoencoder --data digits32 --out runs/ae     # latent diffusion: the autoencoder,
      scoresde train --autoencoder runs/ae --data digits32 --model ddpm_unet --out runs/latent   # then its latents
    """


for _command in (train, sample, likelihood, evaluate, train_autoencoder, optimize_steps_command, ema):
    cli.add_command(_command)


def main(args: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=args, prog_name="scoresde")


if __name__ == "__main__":
    main()
