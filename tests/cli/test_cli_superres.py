"""`scoresde train --set model.image_shape=[C,h,w]`: a super-resolution stage from the command line, in pixel space
(digits32, 8 -> 32) and on latents (the low-res pixels as the condition); bad configs give one line."""
import json
import os

import numpy as np
import pytest

import scoresde as ss
from scoresde.runs.checkpoint import list_checkpoints, read_checkpoint
from helpers import one_line_error, run, tiny_digits16_autoencoder

FAST = ["--device", "cpu", "--no-progress", "--steps", "2", "--batch-size", "4", "--set", "sample.n=4",
        "--set", "sample.steps=2"]
UNET = ["--set", "model.name=\"ddpm_unet\"", "--set", "model.ch=8", "--set", "model.ch_mult=[1]",
        "--set", "model.num_res_blocks=1", "--set", "model.num_groups=4", "--set", "model.attn_resolutions=[]"]


def test_train_the_digits32_stage_with_the_default_network(tmp_path):
    out = str(tmp_path / "sr")
    r = run("train", "--out", out, "--data", "digits32", "--set", "model.image_shape=[1,8,8]", *FAST,
            "--set", "train.blur=1.0")
    assert r.exit_code == 0, r.output
    _, meta = read_checkpoint(list_checkpoints(out)[-1][1])
    assert meta["model"]["config"]["image_shape"] == [1, 8, 8] and meta["model"]["config"]["ch_mult"] == [1, 2, 2]
    assert meta["superres"]["aug"] == "noise" and meta["superres"]["blur"] == 1.0
    assert os.path.exists(os.path.join(out, "samples.png")) and np.load(os.path.join(out, "samples.npy")).shape == (
        4, 1, 32, 32)
    assert "sr_psnr" in json.load(open(os.path.join(out, "metrics.json")))
    model, _ = ss.load(out)
    assert model.image_shape == (1, 8, 8)


@pytest.mark.parametrize("sets,match", [
    (["model.image_shape=[1,7,8]"], "config model.image_shape = [1, 7, 8]: expected h, w dividing"),
    (["model.image_shape=[3,8,8]"], "config model.image_shape = [3, 8, 8]: expected C = 1"),
    (["model.image_shape=[1,8,8]", "train.aug_max=3.0"], "config train.aug_max = 3.0"),
    (["model.image_shape=[1,8,8]", "train.aug=\"blur\""], "config train.aug: expected one of noise, none"),
    (["model.image_shape=[1,8,8]", "train.blur=-1.0"], "config train.blur: expected >= 0.0"),
])
def test_bad_super_resolution_configs_give_one_line(tmp_path, sets, match):
    args = [a for s in sets for a in ("--set", s)]
    one_line_error(run("train", "--out", str(tmp_path / "x"), "--data", "digits32", *args, *FAST), match)


def test_a_latent_stage_is_conditioned_on_the_low_res_pixels(tmp_path):
    tiny_digits16_autoencoder(tmp_path)                                   # d16.npy and the run ae/
    out = str(tmp_path / "latent")
    r = run("train", "--out", out, "--data", str(tmp_path / "d16.npy"), "--autoencoder", str(tmp_path / "ae"),
            *FAST, *UNET, "--set", "model.image_shape=[1,4,4]")
    assert r.exit_code == 0, r.output
    _, meta = read_checkpoint(list_checkpoints(out)[-1][1])
    assert meta["task"] == "latent" and meta["data_shape"] == [4, 8, 8] and meta["superres"]["image_shape"] == [1, 4, 4]
    model, _ = ss.load(out)
    assert model.image_shape == (1, 4, 4) and model.autoencoder is not None
    assert np.load(os.path.join(out, "samples.npy")).shape == (4, 1, 16, 16)                 # decoded pixels
    one_line_error(run("train", "--out", str(tmp_path / "y"), "--data", str(tmp_path / "d16.npy"), "--autoencoder",
                       str(tmp_path / "ae"), *FAST, *UNET, "--set", "model.image_shape=[1,16,16]"),
                   "config model.image_shape = [1, 16, 16]: expected a low-res image no larger than the latents' 8x8")


def test_a_captioned_stage_is_refused_in_one_line(tmp_path):
    shape = ss.load_dataset("digitpairs").x.shape[1:]
    low = f"[{shape[0]},{shape[1] // 2},{shape[2] // 2}]"
    one_line_error(run("train", "--out", str(tmp_path / "t"), "--data", "digitpairs", *FAST, *UNET,
                       "--set", f"model.image_shape={low}"), "config model.image_shape with a text encoder")
