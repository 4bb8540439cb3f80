"""`scoresde sample --init-image IMG --strength S`: SDEdit from the command line (scoresde.cli.img2img)."""
import numpy as np
import pytest
import torch
from PIL import Image

import scoresde as ss
from helpers import TINY, one_line_error, run


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs") / "digits"
    r = run("train", "--out", str(d), *TINY, "--data", "digits", "--set", "model.num_classes=10")
    assert r.exit_code == 0, r.output + r.stderr
    return d


@pytest.fixture(scope="module")
def guides(tmp_path_factory):
    """Three digits in [-1, 1] as an .npy file, and the same as grey PNG files in a folder."""
    d = tmp_path_factory.mktemp("guides")
    x = ss.load_dataset("digits").x[:3].numpy().astype(np.float32)        # (3, 1, 8, 8)
    np.save(d / "g.npy", x)
    (d / "pngs").mkdir()
    for i, img in enumerate(x):
        Image.fromarray(np.round((img[0] + 1) * 127.5).astype(np.uint8), mode="L").save(d / "pngs" / f"{i}.png")
    return d, x


def test_npy_guides_match_the_python_api(digits_run, guides, tmp_path):
    d, x = guides
    out = tmp_path / "e.npy"
    r = run("sample", "--checkpoint", str(digits_run), "--init-image", str(d / "g.npy"), "--strength", "0.4",
            "--sampler", "ddim", "--steps", "4", "--seed", "7", "--device", "cpu", "--out", str(out))
    assert r.exit_code == 0, r.output + r.stderr
    assert "wrote 3 SDEdit samples (strength 0.4)" in r.output
    model, sde = ss.load(digits_run)
    expect = ss.sdedit(sde, model, torch.from_numpy(x), 0.4, sampler="ddim", steps=4,
                       generator=torch.Generator().manual_seed(7))
    got = np.load(out)
    assert got.shape == (3, 1, 8, 8) and np.allclose(got, expect.numpy(), atol=1e-5)


def test_strength_zero_keeps_the_guides_and_n_cycles(digits_run, guides, tmp_path):
    d, x = guides
    out = tmp_path / "z.npy"
    r = run("sample", "--checkpoint", str(digits_run), "--init-image", str(d / "g.npy"), "--strength", "0",
            "--n", "5", "--device", "cpu", "--out", str(out))
    assert r.exit_code == 0, r.output + r.stderr
    assert np.array_equal(np.load(out), x[[0, 1, 2, 0, 1]])


def test_image_file_folder_png_and_label(digits_run, guides, tmp_path):
    d, x = guides
    out = tmp_path / "f.npy"
    r = run("sample", "--checkpoint", str(digits_run), "--init-image", str(d / "pngs"), "--strength", "0",
            "--device", "cpu", "--out", str(out))
    assert r.exit_code == 0, r.output + r.stderr
    assert np.abs(np.load(out) - x).max() <= 1 / 127.5                  # 8-bit round trip of the guides
    r = run("sample", "--checkpoint", str(digits_run), "--init-image", str(d / "pngs" / "1.png"), "--strength",
            "0.5", "--steps", "3", "--label", "4", "--guidance", "2", "--device", "cpu", "--out", str(tmp_path / "one.png"))
    assert r.exit_code == 0 and (tmp_path / "one.png").stat().st_size > 0, r.output + r.stderr


@pytest.mark.parametrize("args,match", [
    (["--init-image", "G", "--strength", "1.5"], "--strength: expected a number in [0, 1]"),
    (["--init-image", "G", "--strength", "-0.2"], "--strength: expected a number in [0, 1]"),
    (["--strength", "0.5"], "--strength: sets how far SDEdit perturbs --init-image; give --init-image too"),
    (["--init-image", "WRONG"], "--init-image"),
    (["--init-image", "MISSING"], "--init-image"),
    (["--init-image", "G", "--known", "digits", "--mask", "top"], "--known: not available with --init-image"),
])
def test_bad_inputs_one_line(digits_run, guides, tmp_path, args, match):
    d, _ = guides
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 8, 8), np.float32))
    subst = {"WRONG": str(tmp_path / "wrong.npy"), "MISSING": str(tmp_path / "nope.npy"), "G": str(d / "g.npy")}
    args = [subst.get(a, a) for a in args]
    r = run("sample", "--checkpoint", str(digits_run), *args, "--device", "cpu", "--out", str(tmp_path / "o.npy"))
    one_line_error(r, match)


def test_wrong_shape_names_both_shapes(digits_run, tmp_path):
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 8, 8), np.float32))
    r = run("sample", "--checkpoint", str(digits_run), "--init-image", str(tmp_path / "wrong.npy"), "--device", "cpu",
            "--out", str(tmp_path / "o.npy"))
    one_line_error(r, "expected images of shape (1, 8, 8) (the model's), found (3, 8, 8)")
