"""`scoresde optimize-steps`: a time grid fitted to a trained model for a few-step sampler.

The command runs `scoresde.optimize_steps` (Align Your Steps-style search against a reference solve
of the probability-flow ODE, Sabour et al. 2024, arXiv:2404.14507; see scoresde/samplers/optimize.py)
on a run's latest checkpoint and stores the grid as RUN/steps/<sampler>-<NFE>.json with its
sampler options, calibration size, seed, the calibration errors before and after, and the
checkpoint it was made for. `scoresde sample --checkpoint RUN --sampler S --steps N` then uses the
stored grid of S at N steps' NFE by itself (`stored_steps`), saying so in one line. With
`--sampler bns` the fitted step weights of the bespoke solver are stored and used with the grid.
Any other loadable model (a score_sde checkpoint with --config, a diffusers folder) is fitted the same
way, its fit stored where `--out` names (a .json file or a directory), and used by
`scoresde sample --steps-file FILE.json` (`fitted_from_file`).
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

import click
import torch

from scoresde._common.distributed import resolve_device
from scoresde.cli.common import (MODEL_FLAGS, ModelSource, allow_unverified_option, device_option, model_options,
                                 user_errors)
from scoresde.runs.steps import load_steps, load_steps_file, save_steps, save_steps_file, steps_path, partial_path
from scoresde.samplers.core import SAMPLERS
from scoresde.samplers.optimize import FITTED_SAMPLERS, budget_rule, grid_size, optimize_steps, BNS_ITERATIONS


__all__ = ["optimize_steps_command", "stored_steps", "fitted_from_file"]


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
    return _fitted_kw(grid, rec)


def _fitted_kw(grid: torch.Tensor, rec: dict[str, Any]) -> dict[str, Any]:
    """`sample` keywords of a stored fit: its grid, the options it was made with, bns's weights."""
    return {"times": grid, **rec.get("options", {}), **({"weights": rec["weights"]} if rec["sampler"] == "bns" else {})}


def fitted_from_file(path: str, sampler: str | None, steps: int | None, model: str,
                     echo: Callable[[str], Any] = click.echo) -> tuple[str, dict[str, Any]]:
    """(sampler, `sample` keywords) of `sample --steps-file`: the fit in `path` (`optimize-steps --out`); a fit
    made for another model than `model` (the --checkpoint path or checkpoint file) is used, with a line saying so."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--steps-file {path!r}: no such file")
    if steps is not None:
        raise ValueError(f"--steps: --steps-file {path!r} sets the steps (its grid); pass one of them")
    grid, rec = load_steps_file(path)
    if sampler is not None and sampler != rec["sampler"]:
        raise ValueError(f"--sampler {sampler}: --steps-file {path!r} holds a {rec['sampler']} grid")
    made_for = rec.get("checkpoint")
    if made_for not in (os.path.abspath(model), os.path.basename(model)):
        echo(f"note: {path} was fitted for {made_for}, sampling {model}")
    echo(f"using the fitted time grid {path} ({rec['sampler']}, {rec['budget']} NFE; calibration error "
         f"{rec['error_default']:.4g} -> {rec['error']:.4g})")
    return rec["sampler"], _fitted_kw(grid, rec)


def _fit_path(out: str, sampler: str, budget: int) -> str:
    """--out: a .json file in an existing directory, or a directory (made if missing) for <sampler>-<budget>.json."""
    if out.lower().endswith(".json"):
        if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            raise FileNotFoundError(f"--out {out!r}: the directory does not exist")
        return out
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r}: expected a .json file name or a directory, found a file")
    os.makedirs(out, exist_ok=True)
    return os.path.join(out, f"{sampler}-{budget}.json")


@click.command("optimize-steps")
@model_options
@click.option("--out", type=click.Path(), metavar="FILE.json|DIR", show_default="RUN/steps/ for a run directory",
              help="Where the fit is stored: a .json file, or a directory (<sampler>-<NFE>.json in it); needed for "
                   "any --checkpoint but a run directory. sample --steps-file FILE.json uses it.")
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
@click.option("--iterations", type=click.IntRange(min=0), default=BNS_ITERATIONS, show_default=True,
              help="bns only: Adam steps of the fit of its times and weights (1500: a little better at 4-8 NFE, "
                   "3x the time; benchmarks/results/bns_iterations.md).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@device_option
@click.option("--raw", is_flag=True, help="Use the raw weights instead of the EMA weights.")
@allow_unverified_option
def optimize_steps_command(checkpoint, config, out, budget, sampler, n, reference_steps, maxfev, iterations, seed,
                           device, raw, allow_unverified):
    """Fit the time steps of a few-step sampler to a trained or pretrained model (stored in RUN/steps/ of a
    run directory, or where --out names).

    \b
    Examples:
      scoresde optimize-steps --checkpoint runs/digits --budget 5
      scoresde sample --checkpoint runs/digits --sampler unipc --steps 5 --n 64 --out five.png
      scoresde optimize-steps --checkpoint runs/moons --budget 7 --sampler heun --n 1024
      scoresde optimize-steps --checkpoint runs/digits --budget 5 --sampler bns --n 64
      scoresde optimize-steps --checkpoint checkpoint_26.pth --config vp/cifar10_ddpmpp_continuous \\
                              --budget 10 --n 64 --out fits/
      scoresde sample --checkpoint checkpoint_26.pth --config vp/cifar10_ddpmpp_continuous \\
                      --steps-file fits/unipc-10.json --n 64 --out grid.png
    """
    with user_errors(MODEL_FLAGS):
        grid_size(sampler, budget)                                     # a clear --budget error before loading
        if not os.path.exists(checkpoint):
            raise FileNotFoundError(f"--checkpoint {checkpoint!r}: no such run directory, file or folder")
        source = ModelSource.parse(checkpoint, config, verify=not allow_unverified)
        run_dir = not source.pretrained and os.path.isdir(checkpoint)
        if out is None and not run_dir:
            raise ValueError(f"--out: expected a .json file or a directory for the fit of {checkpoint!r} (only a "
                             "run directory has a place of its own, RUN/steps/), found none")
        path = _fit_path(out, sampler, budget) if out is not None else None
        dev = resolve_device(device)
        model, sde, file, _ = source.open(dev, ema=not raw)
        g = torch.Generator(dev).manual_seed(seed)
        start = time.perf_counter()
        grid, info = optimize_steps(sde, model, budget, sampler=sampler, calibration=n, generator=g, device=dev,
                                    reference_steps=reference_steps, maxfev=maxfev, progress=True, return_info=True,
                                    checkpoint=partial_path(checkpoint, sampler, budget) if run_dir else None,
                                    **({"iterations": iterations} if sampler == "bns" else {}))
        if path is None:
            path = save_steps(checkpoint, grid, info, checkpoint=os.path.basename(file), seed=seed, raw=bool(raw))
        else:
            path = save_steps_file(path, grid, info, checkpoint=os.path.abspath(file or checkpoint), seed=seed,
                                   raw=bool(raw), **({"config": config} if config else {}))
    e0, e1 = info["error_default"], info["error"]
    click.echo(f"{sampler} at {budget} NFE: calibration error {e0:.4g} with the default {info['default_schedule']} "
               f"grid -> {e1:.4g} optimised ({e0 / max(e1, 1e-300):.2f}x lower), {time.perf_counter() - start:.1f} s "
               f"({info['cpu_seconds']:.1f} CPU s)" + (f"; the unipc grid alone: {info['error_unipc']:.4g}"
                                                        if sampler == "bns" else ""))
    click.echo(f"times: {', '.join(f'{t:.5g}' for t in grid.tolist())}")
    if out is None:
        click.echo(f"wrote {path}; scoresde sample --checkpoint {checkpoint} --sampler {sampler} "
                   f"--steps {len(grid)} uses it")
    else:
        click.echo(f"wrote {path}; scoresde sample --checkpoint {checkpoint}{f' --config {config}' if config else ''} "
                   f"--steps-file {path} uses it")
    return 0
