"""The command line under bad models and bad flags: non-finite samples never report success, dry runs
check the data and the model keys, sample/likelihood use train's thread policy, bars count steps."""
import os

import numpy as np
import pytest
import torch

import scoresde.cli.common as cli_common
import scoresde.runs.plots as plotting
from helpers import TINY, one_line_error, run
from helpers import time_limit


def error_after_bar(r, match):
    """Exit 1 with one `Error:` line, after whatever a progress bar drew on stderr before it."""
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output + r.stderr
    lines = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error:" in ln]
    assert len(errors) == 1 and lines[-1] is errors[0] and match in errors[0], r.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    for name, extra in [("pts", []), ("digits", ["--data", "digits"])]:
        r = run("train", "--out", str(d / name), *TINY, *extra)
        assert r.exit_code == 0, r.output + r.stderr
    return d


@pytest.fixture
def spy_load(monkeypatch):
    """Wrap `open_run` where the CLI looks it up (`scoresde.cli.common`): record the thread count at every
    network call and, with `state["nan"]`, return a model whose weights are NaN (what a damaged checkpoint
    gives)."""
    real, state = cli_common.open_run, {"nan": False, "threads": []}

    def open_run(*args, **kwargs):
        run = real(*args, **kwargs)
        if state["nan"]:
            with torch.no_grad():
                for p in run.model.parameters():
                    p.fill_(float("nan"))
        run.model.net.register_forward_pre_hook(lambda m, a: state["threads"].append(torch.get_num_threads()))
        return run
    monkeypatch.setattr(cli_common, "open_run", open_run)
    return state


def test_dry_run_checks_the_data_and_the_model_keys(tmp_path):
    one_line_error(run("train", "--dry-run", "--data", str(tmp_path / "missing.npy")), "no such file")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    one_line_error(run("train", "--dry-run", "--data", str(tmp_path / "junk.npy")), "not a readable")
    r = run("train", "--dry-run", "--set", "model.widht=5")
    one_line_error(r, "config model.widht: unknown key of model 'mlp'")
    assert "known: model.width, model.depth" in r.stderr
    assert run("train", "--dry-run", "--data", "moons", "--set", "model.width=5").exit_code == 0


@pytest.mark.parametrize("sampler", ["ode", "euler_maruyama", "dpm_solver"])
def test_nan_weights_never_report_success(runs, spy_load, tmp_path, sampler):
    spy_load["nan"] = True
    for out in ("s.npy", "s.png"):
        with time_limit(60):
            r = run("sample", "--checkpoint", str(runs / "pts"), "--sampler", sampler, "--steps", "5", "--n", "8",
                    "--device", "cpu", "--out", str(tmp_path / out))
        error_after_bar(r, "score_fn returned")
        assert "wrote" not in r.output and not (tmp_path / out).exists()


def test_nan_weights_in_likelihood_and_inpainting_fail_fast(runs, spy_load, tmp_path):
    spy_load["nan"] = True
    with time_limit(60):
        r = run("likelihood", "--checkpoint", str(runs / "pts"), "--data", "moons", "--n", "8")
    error_after_bar(r, "score_fn returned")
    with time_limit(60):
        r = run("sample", "--checkpoint", str(runs / "digits"), "--known", "digits", "--mask", "top", "--n", "2",
                "--steps", "30", "--device", "cpu", "--out", str(tmp_path / "f.png"))
    error_after_bar(r, "in impute")
    assert not (tmp_path / "f.png").exists()


def test_sample_and_likelihood_use_one_thread_for_small_data(runs, spy_load, tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        r = run("sample", "--checkpoint", str(runs / "pts"), "--n", "8", "--steps", "3", "--device", "cpu",
                "--out", str(tmp_path / "s.npy"))
        assert r.exit_code == 0, r.stderr
        r = run("likelihood", "--checkpoint", str(runs / "pts"), "--data", "moons", "--n", "4")
        assert r.exit_code == 0, r.stderr
        assert spy_load["threads"] and set(spy_load["threads"]) == {1}
        assert torch.get_num_threads() == 2                  # restored
    finally:
        torch.set_num_threads(before)


def test_steps_20_shows_a_20_step_bar(runs, tmp_path):
    for sampler in ("dpm_solver", "euler_maruyama"):
        r = run("sample", "--checkpoint", str(runs / "pts"), "--sampler", sampler, "--steps", "20", "--n", "4",
                "--device", "cpu", "--out", str(tmp_path / "s.npy"))
        assert r.exit_code == 0 and "0/20" in r.stderr and "/19" not in r.stderr, r.stderr


def test_inpainting_png_pairs_known_and_filled(runs, monkeypatch, tmp_path):
    calls = []
    real = plotting.inpainting_grid
    monkeypatch.setattr(plotting, "inpainting_grid", lambda *a, **k: (calls.append(a), real(*a, **k)))
    r = run("sample", "--checkpoint", str(runs / "digits"), "--known", "digits", "--mask", "top", "--n", "3",
            "--steps", "4", "--sampler", "euler_maruyama", "--device", "cpu", "--out", str(tmp_path / "f.png"))
    assert r.exit_code == 0 and os.path.getsize(tmp_path / "f.png") > 0, r.stderr
    known, mask, filled = calls[0][:3]
    assert known.shape == filled.shape == (3, 1, 8, 8) and torch.equal(filled[mask], known[mask])
    assert np.isfinite(filled.numpy()).all()
