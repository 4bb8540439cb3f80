"""`scoresde sample` / `scoresde likelihood` on official score_sde checkpoints (CliRunner): presets
listing, sampling to .png / .npy, bits/dim, and one-line errors for every bad input."""
import json
import os

import numpy as np
import torch
from safetensors.torch import load_file

from scoresde.pretrained.score_sde_configs import list_configs, refused_configs
from helpers import one_line_error, run
from problems import TESTS

DATA = os.path.join(str(TESTS), "fixtures", "score_sde")


def official_files(tmp_path, name="ddpmpp_vp_continuous_randw"):
    """(checkpoint_N.pth in score_sde's layout, the fixture's nested config as a JSON file)."""
    meta = json.load(open(os.path.join(DATA, f"{name}.json")))
    sd = {k[len("state_dict."):]: v for k, v in load_file(os.path.join(DATA, f"{name}.safetensors")).items()
          if k.startswith("state_dict.")}
    shadow = [sd[k] for k in meta["state_dict_keys"] if not k.endswith(("sigmas", "all_modules.0.W"))]
    ckpt, cfg = tmp_path / f"{name}.pth", tmp_path / f"{name}_config.json"
    torch.save({"model": sd, "ema": {"decay": 0.999, "num_updates": 1, "shadow_params": shadow}, "step": 1}, ckpt)
    cfg.write_text(json.dumps(meta["config"]))
    return str(ckpt), str(cfg), meta


def test_list_configs():
    r = run("sample", "--list-configs")
    assert r.exit_code == 0, r.output
    for name in list_configs() + list(refused_configs()):
        assert name in r.output
    assert "ve/cifar10_ncsnpp_continuous" in r.output and "RefineNet" in r.output
    assert "--config" in run("sample", "--help").output and "--list-configs" in run("sample", "--help").output


def test_sample_png_npy_and_likelihood(tmp_path):
    ckpt, cfg, _ = official_files(tmp_path)
    png = tmp_path / "grid.png"
    r = run("sample", "--checkpoint", ckpt, "--config", cfg, "--sampler", "deis", "--steps", "2", "--n", "4",
            "--out", str(png), "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert png.stat().st_size > 0 and "wrote 4 samples in [0, 1]" in r.output
    npy = tmp_path / "x.npy"
    r = run("sample", "--checkpoint", ckpt, "--config", cfg, "--steps", "2", "--n", "3", "--out", str(npy),
            "--device", "cpu", "--raw")
    assert r.exit_code == 0, r.output
    x = np.load(npy)
    assert x.shape == (3, 3, 16, 16) and np.isfinite(x).all()
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    r = run("likelihood", "--checkpoint", ckpt, "--config", cfg, "--data", str(tmp_path / "images.npy"), "--n", "1",
            "--tol", "0.1", "--device", "cpu")
    assert r.exit_code == 0, r.output
    bpd = float(r.output.split("nats, ")[1].split(" +-")[0])
    assert np.isfinite(bpd) and "bits/dim" in r.output


def test_one_line_errors(tmp_path):
    ckpt, cfg, meta = official_files(tmp_path, "ncsnpp_ve_continuous_randw")
    out = str(tmp_path / "x.png")
    wide = dict(meta["config"], model=dict(meta["config"]["model"], nf=32))
    (tmp_path / "wide.json").write_text(json.dumps(wide))
    one_line_error(run("sample", "--checkpoint", ckpt, "--config", str(tmp_path / "wide.json"), "--out", out),
                   "'module.all_modules.0.W' has shape (16,) in the checkpoint, (32,) in the config")
    one_line_error(run("sample", "--checkpoint", ckpt, "--config", "ve/nope", "--out", out), "unknown preset 've/nope'")
    one_line_error(run("sample", "--checkpoint", ckpt, "--config", "ve/ncsnv2/cifar10", "--out", out), "refused")
    one_line_error(run("sample", "--checkpoint", ckpt, "--out", out), "needs its config")
    text = tmp_path / "notes.pth"
    text.write_text("hello\n")
    one_line_error(run("sample", "--checkpoint", str(text), "--config", cfg, "--out", out), "not a PyTorch checkpoint")
    one_line_error(run("sample", "--checkpoint", str(tmp_path / "none.pth"), "--config", cfg, "--out", out),
                   "no such file")
    one_line_error(run("sample", "--checkpoint", ckpt, "--config", str(tmp_path / "none.json"), "--out", out),
                   "no such file")
    one_line_error(run("sample", "--checkpoint", ckpt, "--config", cfg, "--label", "3", "--out", out),
                   "not available for a pretrained model")
    np.save(tmp_path / "small.npy", np.zeros((2, 3, 8, 8), dtype=np.uint8))
    one_line_error(run("likelihood", "--checkpoint", ckpt, "--config", cfg, "--data", str(tmp_path / "small.npy")),
                   "examples of shape (3, 8, 8), the model was trained on (3, 16, 16)")


def test_optimize_steps_fits_a_score_sde_checkpoint_into_out_and_sample_uses_it(tmp_path):
    ckpt, cfg, _ = official_files(tmp_path)
    fits = tmp_path / "fits"
    r = run("optimize-steps", "--checkpoint", ckpt, "--config", cfg, "--budget", "3", "--n", "4",
            "--reference-steps", "8", "--maxfev", "6", "--device", "cpu", "--out", str(fits))
    assert r.exit_code == 0, r.output
    path = fits / "unipc-3.json"
    rec = json.loads(path.read_text())
    assert rec["checkpoint"] == os.path.abspath(ckpt) and rec["config"] == cfg and len(rec["times"]) == 3
    assert f"--config {cfg} --steps-file {path} uses it" in r.output
    r = run("sample", "--checkpoint", ckpt, "--config", cfg, "--steps-file", str(path), "--n", "2",
            "--out", str(tmp_path / "s.npy"), "--device", "cpu")
    assert r.exit_code == 0 and "using the fitted time grid" in r.output, r.output
    assert np.load(tmp_path / "s.npy").shape == (2, 3, 16, 16)
    one_line_error(run("optimize-steps", "--checkpoint", ckpt, "--config", cfg, "--budget", "3"),
                   "--out: expected a .json file or a directory")
    one_line_error(run("sample", "--checkpoint", ckpt, "--config", cfg, "--steps-file", str(path), "--steps", "3",
                       "--out", str(tmp_path / "s.npy")), "--steps: --steps-file")
