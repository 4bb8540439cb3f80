"""`scoresde evaluate`: sample files, image folders, run directories, stats files, JSON; every bad input one line."""
import json

import numpy as np
import pytest
import torch

import scoresde as ss
from scoresde.metrics import digits_split, evaluate, inception_score, load_inception, load_stats
from scoresde.evaluation.metrics.inception import random_inception_state_dict
from helpers import one_line_error, run

Q = ["--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """The held-out digits as a samples.npy, and their FID / KID / precision / recall against all digits."""
    path = tmp_path_factory.mktemp("samples") / "heldout.npy"
    x = digits_split()[2]
    np.save(path, x.numpy())
    return str(path), evaluate(x, ss.load_dataset("digits").x, features="digits", metrics="fid,kid,pr", progress=False)


def test_evaluate_file_table_and_json(heldout, tmp_path):
    path, expected = heldout
    r = run("evaluate", path, "--ref", "digits", "--json", str(tmp_path / "q.json"), "--metrics", "fid,kid,pr,is", *Q)
    assert r.exit_code == 0, r.output + r.stderr
    assert "features:  digits (64 dims)" in r.output and "reference: digits (1797 x 1x8x8)" in r.output
    doc = json.loads((tmp_path / "q.json").read_text())
    assert doc["n"] == 359 and doc["features"] == "digits"
    for key in ("fid", "kid", "precision", "recall"):
        assert doc["metrics"][key] == pytest.approx(expected[key], rel=1e-9)
    assert 8 < doc["metrics"]["is"] <= 10 and "class_accuracy" not in doc["metrics"]     # no labels in a .npy
    fid_line = next(line for line in r.output.splitlines() if line.strip().startswith("fid"))
    assert float(fid_line.split()[1]) == pytest.approx(expected["fid"], rel=1e-5)
    # the same images as 8-bit (N, H, W, C) under arr_0, as EDM / guided-diffusion write samples
    u8 = np.round((np.load(path) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    np.savez(tmp_path / "edm.npz", arr_0=u8)
    r = run("evaluate", str(tmp_path / "edm.npz"), "--ref", "digits", "--metrics", "fid", "--label", "3", *Q)
    assert r.exit_code == 0, r.output + r.stderr
    values = {line.split()[0]: float(line.split()[1]) for line in r.output.splitlines() if line.startswith("  ")}
    assert values["fid"] == pytest.approx(expected["fid"], rel=0.05)                     # 8-bit rounding only
    # all labelled 3: the accuracy is the share classified as 3, near the share of 3s (0.106) at 97% accuracy
    assert values["class_accuracy"] == pytest.approx((digits_split()[3] == 3).double().mean().item(), abs=0.01)


def test_evaluate_png_folder_and_run_directory(heldout, tmp_path):
    from PIL import Image
    path, expected = heldout
    x = np.load(path)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, img in enumerate(x[:120]):
        Image.fromarray(np.round((img[0] + 1) * 127.5).astype(np.uint8), mode="L").save(folder / f"{i:04d}.png")
    r = run("evaluate", str(folder), "--ref", "digits", "--metrics", "fid,pr", *Q)
    assert r.exit_code == 0, r.output + r.stderr
    assert "(120 x 1x8x8)" in r.output and "precision" in r.output
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text('[data]\nname = "digits"\n')
    r = run("evaluate", str(run_dir), "--metrics", "fid", *Q)
    one_line_error(r, "without samples.npy; make one with scoresde sample --checkpoint")
    np.save(run_dir / "samples.npy", x)
    r = run("evaluate", str(run_dir), "--metrics", "fid", *Q)            # the reference: the run's data
    assert r.exit_code == 0, r.output + r.stderr
    assert "reference: digits" in r.output and f"{expected['fid']:.6g}" in r.output


def test_evaluate_save_stats_then_fid_from_stats(heldout, tmp_path):
    path, expected = heldout
    stats = tmp_path / "digits_ref.npz"
    r = run("evaluate", "digits", "--save-stats", str(stats), *Q)
    assert r.exit_code == 0 and "wrote statistics of 1797 x 64 digits features" in r.output, r.output + r.stderr
    mu, sigma = load_stats(str(stats))
    assert mu.shape == (64,) and sigma.shape == (64, 64)
    r = run("evaluate", path, "--ref", str(stats), "--metrics", "fid", "--json", str(tmp_path / "q.json"), *Q)
    assert r.exit_code == 0, r.output + r.stderr
    assert json.loads((tmp_path / "q.json").read_text())["metrics"]["fid"] == pytest.approx(expected["fid"], rel=1e-9)
    one_line_error(run("evaluate", path, "--ref", str(stats), "--metrics", "fid,kid", *Q),
                   "holds only mu and sigma (FID alone)")
    np.savez(tmp_path / "small.npz", mu=np.zeros(10), sigma=np.eye(10))
    one_line_error(run("evaluate", path, "--ref", str(tmp_path / "small.npz"), "--metrics", "fid", *Q),
                   "statistics of 10 features, but the 'digits' features have 64")


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "random.pth"
    torch.save(random_inception_state_dict(0), path)
    return str(path)


def test_evaluate_inception_from_environment(random_weights, tmp_path, monkeypatch):
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    np.save(tmp_path / "s.npy", x.numpy())
    monkeypatch.setenv("SCORESDE_INCEPTION_WEIGHTS", random_weights)
    r = run("evaluate", str(tmp_path / "s.npy"), "--metrics", "is", "--json", str(tmp_path / "q.json"), *Q)
    assert r.exit_code == 0, r.output + r.stderr
    doc = json.loads((tmp_path / "q.json").read_text())
    assert doc["features"] == "inception" and doc["dims"] == 2048
    with torch.no_grad():
        logits = load_inception(random_weights)(torch.floor(x * 127.5 + 128).clamp(0, 255))[1]
    assert doc["metrics"]["is"] == pytest.approx(inception_score(logits, splits=3)[0], rel=1e-5)


def test_evaluate_bad_inputs_one_line_each(heldout, tmp_path, monkeypatch):
    path, _ = heldout
    monkeypatch.delenv("SCORESDE_INCEPTION_WEIGHTS", raising=False)
    images = tmp_path / "rgb.npy"
    np.save(images, np.zeros((3, 3, 16, 16), np.float32))
    np.save(tmp_path / "points.npy", np.zeros((100, 2), np.float32))
    cases = [
        (["evaluate", str(images), "--metrics", "is", "--inception-weights", str(tmp_path / "no.pth")],
         "no such file; download pt_inception-2015-12-05-6726825d.pth"),
        (["evaluate", str(images), "--metrics", "is"], "--inception-weights PATH or $SCORESDE_INCEPTION_WEIGHTS"),
        (["evaluate", str(images), "--ref", str(images)],          # FID with 3 images: refused before any weights
         "FID needs more samples than feature dimensions (N > F) for a full-rank covariance; found N = 3 samples of "
         "F = 2048"),
        (["evaluate", "digits", "--ref", "digits", "--n", "64"], "N = 64 samples of F = 64"),
        (["evaluate", str(tmp_path / "points.npy"), "--ref", "digits", "--features", "digits"],
         "SAMPLES: the 'digits' features need images of shape (N, 1, 8, 8), found examples of shape (2,)"),
        (["evaluate", str(tmp_path / "points.npy"), "--ref", "digits"],
         "SAMPLES: the 'inception' features need images of shape (N, 1 or 3, H, W)"),
        (["evaluate", "digits", "--ref", "moons"], "--ref: the 'digits' features need images of shape (N, 1, 8, 8)"),
        (["evaluate", str(tmp_path / "missing.npy"), "--ref", "digits"], "no such file or directory"),
        (["evaluate", path], "--ref: expected a reference"),
        (["evaluate", path, "--ref", "digits", "--metrics", "fid,lpips"], "metrics: expected a list of fid, kid"),
        (["evaluate", path, "--save-stats", str(tmp_path / "s.txt")], "expected a file name ending in .npz"),
        (["evaluate", path, "--ref", "digits", "--json", str(tmp_path / "no" / "q.json")], "does not exist"),
        (["evaluate", str(tmp_path / "points.npy"), "--features", "digits", "--metrics", "acc"],
         "need images of shape"),
        (["evaluate", path, "--metrics", "acc"], "metrics acc: needs the class label of each sample"),
    ]
    for args, match in cases:
        one_line_error(run(*args, *Q), match)


def test_evaluate_a_run_draws_the_samples_it_needs(tmp_path):
    """Right after training, samples.npy holds too few samples for FID (64 in 64 dims): evaluate draws them itself
    with a fast sampler, says how many and about how long, keeps them, and reuses them on the next call."""
    out = tmp_path / "run"
    r = run("train", "--out", str(out), "--data", "digits", "--device", "cpu", "--no-progress", "--steps", "4",
            "--batch-size", "16", "--set", "model.width=8", "--set", "model.depth=1", "--set", "model.embed_dim=8",
            "--set", "sample.n=64", "--set", "sample.steps=2")
    assert r.exit_code == 0, r.output
    r = run("evaluate", str(out), "--metrics", "fid", "--json", str(tmp_path / "q.json"), *Q)
    assert r.exit_code == 0, r.output + r.stderr
    drawn = out / "samples" / "evaluate-ckpt_00000004-dpm_solver-20-seed0-2000.npy"
    assert ("samples.npy holds 64 samples; FID in 64 digits features needs more than 64; drawing 2000 samples "
            "from ckpt_00000004.safetensors with dpm_solver, 20 steps (20 score evaluations each; ") in r.output
    assert np.load(drawn).shape == (2000, 1, 8, 8) and np.load(out / "samples.npy").shape == (64, 1, 8, 8)
    doc = json.loads((tmp_path / "q.json").read_text())
    assert doc["n"] == 2000 and doc["reference"].startswith("digits")
    expected = evaluate(torch.from_numpy(np.load(drawn)), ss.load_dataset("digits").x, features="digits",
                        metrics="fid", progress=False)["fid"]
    assert doc["metrics"]["fid"] == pytest.approx(expected, rel=1e-9)
    r = run("evaluate", str(out), "--metrics", "fid", *Q)                       # the same draw again: reused
    assert r.exit_code == 0 and f"using the 2000 samples drawn before, {drawn}" in r.output, r.output
    r = run("evaluate", str(out), "--metrics", "kid", "--n", "100", "--sampler", "ddim", "--steps", "3", *Q)
    assert r.exit_code == 0 and "--n 100 asked for; drawing 100 samples" in r.output, r.output
    assert np.load(out / "samples" / "evaluate-ckpt_00000004-ddim-3-seed0-100.npy").shape == (100, 1, 8, 8)
    r = run("evaluate", str(out), "--metrics", "kid", *Q)                        # enough for KID: samples.npy
    assert r.exit_code == 0 and "drawing" not in r.output and f"samples:   {out} (64 x 1x8x8)" in r.output, r.output


def test_evaluate_digit_pairs_scores_both_halves_glyphs(tmp_path):
    """Canvases (N, 1, 16, 32) against canvases (or --ref digitpairs, the built-in 50000: slow, not run here): the
    digits FID of both halves' 8x8 glyphs."""
    from scoresde.data.digitpairs import digitpairs
    from scoresde.metrics import pair_glyphs
    real = digitpairs(150, torch.Generator().manual_seed(1), split="train").x
    ref = digitpairs(300, torch.Generator().manual_seed(0), split="train").x
    np.save(tmp_path / "pairs.npy", real.numpy())
    np.save(tmp_path / "ref.npy", ref.numpy())
    r = run("evaluate", str(tmp_path / "pairs.npy"), "--ref", str(tmp_path / "ref.npy"), "--metrics", "fid",
            "--json", str(tmp_path / "q.json"), *Q)
    assert r.exit_code == 0, r.output + r.stderr
    assert "300 glyphs 1x8x8" in r.output and "600 glyphs 1x8x8" in r.output
    want = evaluate(torch.cat(pair_glyphs(real)), torch.cat(pair_glyphs(ref)), features="digits", metrics="fid",
                    progress=False)["fid"]
    assert json.loads((tmp_path / "q.json").read_text())["metrics"]["fid"] == pytest.approx(want, rel=1e-6)
