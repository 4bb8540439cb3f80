"""Defaults that fit the data (issue 33): the final draw of an image run is fast and as large as its plot and
metric need, networks are sized to small images, the user's values always win, and configs/default.toml is
what the embedded default resolves to."""
import json
import os

import numpy as np
import pytest
import torch

import scoresde as ss
from scoresde._common.toml import load_toml
from scoresde.models.nets import count_parameters, get_model
from scoresde.training.api import resolve_config
from scoresde.training.config import DEFAULTS, resolve
from problems import TESTS

ROOT = str(TESTS.parent)


def draw(cfg):
    return cfg["sample"]["sampler"], cfg["sample"]["steps"], cfg["sample"]["n"]


def test_points_keep_the_2d_defaults_and_images_get_a_fast_draw_of_what_plot_and_metric_need():
    assert draw(resolve(None)) == ("euler_maruyama", 200, 4000)
    assert draw(resolve({"data": {"name": "moons"}})) == ("euler_maruyama", 200, 4000)
    assert draw(resolve({"data": {"name": "digits"}})) == ("dpm_solver", 20, 256)       # digits FID: N > 64
    assert draw(resolve({"data": {"name": "digits32"}})) == ("dpm_solver", 20, 64)      # the grid only
    images = torch.rand(10, 3, 16, 16)
    assert draw(resolve(None, data=images)) == ("dpm_solver", 20, 64)                    # train(data=...)


def test_what_the_user_sets_wins_and_a_resumed_run_keeps_its_own():
    assert draw(resolve({"data": {"name": "digits"}, "sample": {"n": 9}})) == ("dpm_solver", 20, 9)
    # a sampler named by the user keeps the built-in step count (200 fits euler_maruyama, not 20)
    assert draw(resolve({"data": {"name": "digits"}, "sample": {"sampler": "euler_maruyama"}})) == (
        "euler_maruyama", 200, 256)
    assert resolve({"data": {"name": "digits"}, "train": {"batch_size": 7}})["train"]["batch_size"] == 7
    old = resolve(None)                                                # a run made with the 2-D defaults
    resumed = resolve({"data": {"name": "digits"}, "train": {"steps": 9}}, base=old)
    assert draw(resumed) == draw(old) and resumed["train"]["steps"] == 9


def test_networks_are_sized_to_small_images():
    unet = resolve({"data": {"name": "digits"}})
    assert unet["model"]["name"] == "ddpm_unet" and unet["model"]["ch"] == 32 and unet["train"]["batch_size"] == 64
    dit = resolve({"data": {"name": "digits"}, "model": {"name": "dit"}})          # --set model.name=dit
    kw = {k: v for k, v in dit["model"].items() if k not in ("name", "parameterization")}
    assert kw == {"patch_size": 2, "hidden_size": 96, "depth": 4, "num_heads": 4}
    assert dit["train"]["batch_size"] == 64 and dit["train"]["lr"] == 5e-4
    small = count_parameters(get_model("dit", data_shape=(1, 8, 8), **kw))
    assert small < 1_000_000 < count_parameters(get_model("dit", data_shape=(1, 8, 8)))   # not DiT-S/2 (33M)
    preset = resolve({"data": {"name": "digits"}, "model": {"name": "dit", "preset": "DiT-S/4"}})["model"]
    assert "hidden_size" not in preset                                  # the user's preset is not overridden
    mlp_keys = resolve({"data": {"name": "digits"}, "model": {"width": 8}})["model"]
    assert mlp_keys["name"] == "mlp"                                    # keys of the default network: keep it
    big = resolve({"data": {"name": "digits32"}, "model": {"name": "ddpm_unet"}})
    assert "ch" not in big["model"] and big["train"]["lr"] == 2e-4     # 32x32: the network's own (CIFAR) size


def test_the_final_draw_prints_its_count_and_estimate_and_records_them(tmp_path, capsys):
    cfg = {"data": {"name": "digits"}, "device": "cpu", "train": {"steps": 2, "ckpt_every": 2, "log_every": 1},
           "model": {"name": "ddpm_unet", "ch": 8, "ch_mult": [1], "num_groups": 4}}
    r = ss.train(cfg, out=str(tmp_path / "run"), progress=True)
    err = capsys.readouterr().err
    assert "final draw: 256 samples: dpm_solver, 20 steps (20 score evaluations of the batch" in err
    m = json.load(open(tmp_path / "run" / "metrics.json"))
    assert m["sample_n"] == 256 and m["sample_nfe"] == 20 and m["sample_estimate_seconds"] >= 0
    assert "fid" in m                                                   # the digits metric got its samples
    assert np.load(tmp_path / "run" / "samples.npy").shape == (256, 1, 8, 8)
    assert r.metrics["sample_n"] == 256


def test_configs_default_toml_is_the_embedded_default():
    path = os.path.join(ROOT, "configs", "default.toml")
    assert load_toml(path) == resolve_config(None)                      # every key, as train --dry-run prints
    assert resolve(path) == resolve(None)
    assert load_toml(path)["sample"] == DEFAULTS["sample"]


@pytest.mark.parametrize("name", ["LICENSE"])
def test_the_license_file_matches_setup_cfg(name):
    text = open(os.path.join(ROOT, name)).read()
    assert "license = MIT" in open(os.path.join(ROOT, "setup.cfg")).read()
    assert text.startswith("MIT License") and "Copyright (c)" in text and "the scoresde authors" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in text
