"""Class-conditional training (label dropout) and `scoresde sample --label/--guidance/--known/--mask`."""
import numpy as np
import pytest
import torch

import scoresde as ss
from scoresde.sde.analytic import four_mode_mixture
from scoresde.runs.checkpoint import read_checkpoint
from scoresde.data.datasets import load_dataset
from scoresde.data.masks import make_mask
from helpers import one_line_error, run

TINY = ["--device", "cpu", "--no-progress", "--steps", "4", "--batch-size", "16", "--set", "data.size=200",
        "--set", "model.width=8", "--set", "model.depth=1", "--set", "model.embed_dim=8", "--set", "sample.n=8",
        "--set", "sample.steps=3"]
COND = {"data": {"size": 2000}, "model": {"num_classes": "auto", "width": 64, "depth": 2},
        "train": {"steps": 20, "batch_size": 64, "warmup": 5, "log_every": 5, "ckpt_every": 10, "progress": False},
        "sample": {"n": 32, "steps": 5}, "device": "cpu"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    for name, extra in [("cond", ["--set", "model.num_classes=auto"]), ("uncond", []),
                        ("digits", ["--data", "digits", "--set", "model.num_classes=10"])]:
        r = run("train", "--out", str(d / name), *TINY, *extra)
        assert r.exit_code == 0, r.output + r.stderr
    return d


def test_conditional_run_records_classes_and_samples_each_label(runs, tmp_path):
    meta = read_checkpoint(str(next((runs / "cond" / "checkpoints").iterdir())))[1]
    assert meta["model"]["config"]["num_classes"] == 4 and meta["config"]["model"]["num_classes"] == 4
    assert meta["data"]["classes"] == ["0", "1", "2", "3"]
    for label, w in [("0", None), ("3", "2.5"), ("1", "0")]:
        out = tmp_path / f"l{label}.npy"
        r = run("sample", "--checkpoint", str(runs / "cond"), "--n", "6", "--steps", "3", "--device", "cpu",
                "--label", label, *(["--guidance", w] if w else []), "--out", str(out))
        assert r.exit_code == 0, r.output + r.stderr
        x = np.load(out)
        assert x.shape == (6, 2) and np.isfinite(x).all()
    r = run("sample", "--checkpoint", str(runs / "digits"), "--n", "4", "--steps", "2", "--device", "cpu",
            "--label", "7", "--out", str(tmp_path / "seven.png"))
    assert r.exit_code == 0 and (tmp_path / "seven.png").stat().st_size > 0, r.output + r.stderr


def test_guidance_with_the_same_seed_differs_only_through_w(runs, tmp_path):
    def draw(w):
        out = tmp_path / f"w{w}.npy"
        r = run("sample", "--checkpoint", str(runs / "cond"), "--n", "5", "--steps", "3", "--device", "cpu",
                "--label", "2", "--guidance", w, "--out", str(out))
        assert r.exit_code == 0, r.stderr
        return np.load(out)
    assert np.array_equal(draw("1"), draw("1.0")) and not np.allclose(draw("1"), draw("3"))


def test_inpainting_keeps_known_entries_exact(runs, tmp_path):
    out = tmp_path / "fill.npy"
    r = run("sample", "--checkpoint", str(runs / "digits"), "--known", "digits", "--mask", "top", "--n", "3",
            "--steps", "4", "--device", "cpu", "--out", str(out))
    assert r.exit_code == 0, r.output + r.stderr
    x, known = np.load(out), load_dataset("digits").x[:3].numpy()
    assert x.shape == (3, 1, 8, 8) and np.array_equal(x[..., :4, :], known[..., :4, :])
    assert not np.allclose(x[..., 4:, :], known[..., 4:, :])
    # a mask file (1 = known) broadcast over the batch, with a label, and a .png of known rows over fills
    m = np.zeros((1, 8, 8), dtype=np.float32)
    m[:, :, :3] = 1
    np.save(tmp_path / "m.npy", m)
    out = tmp_path / "fill2.npy"
    r = run("sample", "--checkpoint", str(runs / "digits"), "--known", "digits", "--mask", str(tmp_path / "m.npy"),
            "--label", "5", "--guidance", "2", "--n", "2", "--steps", "3", "--sampler", "euler_maruyama",
            "--device", "cpu", "--out", str(out))
    assert r.exit_code == 0, r.output + r.stderr
    assert np.array_equal(np.load(out)[..., :3], load_dataset("digits").x[:2, ..., :3].numpy())
    r = run("sample", "--checkpoint", str(runs / "digits"), "--known", "digits", "--mask", "random:0.5", "--n", "4",
            "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "fill.png"))
    assert r.exit_code == 0 and (tmp_path / "fill.png").stat().st_size > 0, r.stderr
    # points: keep the first coordinate of the known points
    out = tmp_path / "pts.npy"
    r = run("sample", "--checkpoint", str(runs / "cond"), "--known", "mixture", "--mask", "dims:0", "--n", "7",
            "--steps", "3", "--device", "cpu", "--out", str(out))
    assert r.exit_code == 0, r.stderr
    assert np.array_equal(np.load(out)[:, 0], load_dataset("mixture", size=7, seed=1).x[:, 0].numpy())


def test_bad_guidance_and_inpainting_inputs_give_one_line(runs, tmp_path):
    np.save(tmp_path / "m3.npy", np.ones(3))
    np.save(tmp_path / "m2.npy", np.full(2, 0.5))
    cond, uncond, out = str(runs / "cond"), str(runs / "uncond"), str(tmp_path / "o.npy")
    base = ["sample", "--n", "3", "--steps", "2", "--device", "cpu", "--out", out]
    one_line_error(run(*base, "--checkpoint", uncond, "--label", "1"), "expected a class-conditional model")
    one_line_error(run(*base, "--checkpoint", cond, "--label", "4"), "--label: expected a class index in [0, 4)")
    one_line_error(run(*base, "--checkpoint", cond, "--label", "cat"), "found 'cat'")
    one_line_error(run(*base, "--checkpoint", cond, "--guidance", "2"), "--guidance: expected --label too")
    one_line_error(run(*base, "--checkpoint", cond, "--label", "1", "--guidance", "-1"), "--guidance")
    one_line_error(run(*base, "--checkpoint", cond, "--known", "mixture"), "needs both")
    one_line_error(run(*base, "--checkpoint", cond, "--mask", "dims:0"), "needs both")
    one_line_error(run(*base, "--checkpoint", cond, "--known", "mixture", "--mask", "top"), "expected image data")
    one_line_error(run(*base, "--checkpoint", cond, "--known", "mixture", "--mask", "dims:2"), "indices in [0, 2)")
    one_line_error(run(*base, "--checkpoint", cond, "--known", "mixture", "--mask", "random:1"), "P in (0, 1)")
    one_line_error(run(*base, "--checkpoint", cond, "--known", "mixture", "--mask", "blob"), "found 'blob'")
    one_line_error(run(*base, "--checkpoint", cond, "--known", "digits", "--mask", "top"),
                   "examples of shape (1, 8, 8), the model was trained on (2,)")
    one_line_error(run(*base, "--checkpoint", cond, "--known", "mixture", "--mask", str(tmp_path / "m3.npy")),
                   "broadcastable to (3, 2)")
    one_line_error(run(*base, "--checkpoint", cond, "--known", "mixture", "--mask", str(tmp_path / "m2.npy")),
                   "expected an array of 0/1")
    one_line_error(run(*base, "--checkpoint", cond, "--known", "mixture", "--mask", str(tmp_path / "no.npy")),
                   "no such file")
    one_line_error(run(*base, "--checkpoint", cond, "--known", "mixture", "--mask", "dims:0", "--sampler", "ode"),
                   "--sampler: inpainting runs predictor-corrector sampling")
    assert not (tmp_path / "o.npy").exists()
    # training: labels must exist and fit num_classes; p_uncond is a probability
    np.save(tmp_path / "pts.npy", np.random.default_rng(0).normal(size=(50, 2)))
    one_line_error(run("train", "--data", str(tmp_path / "pts.npy"), "--out", str(tmp_path / "r1"), *TINY,
                       "--set", "model.num_classes=3"), "needs labelled data")
    one_line_error(run("train", "--out", str(tmp_path / "r2"), *TINY, "--set", "model.num_classes=2"),
                   "labels in [0, 3], expected [0, 1]")
    one_line_error(run("train", "--set", "model.num_classes=-1", "--dry-run"), "model.num_classes")
    one_line_error(run("train", "--set", "model.num_classes=many", "--dry-run"), "model.num_classes")
    one_line_error(run("train", "--set", "train.p_uncond=1.5", "--dry-run"), "probability in [0, 1]")


def test_conditional_resume_is_bit_identical(tmp_path):
    full = ss.train({**COND, "train": {**COND["train"], "steps": 20}}, out=str(tmp_path / "full"))
    ss.train({**COND, "train": {**COND["train"], "steps": 10}}, out=str(tmp_path / "half"))
    resumed = ss.train({"train": {"steps": 20}}, out=str(tmp_path / "half"), resume=True)
    a, b = read_checkpoint(full.checkpoint)[0], read_checkpoint(resumed.checkpoint)[0]
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []


def test_trained_conditional_model_lands_in_the_requested_class(tmp_path):
    """Label dropout trains both scores: w = 0 follows the mixture weights, w >= 1 the requested class."""
    cfg = {**COND, "train": {**COND["train"], "steps": 700, "batch_size": 256, "lr": 2e-3, "warmup": 50,
                              "ckpt_every": 700, "log_every": 100, "p_uncond": 0.2}}
    res = ss.train(cfg, out=str(tmp_path / "run"))
    mix = four_mode_mixture()
    g = torch.Generator().manual_seed(0)
    rate = {}
    for w in (0.0, 1.0, 2.0):
        score = ss.classifier_free_score(res.model, 0, w)       # class 0: the rarest mode (weight 0.1)
        x = res.sde.sample(score, 400, sampler="dpm_solver", steps=25, generator=g)
        rate[w] = (torch.cdist(x.double(), mix.means).argmin(1) == 0).double().mean().item()
    assert rate[0.0] < 0.3 and rate[1.0] >= 0.95 and rate[2.0] >= 0.98, rate


def test_make_mask_specs():
    assert make_mask("top", 2, (1, 4, 4))[:, :, :2].all() and not make_mask("top", 2, (1, 4, 4))[:, :, 2:].any()
    assert make_mask("right", 1, (3, 4, 6))[..., 3:].all() and not make_mask("right", 1, (3, 4, 6))[..., :3].any()
    c = make_mask("center", 1, (1, 8, 8))
    assert c.sum() == 64 - 16 and not c[0, 0, 2:6, 2:6].any()
    r = make_mask("random:0.25", 200, (1, 8, 8), generator=torch.Generator().manual_seed(0))
    assert abs(r.double().mean().item() - 0.25) < 0.01
    assert make_mask("dims:1,2", 3, (4,)).tolist() == [[False, True, True, False]] * 3
    with pytest.raises(TypeError, match="mask"):
        make_mask(1, 2, (2,))
