"""`scoresde sample --prompt` on a text-conditional run: a grid of prompts (rows) x samples, guidance weight,
negative prompt and rescale; one-line errors for prompts where they do not belong."""
import numpy as np
import pytest
import torch

import scoresde as ss
from scoresde.data.datasets import Dataset
from helpers import TINY, one_line_error, run

WORDS = ["zero", "one", "two", "three"]
MODEL = {"name": "ddpm_unet", "ch": 8, "ch_mult": [1, 2], "num_groups": 4, "context_dim": 8, "text_depth": 1,
         "text_heads": 2}
TRAIN = {"steps": 4, "batch_size": 8, "progress": False, "log_every": 2, "ckpt_every": 4, "warmup": 1}


def captioned(n=32, seed=0):
    """A tiny captioned image set: 8x8 noise images with captions whose word order carries information."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g) * 2 - 1
    texts = [f"{WORDS[i % 4]} left of {WORDS[(i // 4) % 4]}" for i in range(n)]
    return Dataset(x, "captioned", kind="images", texts=texts)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    ss.train({"model": MODEL, "train": TRAIN, "sample": {"n": 4, "steps": 2}, "device": "cpu"}, data=captioned(),
             out=str(d / "text"))
    r = run("train", "--out", str(d / "plain"), *TINY)
    assert r.exit_code == 0, r.output + r.stderr
    return d


def test_prompts_give_a_grid_of_rows(runs, tmp_path, monkeypatch):
    import scoresde.runs.plots as plots
    drawn, grid = [], plots.save_prompt_grid
    monkeypatch.setattr(plots, "save_prompt_grid", lambda path, x, prompts, title="": (
        drawn.append((tuple(x.shape), list(prompts))), grid(path, x, prompts, title)))
    base = ["sample", "--checkpoint", str(runs / "text"), "--steps", "3", "--device", "cpu", "--seed", "5"]
    r = run(*base, "--prompt", "one left of two", "--prompt", "two left of one", "--guidance", "4", "--n", "3",
            "--guidance-rescale", "0.7", "--negative-prompt", "zero", "--out", str(tmp_path / "grid.png"))
    assert r.exit_code == 0, r.output + r.stderr
    assert "(2 prompts x 3)" in r.output and (tmp_path / "grid.png").stat().st_size > 0
    # the figure: save_prompt_grid, one labelled row per prompt
    assert drawn == [((2, 3, 1, 8, 8), ["one left of two", "two left of one"])]
    # rows are the prompts, in order: the first prompt's row is what that prompt alone draws (same seed)
    r = run(*base, "--prompt", "one left of two", "--prompt", "two left of one", "--guidance", "4", "--n", "2",
            "--out", str(tmp_path / "two.npy"))
    assert r.exit_code == 0, r.stderr
    r = run(*base, "--prompt", "one left of two", "--guidance", "4", "--n", "2", "--out", str(tmp_path / "one.npy"))
    assert r.exit_code == 0, r.stderr
    two, one = np.load(tmp_path / "two.npy"), np.load(tmp_path / "one.npy")
    assert two.shape == (4, 1, 8, 8) and np.isfinite(two).all()
    np.testing.assert_allclose(two[:2], one, rtol=1e-4, atol=1e-5)
    assert not np.allclose(two[2:], one, atol=1e-3)                   # the other prompt, the other noise


def test_guidance_weight_and_negative_prompt_change_the_samples(runs, tmp_path):
    def draw(*extra):
        out = tmp_path / f"d{len(list(tmp_path.iterdir()))}.npy"
        r = run("sample", "--checkpoint", str(runs / "text"), "--steps", "3", "--device", "cpu", "--n", "2",
                "--prompt", "three left of one", *extra, "--out", str(out))
        assert r.exit_code == 0, r.stderr
        return np.load(out)
    assert np.array_equal(draw("--guidance", "2"), draw("--guidance", "2.0"))
    assert not np.allclose(draw("--guidance", "1"), draw("--guidance", "6"))
    assert not np.allclose(draw("--guidance", "6"), draw("--guidance", "6", "--negative-prompt", "one left of three"))


def test_prompt_errors_are_one_line(runs, tmp_path):
    out = str(tmp_path / "x.png")
    text, plain = str(runs / "text"), str(runs / "plain")
    one_line_error(run("sample", "--checkpoint", plain, "--prompt", "a", "--out", out),
                   "--prompt: expected a text-conditional model (trained on captioned data)")
    one_line_error(run("sample", "--checkpoint", text, "--negative-prompt", "a", "--out", out),
                   "--negative-prompt: expected --prompt too")
    one_line_error(run("sample", "--checkpoint", text, "--guidance", "3", "--out", out),
                   "--guidance: expected --label too (the class to guide towards), or --prompt")
    one_line_error(run("sample", "--checkpoint", text, "--prompt", "a", "--label", "1", "--out", out),
                   "--prompt: a model is guided by --label or by --prompt, found both")
    one_line_error(run("sample", "--checkpoint", text, "--prompt", "a", "--known", "digits", "--mask", "top",
                       "--out", out), "--prompt: not available with --known")
    one_line_error(run("train", "--out", str(tmp_path / "t"), *TINY, "--set", 'model.text_encoder="transformer"'),
                   "config model.text_encoder = 'transformer': needs captioned data")
    one_line_error(run("train", "--out", str(tmp_path / "t2"), *TINY, "--set", "model.text_len=\"long\""),
                   "config model.text_len: expected an integer")


def test_help_documents_prompts():
    r = run("sample", "--help")
    assert r.exit_code == 0
    for words in ("--prompt", "grid", "--negative-prompt", "--guidance-rescale"):
        assert words in r.output
