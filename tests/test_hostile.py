"""Hostile inputs (issue 27: items 2, 3, 5 and 8, and NaN labels): files of a few KB that claim gigabytes
are refused in one line naming the file or key, before anything is allocated or built.

The corpus (`hostile.py`) is written at test time; the loaders run on it in a child process under
RLIMIT_AS = 2 GiB, so that a loader that allocates what a file claims fails there instead of exhausting
the machine (and its memory budget, half the address-space limit, is 1 GiB). Config, CLI and schedule
checks that allocate nothing run in-process.
"""
import importlib.util
import os
import re
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import scoresde as ss
from scoresde._common import limits
from scoresde.cli.main import cli
from scoresde.training.config import resolve

import hostile

HAVE_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS bounds the children on Linux only")
PEAK_KB = 1200 << 10       # a child's peak RSS: python + torch + scoresde (+ diffusers) is ~400 MB


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("hostile"))
    return root, {a.name: a for a in hostile.make_corpus(root, diffusers=HAVE_DIFFUSERS)}


@pytest.fixture(scope="module")
def results(corpus):
    """results(loader) -> {file name: record}: the loader run on every corpus file in one limited child."""
    root, attacks = corpus
    cache = {}

    def run(loader):
        if loader not in cache:
            records, rc, err = hostile.run_loaders([(loader, os.path.join(root, n)) for n in sorted(attacks)])
            assert rc == 0 and len(records) == len(attacks), f"the {loader} child died (rc {rc}): {err}"
            cache[loader] = {os.path.basename(r["path"]): r for r in records}
        return cache[loader]
    return run


def refused(results, corpus, name):
    """The record of the attack `name` run by the loader it targets, checked to be a clean one-line refusal
    naming the file and matching the attack's pattern; returns the message."""
    attack = corpus[1][name]
    rec = results(attack.loader)[name]
    assert rec["outcome"] == "clean", rec
    msg = rec["message"]
    assert "\n" not in msg and name in msg and re.search(attack.expect, msg), msg
    assert rec["maxrss_kb"] < PEAK_KB, rec
    return msg


# --- every loader x every file ----------------------------------------------------------------------------
@linux_only
@pytest.mark.parametrize("loader", list(hostile.LOADERS))
def test_every_loader_refuses_every_corpus_file_in_one_line_within_bounded_memory(results, corpus, loader):
    for name, rec in results(loader).items():
        targeted = corpus[1][name].loader == loader
        # another loader's file may be readable as something (a safetensors header is valid UTF-8 text)
        assert rec["outcome"] == "clean" or (rec["outcome"] == "loaded" and not targeted), (name, rec)
        assert "\n" not in rec.get("message", ""), (name, rec)
        assert rec["maxrss_kb"] < PEAK_KB, (name, rec)
        if targeted:
            refused(results, corpus, name)


# --- item 3: arrays, images, statistics, tokens, masks ----------------------------------------------------
@linux_only
def test_array_headers_claiming_gigabytes_are_refused_before_reading(results, corpus):
    assert "3.7 GiB" in refused(results, corpus, "forged_header.npz")          # 4 KB deflated .npz
    assert "7.3 TiB" in refused(results, corpus, "values_1e12.npy")            # 1e12 values in 128 bytes


@linux_only
def test_a_deflate_bomb_is_refused_by_its_size_against_the_memory_budget(results, corpus):
    msg = refused(results, corpus, "zeros_bomb.npz")       # 256 MiB of zeros in 255 KiB
    assert "(a 255.0 KiB file)" in msg and "(256, 1048576) uint8" in msg and "memory budget of 1.0 GiB" in msg


@linux_only
def test_object_arrays_are_refused_naming_the_file(results, corpus):
    refused(results, corpus, "objects.npy")
    refused(results, corpus, "stats_objects.npz")
    refused(results, corpus, "mask_objects.npy")


@linux_only
def test_images_are_checked_from_their_headers_before_decoding(results, corpus):
    assert "bomb.png" in refused(results, corpus, "png_30000")        # PIL's DecompressionBombError, one line
    assert "13000x13000" in refused(results, corpus, "png_13000x4")    # under PIL's limit, over the pixel budget
    assert "64 images" in refused(results, corpus, "png_4096x64")      # each within budget, all not


@linux_only
def test_fid_stats_shapes_are_checked_from_the_headers(results, corpus):
    assert "(25000, 25000)" in refused(results, corpus, "stats_mismatched.npz")
    refused(results, corpus, "stats_forged.npz")


@linux_only
def test_token_ids_are_checked_against_the_largest_vocabulary(results, corpus):
    assert "20000000" in refused(results, corpus, "token_id_2e7.npy")


@linux_only
def test_a_mask_header_without_data_is_refused(results, corpus):
    refused(results, corpus, "mask_truncated.npy")


# --- item 2: metadata, DiT and diffusers ------------------------------------------------------------------
@linux_only
def test_checkpoint_metadata_sizes_are_bounded_before_anything_is_built(results, corpus):
    assert "found 500000000" in refused(results, corpus, "ckpt_sde_N.safetensors")
    assert "found 1000000" in refused(results, corpus, "ckpt_depth.safetensors")
    assert "found 20000001" in refused(results, corpus, "ckpt_vocab.safetensors")
    assert "found 1000000" in refused(results, corpus, "ckpt_autoencoder_ch.safetensors")
    refused(results, corpus, "ckpt_width.safetensors")          # within bounds: the meta build meets the file


@linux_only
def test_load_dit_reads_the_file_header_before_building_dit(results, corpus):
    # DiT-XL/2 holds 2.7 GB of weights: building it would exceed the child's 2 GiB address space
    for name in ("dit_tiny.safetensors", "dit_tiny.pt"):
        assert "depth=28" in refused(results, corpus, name)


@linux_only
@pytest.mark.skipif(not HAVE_DIFFUSERS, reason="needs diffusers")
def test_diffusers_configs_are_bounded_and_compared_with_the_weights_header(results, corpus):
    assert "scheduler_config.json" in refused(results, corpus, "ddpm_timesteps_1e9")
    assert "config.json" in refused(results, corpus, "unet_layers_per_block_1e5")
    assert "found 1000000" in refused(results, corpus, "unet_block_out_channels_1e6")
    assert "diffusion_pytorch_model.safetensors" in refused(results, corpus, "unet_wider_than_its_weights")
    refused(results, corpus, "vae_layers_per_block_1e5")


# --- item 5 (allocation parts) and the NaN labels -------------------------------------------------------
@linux_only
def test_a_label_1e9_with_auto_classes_is_refused_naming_the_key(results, corpus):
    assert "model.num_classes" in refused(results, corpus, "label_1e9.npz")


@linux_only
def test_nan_labels_are_reported_as_nan_naming_the_file(results, corpus):
    msg = refused(results, corpus, "nan_labels.npz")
    assert "1 of 4 labels are NaN" in msg and "-9223372036854775808" not in msg


def test_nan_labels_with_auto_classes_through_train(tmp_path):
    path = str(tmp_path / "nan.npz")
    np.savez(path, x=np.zeros((4, 2), np.float32), y=np.array([0.0, np.nan, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"nan\.npz.*NaN") as e:
        ss.train({"data": {"name": path}, "model": {"num_classes": "auto"}, "train": {"steps": 1}},
                 out=str(tmp_path / "run"))
    assert "num_classes = 0" not in str(e.value)


@pytest.mark.parametrize("key, value", [("train.batch_size", 10 ** 12), ("data.size", 10 ** 12),
                                        ("sample.n", 10 ** 12), ("eval.n", 10 ** 12), ("sample.steps", 10 ** 12),
                                        ("model.depth", 10 ** 6), ("model.width", 10 ** 6), ("sde.N", 5 * 10 ** 8),
                                        ("model.num_classes", 10 ** 9)])
def test_config_sizes_are_bounded_naming_the_key(key, value):
    with pytest.raises(ValueError, match=rf"^config {re.escape(key)}: expected at most \d+.* found {value}"):
        resolve(None, {key: value})


def test_the_cli_reports_sizes_in_one_line(tmp_path):
    forged = tmp_path / "forged.npz"
    hostile._npz(str(forged), {"x": hostile._npy_header((100_000, 10_000), "<f4")})
    for args, expect in ((["--data", str(forged)], r"forged\.npz.*claims"),
                         (["--set", "train.batch_size=1000000000000"], r"config train\.batch_size"),
                         (["--set", "sde.N=500000000"], r"config sde\.N")):
        r = CliRunner().invoke(cli, ["train", *args, "--out", str(tmp_path / "run"), "--dry-run"])
        assert r.exit_code == 1 and re.search(expect, r.output), r.output
        assert r.output.strip().count("\n") == 0 and r.output.startswith("Error:"), r.output


def test_a_batch_over_the_memory_budget_is_refused_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORESDE_MEMORY_BUDGET", "1M")
    with pytest.raises(ValueError, match=r"config train\.batch_size = 4096: .*memory budget of 1\.0 MiB"):
        ss.train({"data": {"name": "digits"}, "train": {"steps": 1, "batch_size": 4096}}, out=str(tmp_path / "r"))


def test_the_memory_budget_is_stated_and_configurable(monkeypatch):
    monkeypatch.setenv("SCORESDE_MEMORY_BUDGET", "3G")
    assert limits.memory_budget() == 3 << 30
    with pytest.raises(ValueError, match="memory budget of 3.0 GiB"):
        limits.check_memory(4 << 30, "x")
    monkeypatch.setenv("SCORESDE_MEMORY_BUDGET", "lots")
    with pytest.raises(ValueError, match="SCORESDE_MEMORY_BUDGET: expected a positive size"):
        limits.memory_budget()
    monkeypatch.delenv("SCORESDE_MEMORY_BUDGET")
    assert 0 < limits.memory_budget() < 1 << 50


def test_bounds_refuse_only_what_is_over_them():
    ok = {"N": 1000, "depth": 28, "hidden_size": 1152, "ch_mult": [1, 2, 2, 2], "block_out_channels": [320, 640, 1280],
          "layers_per_block": 2, "data_shape": [3, 256, 256], "alphas_cumprod": [0.9] * 4000, "mlp_ratio": 4.0}
    limits.check_sizes(ok, "")
    for key, value in [("ch_mult", [1] * 17), ("data_shape", [3, 30000, 30000]), ("mlp_ratio", 1e9),
                       ("some_new_size", 10 ** 9), ("layers_per_block", 65)]:
        with pytest.raises(ValueError, match=rf"^x\.{key}: expected at most"):
            limits.check_sizes({key: value}, "x.")


# --- item 8: a short diffusers schedule loads, also from the command line ---------------------------------
@pytest.mark.skipif(not HAVE_DIFFUSERS, reason="needs diffusers")
def test_a_100_step_ddpm_pipeline_loads_from_the_cli(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler
    import torch
    unet = hostile_unet()
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(tmp_path / "p100")
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "p1000")
    assert ss.from_diffusers(tmp_path / "p100")[1].interpolation == "pchip"      # the cubic overshoots there
    assert ss.from_diffusers(tmp_path / "p1000")[1].interpolation == "cubic"
    with pytest.raises(ValueError, match="pchip"):                                # asked for, still refused
        ss.from_diffusers(tmp_path / "p100", interpolation="cubic")
    out = tmp_path / "x.npy"
    r = CliRunner().invoke(cli, ["sample", "--checkpoint", str(tmp_path / "p100"), "--n", "2", "--steps", "3",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert np.load(out).shape == (2, 3, 8, 8) and torch.isfinite(torch.from_numpy(np.load(out))).all()


def hostile_unet():
    import torch
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(4, 8),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=2).eval()


# --- score_sde configs: sizes bounded, the weights matched before the network gets memory -----------------
def test_a_score_sde_config_is_bounded_and_matched_before_allocation():
    import copy
    import torch
    from scoresde.pretrained.score_sde_configs import PRESETS
    cfg = copy.deepcopy(PRESETS["ve/cifar10_ncsnpp_continuous"])
    tiny = {"all_modules.0.W": torch.zeros(16)}
    for key, value in (("nf", 1_000_000), ("num_scales", 10 ** 9)):
        bad = copy.deepcopy(cfg)
        bad["model"][key] = value
        with pytest.raises(ValueError, match=rf"^config model\.{key}: expected at most"):
            ss.load_score_sde(tiny, bad)
    cfg["data"]["image_size"] = 4096                   # within the bounds: 4096^2 images, NCSN++ on the meta device
    with pytest.raises(ValueError, match=r"checkpoint does not fit the config: 'all_modules\.0\.W' has shape"):
        ss.load_score_sde(tiny, cfg)
