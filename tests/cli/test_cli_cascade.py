"""`scoresde sample --cascade` (a base run, then super-resolution runs) and `--low-res` (a user's images) on
tiny 2-step runs: 4x4 base (an .npy of area-downsampled digits) -> 4->8 on digits -> 8->32 on digits32."""
import numpy as np
import pytest
from PIL import Image

import scoresde as ss
from scoresde.models.superres import downsample
from helpers import one_line_error, run

NET = {"name": "ddpm_unet", "ch": 8, "ch_mult": [1], "num_res_blocks": 1, "num_groups": 4, "attn_resolutions": []}


def _train(out, data, **model):
    cfg = {"data": {"name": data}, "device": "cpu", "model": {**NET, **model},
           "train": {"steps": 2, "batch_size": 8, "log_every": 1, "ckpt_every": 2, "progress": False},
           "sample": {"n": 4, "steps": 2, "sampler": "dpm_solver"}}
    ss.train(cfg, out=str(out))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cascade_runs")
    digits = ss.load_dataset("digits").x
    np.save(d / "digits4.npy", downsample(digits, (4, 4)).numpy())
    _train(d / "base4", str(d / "digits4.npy"))
    _train(d / "sr8", "digits", image_shape=[1, 4, 4])
    _train(d / "sr32", "digits32", image_shape=[1, 8, 8], num_classes=10)
    return d


def test_cascade_of_three_runs_writes_the_final_images_and_a_grid(runs, tmp_path):
    out = tmp_path / "c.npy"
    r = run("sample", "--checkpoint", str(runs / "base4"), "--cascade", str(runs / "sr8"), "--cascade",
            str(runs / "sr32"), "--aug-level", "0.1", "--aug-level", "0.3", "--n", "3", "--steps", "2",
            "--device", "cpu", "--out", str(out))
    assert r.exit_code == 0, r.output + r.stderr
    assert "wrote 3 cascaded samples (4x4 -> 8x8 -> 32x32)" in r.output
    x = np.load(out)
    assert x.shape == (3, 1, 32, 32) and np.isfinite(x).all()
    png = tmp_path / "c.png"
    r = run("sample", "--checkpoint", str(runs / "base4"), "--cascade", str(runs / "sr8"), "--cascade",
            str(runs / "sr32"), "--aug-level", "0.2", "--truncated", "--n", "2", "--steps", "2", "--device", "cpu",
            "--out", str(png))
    assert r.exit_code == 0, r.output + r.stderr
    assert Image.open(png).size[0] > 0


def test_the_same_seed_gives_the_same_cascade_and_the_level_matters(runs, tmp_path):
    def draw(name, s):
        r = run("sample", "--checkpoint", str(runs / "base4"), "--cascade", str(runs / "sr8"), "--aug-level", s,
                "--n", "2", "--steps", "2", "--device", "cpu", "--out", str(tmp_path / name))
        assert r.exit_code == 0, r.output + r.stderr
        return np.load(tmp_path / name)
    a, b, c = draw("a.npy", "0.2"), draw("b.npy", "0.2"), draw("c.npy", "0.6")
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_low_res_from_an_npy_and_an_image_folder(runs, tmp_path):
    low = ss.load_dataset("digits").x[:3]
    np.save(tmp_path / "low.npy", low.numpy())
    out = tmp_path / "hi.npy"
    r = run("sample", "--checkpoint", str(runs / "sr32"), "--low-res", str(tmp_path / "low.npy"), "--n-per", "2",
            "--aug-level", "0.1", "--steps", "2", "--device", "cpu", "--label", "3", "--guidance", "2",
            "--out", str(out))
    assert r.exit_code == 0, r.output + r.stderr
    assert "wrote 6 super-resolutions of 3 inputs (2 each)" in r.output
    assert np.load(out).shape == (6, 1, 32, 32)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(low):
        Image.fromarray(((img[0].numpy() + 1) * 127.5).round().astype(np.uint8), "L").save(folder / f"{i}.png")
    r = run("sample", "--checkpoint", str(runs / "sr32"), "--low-res", str(folder), "--steps", "2", "--device", "cpu",
            "--out", str(tmp_path / "grid.png"))
    assert r.exit_code == 0, r.output + r.stderr
    assert "wrote 3 super-resolutions of 3 inputs (1 each)" in r.output


@pytest.mark.parametrize("what", ["size", "channels"])
def test_low_res_of_the_wrong_size_or_channels_is_one_line(runs, tmp_path, what):
    shape = (2, 1, 16, 16) if what == "size" else (2, 3, 8, 8)
    np.save(tmp_path / "bad.npy", np.zeros(shape, np.float32))
    r = run("sample", "--checkpoint", str(runs / "sr32"), "--low-res", str(tmp_path / "bad.npy"), "--device", "cpu",
            "--out", str(tmp_path / "o.npy"))
    one_line_error(r, f"expected images of shape (1, 8, 8) (channels, height, width: the model's low-resolution "
                      f"input), found {shape[1:]} (wrong {what})")


def test_bad_cascade_and_low_res_inputs_are_one_line(runs, tmp_path):
    out = str(tmp_path / "o.npy")
    base, sr8, sr32 = str(runs / "base4"), str(runs / "sr8"), str(runs / "sr32")
    # a stage that does not chain: named by its flag, with the expected and found shapes
    r = run("sample", "--checkpoint", base, "--cascade", sr32, "--device", "cpu", "--out", out)
    one_line_error(r, f"--cascade {sr32!r}: expected a model conditioned on images of shape (1, 4, 4) "
                      f"(--checkpoint {base!r}'s output), found image_shape (1, 8, 8)")
    r = run("sample", "--checkpoint", base, "--cascade", sr8, "--cascade", sr8, "--device", "cpu", "--out", out)
    one_line_error(r, f"--cascade {sr8!r}: expected a model conditioned on images of shape (1, 8, 8)")
    r = run("sample", "--checkpoint", sr8, "--cascade", sr32, "--device", "cpu", "--out", out)
    one_line_error(r, f"--checkpoint {sr8!r}: expected a model that samples without an image condition, found a "
                      "super-resolution model (image_shape (1, 4, 4))")
    r = run("sample", "--checkpoint", base, "--cascade", sr8, "--aug-level", "0.1", "--aug-level", "0.2",
            "--aug-level", "0.3", "--device", "cpu", "--out", out)
    one_line_error(r, "--aug-level: expected one level or 1 (one per --cascade), found 3")
    r = run("sample", "--checkpoint", base, "--cascade", sr8, "--aug-level", "2", "--device", "cpu", "--out", out)
    one_line_error(r, "--aug-level: expected a finite number in [0.0, 1.0], found 2.0")
    r = run("sample", "--checkpoint", base, "--aug-level", "0.2", "--device", "cpu", "--out", out)
    one_line_error(r, "--aug-level: expected --cascade or --low-res too")
    r = run("sample", "--checkpoint", base, "--cascade", sr8, "--low-res", "digits", "--out", out)
    one_line_error(r, "--low-res: super-resolves given images with --checkpoint; --cascade samples the images first")
    r = run("sample", "--checkpoint", base, "--low-res", "digits", "--device", "cpu", "--out", out)
    one_line_error(r, "--checkpoint: expected a super-resolution model (trained with model.image_shape)")
    r = run("sample", "--checkpoint", sr32, "--low-res", str(tmp_path / "missing.npy"), "--out", out)
    one_line_error(r, "--low-res")
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    r = run("sample", "--checkpoint", sr32, "--low-res", str(tmp_path / "junk.npy"), "--device", "cpu", "--out", out)
    one_line_error(r, f"--low-res {str(tmp_path / 'junk.npy')!r}:")
    r = run("sample", "--checkpoint", base, "--cascade", sr8, "--label", "3", "--device", "cpu", "--out", out)
    one_line_error(r, "--label: expected a class-conditional model")
    r = run("sample", "--checkpoint", sr32, "--low-res", "digits", "--truncated", "--out", out)
    one_line_error(r, "--truncated: a --cascade option")
