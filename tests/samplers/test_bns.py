"""The bespoke non-stationary solver (`sampler="bns"`, scoresde/samplers/bespoke.py): it equals unipc
before fitting, its fit is never worse than unipc's fitted grid, it is exact on Gaussian data (whose
probability-flow map is affine and in closed form), its weights round-trip and the CLI uses them."""
import json

import pytest
import torch
from click.testing import CliRunner

import scoresde as ss
from scoresde.cli.main import cli
from scoresde.samplers.core import sample
from scoresde.samplers.bns import check_weights, unipc_weights
from scoresde.runs.steps import load_steps, save_steps
from scoresde.samplers.grids import time_grid
from problems import four_mode_mixture

SDE = ss.VPSDE(0.1, 20.0)
MIX = four_mode_mixture(0.1)
SCORE = MIX.score_fn(SDE)
EPS = 1e-3


def draws(n, seed):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def l2(x, y):                                   # the fit's default pooling: mean over samples of the RMSE
    return float((x - y).square().mean(1).sqrt().mean())


@pytest.mark.parametrize("denoise", [True, False])
def test_without_weights_bns_is_unipc(denoise):
    z = draws(64, 0)
    for steps in (2, 4, 7):
        a = sample(SDE, SCORE, x_init=z, sampler="unipc", steps=steps, eps=EPS, denoise=denoise)
        b, info = sample(SDE, SCORE, x_init=z, sampler="bns", steps=steps, eps=EPS, denoise=denoise, return_info=True)
        assert torch.allclose(a, b, rtol=0, atol=1e-10), (steps, float((a - b).abs().max()))
        assert info["nfe"] == steps
    grid = time_grid(SDE, 4, EPS, "karras", dtype=torch.float64)
    w = unipc_weights(SDE, grid, denoise)
    assert [len(r) for r in w] == list(range(1, len(grid) + (2 if denoise else 1)))
    a = sample(SDE, SCORE, x_init=z, sampler="unipc", times=grid, denoise=denoise)
    b = sample(SDE, SCORE, x_init=z, sampler="bns", times=grid, denoise=denoise, weights=w)
    assert torch.allclose(a, b, rtol=0, atol=1e-10)


def test_ddim_weights_are_read_off_exactly():
    # unipc at order 1 without corrector is DDIM: y_{i+1} = r y_i + (alpha_{i+1} - alpha_i r) D_i, r = sigma ratio
    grid = time_grid(SDE, 3, EPS, "logsnr", dtype=torch.float64)
    w = unipc_weights(SDE, grid, True, order=1, corrector=False)
    a, s = (v.tolist() for v in SDE.marginal_coefs(grid))
    r0 = s[1] / s[0]
    assert w[0] == [1.0]
    assert w[1] == pytest.approx([r0, a[1] - a[0] * r0], rel=1e-12)
    assert w[-1] == pytest.approx([0.0] * 4 + [1.0], abs=1e-12)      # the output is the final data prediction


def test_fit_is_never_worse_than_the_unipc_grid_and_gains():
    z = draws(128, 1)
    grid, info = ss.optimize_steps(SDE, SCORE, 4, sampler="bns", calibration=z, eps=EPS, reference_steps=200,
                                   maxfev=60, iterations=150, return_info=True)
    assert info["loss"] == "l2" and len(grid) == 4 and grid.dtype == torch.float64
    assert float(grid[0]) == SDE.T and bool((grid[1:] < grid[:-1]).all()) and float(grid[-1]) >= EPS
    assert info["error"] <= info["error_unipc"] <= info["error_default"]
    assert info["error"] < 0.7 * info["error_unipc"], info                 # a real gain over the grid alone
    ref = sample(SDE, SCORE, x_init=z, sampler="dpm_solver", order=3, steps=200, eps=EPS)
    x, out = sample(SDE, SCORE, x_init=z, sampler="bns", times=grid, weights=info["weights"], return_info=True)
    assert out["nfe"] == 4 and l2(x, ref) == pytest.approx(info["error"], rel=1e-9)
    # held out: other prior draws, against the same accurate solve
    zh = draws(2000, 7)
    refh = sample(SDE, SCORE, x_init=zh, sampler="dpm_solver", order=3, steps=200, eps=EPS)
    e_bns = l2(sample(SDE, SCORE, x_init=zh, sampler="bns", times=grid, weights=info["weights"]), refh)
    e_def = l2(sample(SDE, SCORE, x_init=zh, sampler="unipc", steps=4, eps=EPS), refh)
    assert e_bns < 0.5 * e_def, (e_bns, e_def)


def test_fit_recovers_the_exact_flow_map_of_gaussian_data():
    # Gaussian data: D is affine in x, the flow map x_T -> x_0 is affine (closed form), and a 2-evaluation
    # bns can represent it, so the fit must land on it (unipc at 2 NFE is far off)
    g = ss.Gaussian(torch.tensor([0.5, -0.3], dtype=torch.float64), torch.tensor([0.2, 0.2], dtype=torch.float64))
    score = g.score_fn(SDE)
    grid, info = ss.optimize_steps(SDE, score, 2, sampler="bns", calibration=draws(64, 2), eps=EPS,
                                   reference_steps=200, maxfev=20, iterations=400, return_info=True)
    zh = draws(2000, 3)
    exact = g.flow_map(zh, 1.0, 0.0, SDE)
    x = sample(SDE, score, x_init=zh, sampler="bns", times=grid, weights=info["weights"])
    u = sample(SDE, score, x_init=zh, sampler="unipc", steps=2, eps=EPS)
    assert l2(x, exact) < 2e-3 < 0.05 * l2(u, exact), (l2(x, exact), l2(u, exact))
    assert torch.allclose(x.mean(0), g.means[0], atol=0.02) and torch.allclose(x.std(0), g.stds[0], rtol=0.05)


def test_bad_input_names_the_argument():
    z = draws(8, 4)
    with pytest.raises(ValueError, match="return_info: sampler='bns' fits step weights"):
        ss.optimize_steps(SDE, SCORE, 4, sampler="bns", calibration=z)
    with pytest.raises(ValueError, match="denoise: the bns fit ends on the data"):
        ss.optimize_steps(SDE, SCORE, 4, sampler="bns", calibration=z, denoise=False, return_info=True)
    with pytest.raises(TypeError, match="takes no sampler options"):
        ss.optimize_steps(SDE, SCORE, 4, sampler="bns", calibration=z, return_info=True, order=3)
    with pytest.raises(ValueError, match="budget: bns needs at least 2"):
        ss.optimize_steps(SDE, SCORE, 1, sampler="bns", calibration=z, return_info=True)
    with pytest.raises(ValueError, match="iterations: expected"):
        ss.optimize_steps(SDE, SCORE, 3, sampler="bns", calibration=z, return_info=True, iterations=-1)
    grid = time_grid(SDE, 3, EPS, "logsnr", dtype=torch.float64)
    with pytest.raises(ValueError, match=r"weights: expected 5 rows of lengths \[1, 2, 3, 4, 5\] .* found lengths"):
        sample(SDE, SCORE, x_init=z, sampler="bns", times=grid, weights=[[1.0], [0.5, 0.5]])
    bad = unipc_weights(SDE, grid)
    bad[2][1] = float("nan")
    with pytest.raises(ValueError, match="weights: expected finite numbers"):
        sample(SDE, SCORE, x_init=z, sampler="bns", times=grid, weights=bad)
    with pytest.raises(TypeError, match="weights: expected rows of numbers"):
        check_weights(3.0, 4)


def test_weights_round_trip_through_a_run_directory(tmp_path):
    grid = time_grid(SDE, 3, EPS, "logsnr", dtype=torch.float64)
    w = unipc_weights(SDE, grid)
    info = {"sampler": "bns", "budget": 4, "options": {}, "denoise": True, "error": 0.1, "error_default": 0.3,
            "weights": w}
    save_steps(tmp_path, grid, info, checkpoint="ckpt_00000004.safetensors")
    got, rec = load_steps(tmp_path, "bns", 4)
    assert torch.equal(got, grid) and rec["weights"] == w
    rec.pop("weights")
    (tmp_path / "steps" / "bns-4.json").write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="not a stored bns fit"):
        load_steps(tmp_path, "bns", 4)


TINY = ["--device", "cpu", "--no-progress", "--steps", "4", "--batch-size", "16", "--set", "data.size=200",
        "--set", "model.width=8", "--set", "model.depth=1", "--set", "model.embed_dim=8", "--set", "sample.n=16",
        "--set", "sample.steps=3", "--set", "train.ckpt_every=4"]


def test_cli_fits_bns_and_sample_uses_its_weights(tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "run")
    assert runner.invoke(cli, ["train", "--out", out, *TINY]).exit_code == 0
    sample_args = ["sample", "--checkpoint", out, "--sampler", "bns", "--steps", "4", "--n", "8", "--device", "cpu"]
    r = runner.invoke(cli, [*sample_args, "--out", str(tmp_path / "u.npy")])
    assert r.exit_code == 0 and "bns runs unipc's weights" in r.output, r.output
    r = runner.invoke(cli, ["optimize-steps", "--checkpoint", out, "--budget", "4", "--sampler", "bns", "--n", "32",
                            "--reference-steps", "40", "--maxfev", "20", "--iterations", "30", "--device", "cpu"])
    assert r.exit_code == 0 and "bns at 4 NFE" in r.output and "the unipc grid alone" in r.output, r.output
    rec = json.loads((tmp_path / "run" / "steps" / "bns-4.json").read_text())
    assert len(rec["times"]) == 4 and [len(r) for r in rec["weights"]] == [1, 2, 3, 4, 5]
    assert rec["error"] <= rec["error_unipc"] <= rec["error_default"]
    r = runner.invoke(cli, [*sample_args, "--out", str(tmp_path / "b.npy")])
    assert r.exit_code == 0 and "using the optimised time grid" in r.output, r.output
    import numpy as np
    assert not np.allclose(np.load(tmp_path / "u.npy"), np.load(tmp_path / "b.npy"))
