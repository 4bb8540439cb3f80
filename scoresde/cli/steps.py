"""`scoresde optimize-steps`: a time grid fitted to a trained model for a few-step sampler.

The command runs `scoresde.optimize_steps` (Align Your Steps-style search against a reference solve
of the probability-flow ODE, Sabour et al. 2024, arXiv:2404.14507; see scoresde/samplers/optimize.py)
on a run's latest checkpoint and stores the grid as RUN/steps/<sampler>-<NFE>.json with its
sampler options, calibration size, seed, the calibration errors before and after, and the
checkpoint it was made for. `scoresde sample --checkpoint RUN --sampler S --steps N` then uses the
stored grid of S at N steps' NFE by itself (`stored_steps`), saying so in one line. With
`--sampler bns` the fitted step weights of the bespoke solver are stored and used with the grid.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

import click
import torch

from scoresde._common.distributed import resolve_device
from scoresde.cli.common import ModelSource, allow_unverified_option, device_option, user_errors
from scoresde.runs.steps import load_steps, save_steps, steps_path
from scoresde.samplers.core import SAMPLERS
from scoresde.samplers.optimize import FITTED_SAMPLERS, budget_rule, grid_size, optimize_steps


__all__ = ["optimize_steps_command", "stored_steps"]


def _budget_help() -> str:
    """--budget's help: the fitted samplers grouped by the budgets their records accept."""
    groups: dict[str, list[str]] = {}
    for name in FITTED_SAMPLERS:
        groups.setdefault(budget_rule(name), []).append(name)
    return ("Score evaluations per sample (" + "; ".join(f"{'/'.join(names)}: {rule}" for rule, names in groups.items())
            + ").")


def stored_steps(run_dir: str, checkpoint_file: str, sampler: str, steps: int,
                 echo: Callable[[str], Any] = click.echo) -> dict[str, Any]:
    """`sample` keywords for `sampler` at `steps`: the stored optimised grid (`times=` and the sampler
    options it was made with) when RUN/steps holds one made for `checkpoint_file`, else `steps=`."""
    if sampler not in FITTED_SAMPLERS or not os.path.isdir(run_dir) or steps < 2:
        return {"steps": steps}
    budget = SAMPLERS[sampler].nfe(steps)               # as `sample(..., steps=steps)` spends it
    try:
        found = load_steps(run_dir, sampler, budget)
    except ValueError:                                   # a grid that does not fit these steps
        found = None
    if found is None:
        if sampler == "bns":
            echo(f"no fitted bns weights for {budget} NFE in {os.path.join(run_dir, 'steps')}: bns runs unipc's "
                 f"weights (fit them with scoresde optimize-steps --sampler bns --budget {budget})")
        return {"steps": steps}
    grid, rec = found
    path = steps_path(run_dir, sampler, budget)
    made_for = rec.get("checkpoint")
    if made_for != os.path.basename(checkpoint_file) or not rec.get("denoise", True):
        echo(f"ignoring {path}: made for {made_for}, sampling {os.path.basename(checkpoint_file)} "
             "(rerun scoresde optimize-steps)")
        return {"steps": steps}
    echo(f"using the optimised time grid {path} ({budget} NFE; calibration error "
         f"{rec['error_default']:.4g} -> {rec['error']:.4g})")
    return {"times": grid, **rec.get("options", {}), **({"weights": rec["weights"]} if sampler == "bns" else {})}


@click.command("optimize-steps")
@click.option("--checkpoint", required=True, type=click.Path(), metavar="RUN",
              help="Run directory: its latest checkpoint is fitted and the grid goes to RUN/steps/.")
@click.option("--budget", required=True, type=click.IntRange(min=1), metavar="NFE",
              help=_budget_help())
@click.option("--sampler", type=click.Choice(FITTED_SAMPLERS), default="unipc", show_default=True,
              help="Samplers with a fitted grid; bns: the unipc grid, then its times and step weights by gradient "
                   "(a bespoke solver).")
@click.option("--n", "n", type=click.IntRange(min=1), default=256, show_default=True,
              help="Calibration draws from the prior.")
@click.option("--reference-steps", type=click.IntRange(min=2), default=500, show_default=True,
              help="DPM-Solver++ 3M steps of the reference solve.")
@click.option("--maxfev", type=click.IntRange(min=1), show_default="40 per grid time, >= 100",
              help="Sampler runs the search may spend.")
@click.option("--iterations", type=click.IntRange(min=0), default=1500, show_default=True,
              help="bns only: Adam steps of the fit of its times and weights.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@device_option
@click.option("--raw", is_flag=True, help="Use the raw weights instead of the EMA weights.")
@allow_unverified_option
def optimize_steps_command(checkpoint, budget, sampler, n, reference_steps, maxfev, iterations, seed, device,
                           raw, allow_unverified):
    """Fit the time steps of a few-step sampler to a trained model (stored in RUN/steps/).

    \b
    Examples:
      scoresde optimize-steps --checkpoint runs/digits --budget 5
      scoresde sample --checkpoint runs/digits --sampler unipc --steps 5 --n 64 --out five.png
      scoresde optimize-steps --checkpoint runs/moons --budget 7 --sampler heun --n 1024
      scoresde optimize-steps --checkpoint runs/digits --budget 5 --sampler bns --n 64
    """
    with user_errors():
        grid_size(sampler, budget)                                     # a clear --budget error before loading
        if not os.path.isdir(checkpoint):
            raise FileNotFoundError(f"--checkpoint {checkpoint!r}: expected a run directory (the grid is stored "
                                    "in RUN/steps/), found " + ("a file" if os.path.exists(checkpoint) else "nothing"))
        dev = resolve_device(device)
        model, sde, file, _ = ModelSource(checkpoint, verify=not allow_unverified).open(dev, ema=not raw)
        g = torch.Generator(dev).manual_seed(seed)
        start = time.perf_counter()
        grid, info = optimize_steps(sde, model, budget, sampler=sampler, calibration=n, generator=g, device=dev,
                                    reference_steps=reference_steps, maxfev=maxfev, progress=True, return_info=True,
                                    **({"iterations": iterations} if sampler == "bns" else {}))
        path = save_steps(checkpoint, grid, info, checkpoint=os.path.basename(file), seed=seed, raw=bool(raw))
    e0, e1 = info["error_default"], info["error"]
    click.echo(f"{sampler} at {budget} NFE: calibration error {e0:.4g} with the default {info['default_schedule']} "
               f"grid -> {e1:.4g} optimised ({e0 / max(e1, 1e-300):.2f}x lower), {time.perf_counter() - start:.1f} s "
               f"({info['cpu_seconds']:.1f} CPU s)" + (f"; the unipc grid alone: {info['error_unipc']:.4g}"
                                                        if sampler == "bns" else ""))
    click.echo(f"times: {', '.join(f'{t:.5g}' for t in grid.tolist())}")
    click.echo(f"wrote {path}; scoresde sample --checkpoint {checkpoint} --sampler {sampler} "
               f"--steps {len(grid)} uses it")
    return 0
