"""`scoresde train --set train.recipe=...` on points (MLP), digits (U-Net) and latents (--autoencoder): the run
resumes, `scoresde sample` and `scoresde likelihood` load it with its recipe's SDE and preconditioner; bad
recipe options give one line naming the key."""
import numpy as np
import pytest

import scoresde as ss
from scoresde.models.preconditioners import EDMPrediction, FlowPrediction
from scoresde.runs.checkpoint import list_checkpoints, read_checkpoint
from helpers import TINY, one_line_error, run, tiny_digits16_autoencoder

SAMPLER = {"dsm": "ddim", "edm": "heun", "flow": "euler_maruyama"}
UNET = ["--set", "model.name=\"ddpm_unet\"", "--set", "model.ch=8", "--set", "model.ch_mult=[1]",
        "--set", "model.num_res_blocks=1", "--set", "model.num_groups=4", "--set", "model.attn_resolutions=[]"]


@pytest.mark.parametrize("recipe", ["edm", "flow"])   # dsm: tests/cli/test_cli.py
def test_each_recipe_trains_resumes_samples_and_scores(tmp_path, recipe):
    out = str(tmp_path / "run")
    r = run("train", "--out", out, "--data", "moons", *TINY, "--set", f"train.recipe=\"{recipe}\"")
    assert r.exit_code == 0, r.output
    r = run("train", "--out", out, "--resume", "--steps", "8", "--no-progress")
    assert r.exit_code == 0 and list_checkpoints(out)[-1][0] == 8, r.output
    _, meta = read_checkpoint(list_checkpoints(out)[-1][1])
    assert meta["recipe"]["name"] == recipe and meta["config"]["train"]["recipe"] == recipe
    model, sde = ss.load(out)
    assert type(sde) is {"dsm": ss.VPSDE, "edm": ss.EDMSDE, "flow": ss.FlowSDE}[recipe]
    assert model.parameterization == {"dsm": "eps", "edm": "edm", "flow": "flow"}[recipe]
    r = run("sample", "--checkpoint", out, "--sampler", SAMPLER[recipe], "--steps", "4", "--n", "11", "--out",
            str(tmp_path / "s.npy"))
    assert r.exit_code == 0, r.output
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (11, 2) and np.isfinite(x).all()
    r = run("likelihood", "--checkpoint", out, "--data", "moons", "--n", "8")
    assert r.exit_code == 0 and "bits/dim" in r.output, r.output


def test_edm_on_digits_with_a_unet_and_flow_on_latents(tmp_path):
    out = str(tmp_path / "digits")
    r = run("train", "--out", out, "--data", "digits", "--device", "cpu", "--no-progress", "--steps", "2",
            "--batch-size", "4", *UNET, "--set", "train.recipe=\"edm\"", "--set", "train.sigma_data=0.6",
            "--set", "sample.n=4", "--set", "sample.steps=2", "--set", "sample.sampler=\"heun\"")
    assert r.exit_code == 0, r.output
    model, sde = ss.load(out)
    assert isinstance(model.precond, EDMPrediction) and model.precond.sigma_data == 0.6 and isinstance(sde, ss.EDMSDE)
    r = run("sample", "--checkpoint", out, "--steps", "2", "--n", "3", "--out", str(tmp_path / "d.npy"))
    assert r.exit_code == 0 and np.load(tmp_path / "d.npy").shape == (3, 1, 8, 8), r.output
    # a latent flow model on a tiny autoencoder of 16x16 digits
    tiny_digits16_autoencoder(tmp_path)                                   # d16.npy and the run ae/
    lat = str(tmp_path / "latent")
    r = run("train", "--out", lat, "--data", str(tmp_path / "d16.npy"), "--autoencoder", str(tmp_path / "ae"),
            "--device", "cpu", "--no-progress", "--steps", "2", "--batch-size", "4", *UNET,
            "--set", "train.recipe=\"flow\"", "--set", "train.t_dist=\"logit_normal\"", "--set", "sample.n=4",
            "--set", "sample.steps=2", "--set", "sample.sampler=\"euler_maruyama\"")
    assert r.exit_code == 0, r.output
    model, sde = ss.load(lat)
    assert isinstance(model.precond, FlowPrediction) and isinstance(sde, ss.FlowSDE)
    r = run("sample", "--checkpoint", lat, "--steps", "2", "--n", "3", "--out", str(tmp_path / "l.npy"))
    assert r.exit_code == 0 and np.load(tmp_path / "l.npy").shape == (3, 1, 16, 16), r.output


@pytest.mark.parametrize("setting,match", [("train.recipe=\"ddpm\"", "config train.recipe: expected one of"),
                                           ("train.t_dist=\"beta\"", "config train.t_dist"),
                                           ("train.p_std=0", "config train.p_std"),
                                           ("train.shift=-2", "config train.shift")])
def test_bad_recipe_options_give_one_line(tmp_path, setting, match):
    one_line_error(run("train", "--out", str(tmp_path / "x"), *TINY, "--set", setting), match)
