"""Optimised time grids (`scoresde.optimize_steps`), their run-directory storage and CLI, and UniPC,
on exact Gaussian-mixture scores (tests/problems.py)."""
import json
import math

import pytest
import torch
from click.testing import CliRunner

import scoresde as ss
from scoresde.cli.main import cli
from scoresde.samplers.core import sample
from scoresde.samplers.optimize import FAST_SAMPLERS, grid_size, min_budget
from scoresde.runs.steps import load_steps, save_steps, steps_path
from scoresde.samplers.grids import time_grid
from problems import four_mode_mixture

SDE = ss.VPSDE(0.1, 20.0)
MIX = four_mode_mixture(0.1)
SCORE = MIX.score_fn(SDE)
EPS = 1e-3


def calib(n=128, seed=1):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rmse(x, y):
    return float((x - y).square().mean().sqrt())


def test_optimised_grid_beats_the_default_on_its_calibration_problem():
    z = calib()
    grid, info = ss.optimize_steps(SDE, SCORE, 4, sampler="unipc", calibration=z, eps=EPS, reference_steps=200,
                                   maxfev=80, loss="rmse", return_info=True)
    assert grid.dtype == torch.float64 and len(grid) == 4
    assert bool((grid[1:] < grid[:-1]).all()) and float(grid[0]) == SDE.T and float(grid[-1]) >= EPS
    # independent check: errors against our own reference solve, optimised grid vs the sampler's default
    ref = sample(SDE, SCORE, x_init=z, sampler="dpm_solver", order=3, steps=200, eps=EPS)
    e_opt = rmse(sample(SDE, SCORE, x_init=z, sampler="unipc", times=grid), ref)
    e_def = rmse(sample(SDE, SCORE, x_init=z, sampler="unipc", steps=4, eps=EPS), ref)
    assert e_opt == pytest.approx(info["error"], rel=1e-9) and e_def == pytest.approx(info["error_default"], rel=1e-9)
    assert e_opt < 0.7 * e_def, (e_opt, e_def)          # a real gain at 4 NFE, not just "no worse"
    assert info["error_fixed"][info["default_schedule"]] == pytest.approx(e_def, rel=1e-9)


def test_never_worse_falls_back_to_the_default_grid():
    # one search step cannot beat the best fixed grid; the default (logsnr) is then returned if it is the best
    z = calib(64, seed=2)
    grid, info = ss.optimize_steps(SDE, SCORE, 3, sampler="dpm_solver", calibration=z, eps=EPS,
                                   reference_steps=100, maxfev=1, return_info=True)
    assert info["error"] <= min(info["error_default"], *info["error_fixed"].values())
    if info["error"] == info["error_default"]:
        assert torch.allclose(grid, time_grid(SDE, 2, EPS, "logsnr", dtype=torch.float64))


@pytest.mark.parametrize("sampler", FAST_SAMPLERS)
def test_nfe_equals_the_budget(sampler):
    z = calib(16)
    for budget in ((3, 5, 7) if sampler == "heun" else (2, 4, 5, 8)):
        L = grid_size(sampler, budget)
        grid = time_grid(SDE, L - 1, EPS, "karras", dtype=torch.float64)
        _, info = sample(SDE, SCORE, x_init=z, sampler=sampler, times=grid, return_info=True)
        assert info["nfe"] == budget, (sampler, budget, info)
    grid = ss.optimize_steps(SDE, SCORE, min_budget(sampler) + 2, sampler=sampler, calibration=z, eps=EPS,
                             reference_steps=50, maxfev=10)
    _, info = sample(SDE, SCORE, x_init=z, sampler=sampler, times=grid, return_info=True)
    assert info["nfe"] == min_budget(sampler) + 2


def test_bad_input_names_the_argument():
    z = calib(8)
    with pytest.raises(ValueError, match="budget: unipc needs at least 2"):
        ss.optimize_steps(SDE, SCORE, 1, sampler="unipc", calibration=z)
    with pytest.raises(ValueError, match="budget: heun .* odd budget >= 3; found 4"):
        ss.optimize_steps(SDE, SCORE, 4, sampler="heun", calibration=z)
    with pytest.raises(KeyError, match="sampler: expected one of the fast samplers"):
        ss.optimize_steps(SDE, SCORE, 4, sampler="pc", calibration=z)
    with pytest.raises(ValueError, match="schedule: the optimised grid replaces"):
        ss.optimize_steps(SDE, SCORE, 4, calibration=z, schedule="karras")
    with pytest.raises(ValueError, match="calibration: a number of draws"):
        ss.optimize_steps(SDE, SCORE, 4, calibration=16)
    with pytest.raises(ValueError, match="loss: expected one of"):
        ss.optimize_steps(SDE, SCORE, 4, calibration=z, loss="mae")
    with pytest.raises(TypeError, match="budget: expected an int"):
        ss.optimize_steps(SDE, SCORE, 4.0, calibration=z)


def test_round_trip_through_a_run_directory(tmp_path):
    grid = time_grid(SDE, 4, EPS, "quadratic", dtype=torch.float64)
    info = {"sampler": "unipc", "budget": 5, "options": {"order": 3}, "denoise": True, "error": 0.1,
            "error_default": 0.3}
    path = save_steps(tmp_path, grid, info, checkpoint="ckpt_00000010.safetensors", seed=3)
    assert path == steps_path(tmp_path, "unipc", 5) and path.endswith("steps/unipc-5.json")
    got, rec = load_steps(tmp_path, "unipc", 5)
    assert torch.equal(got, grid) and rec["options"] == {"order": 3} and rec["seed"] == 3
    assert load_steps(tmp_path, "unipc", 6) is None
    (tmp_path / "steps" / "ddim-5.json").write_text(json.dumps({"times": [1.0, 0.5]}))
    with pytest.raises(ValueError, match="expected 5 times for ddim at 5 NFE, found 2"):
        load_steps(tmp_path, "ddim", 5)


def test_unipc_converges_at_third_order_and_matches_exact_lagrange_integration():
    g = ss.Gaussian(torch.tensor([0.5, -0.3], dtype=torch.float64), torch.tensor([0.3, 0.05], dtype=torch.float64))
    x_T = calib(200)
    exact = g.flow_map(x_T, 1.0, EPS, SDE)
    err = [float((sample(SDE, g.score_fn(SDE), x_init=x_T, sampler="unipc", steps=n, eps=EPS, denoise=False)
                  - exact).abs().max()) for n in (20, 40, 80)]
    slopes = [math.log2(a / b) for a, b in zip(err, err[1:])]
    assert min(slopes) > 2.5 and err[-1] < 2e-4, (err, slopes)      # UniP-2 + UniC-2: order 3
    # with order 3, UniC's weights solve the full system, the exact integral of the Lagrange interpolant:
    # DEIS in data prediction with its UniC (fast_eps.deis) differs only in the warm-up steps (a_1 = 1/2)
    kw = dict(x_init=x_T, steps=40, eps=EPS, denoise=False, order=3)
    a = sample(SDE, g.score_fn(SDE), sampler="unipc", **kw)
    b = sample(SDE, g.score_fn(SDE), sampler="deis", prediction="x0", corrector=True, schedule="logsnr", **kw)
    assert 0 < float((a - b).abs().max()) < 0.2 * float((a - exact).abs().max())
    with pytest.raises(ValueError, match="variant: expected 'bh1' or 'bh2'"):
        sample(SDE, g.score_fn(SDE), sampler="unipc", variant="bh3", **kw)


TINY = ["--device", "cpu", "--no-progress", "--steps", "4", "--batch-size", "16", "--set", "data.size=200",
        "--set", "model.width=8", "--set", "model.depth=1", "--set", "model.embed_dim=8", "--set", "sample.n=16",
        "--set", "sample.steps=3", "--set", "train.ckpt_every=4"]


def one_line_error(r, match):
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], r.stderr


def test_cli_optimize_steps_then_sample_uses_the_grid(tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "run")
    assert runner.invoke(cli, ["train", "--out", out, *TINY]).exit_code == 0
    r = runner.invoke(cli, ["optimize-steps", "--checkpoint", out, "--budget", "4", "--n", "32",
                            "--reference-steps", "40", "--maxfev", "20", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "unipc at 4 NFE: calibration error" in r.output and "optimised" in r.output
    rec = json.loads((tmp_path / "run" / "steps" / "unipc-4.json").read_text())
    assert rec["checkpoint"] == "ckpt_00000004.safetensors" and rec["calibration"] == 32 and len(rec["times"]) == 4
    assert rec["error"] <= rec["error_default"]
    r = runner.invoke(cli, ["sample", "--checkpoint", out, "--sampler", "unipc", "--steps", "4", "--n", "8",
                            "--out", str(tmp_path / "s.npy"), "--device", "cpu"])
    assert r.exit_code == 0 and "using the optimised time grid" in r.output, r.output
    r = runner.invoke(cli, ["sample", "--checkpoint", out, "--sampler", "unipc", "--steps", "5", "--n", "8",
                            "--out", str(tmp_path / "s.npy"), "--device", "cpu"])
    assert r.exit_code == 0 and "optimised" not in r.output, r.output
    rec["checkpoint"] = "ckpt_00000002.safetensors"                   # made for another checkpoint: not used
    (tmp_path / "run" / "steps" / "unipc-4.json").write_text(json.dumps(rec))
    r = runner.invoke(cli, ["sample", "--checkpoint", out, "--sampler", "unipc", "--steps", "4", "--n", "8",
                            "--out", str(tmp_path / "s.npy"), "--device", "cpu"])
    assert r.exit_code == 0 and "ignoring" in r.output and "using" not in r.output, r.output
    one_line_error(runner.invoke(cli, ["optimize-steps", "--checkpoint", out, "--budget", "1"]),
                   "budget: unipc needs at least 2")
    one_line_error(runner.invoke(cli, ["optimize-steps", "--checkpoint", out, "--budget", "4", "--sampler", "heun"]),
                   "odd budget")
    one_line_error(runner.invoke(cli, ["optimize-steps", "--checkpoint", str(tmp_path / "none"), "--budget", "4"]),
                   "--checkpoint")
    one_line_error(runner.invoke(cli, ["optimize-steps", "--checkpoint", out, "--budget", "4", "--sampler", "pc"]),
                   "--sampler")
