"""`scoresde sample --set sample.KEY=VALUE`: every sampler option reachable, checked against the samplers' declared
options before sampling; a sampler that does not take --steps says so; optimize-steps --out / sample --steps-file."""
import json

import numpy as np
import pytest

from helpers import TINY, one_line_error, run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("opts") / "run")
    r = run("train", "--out", out, "--data", "moons", *TINY)
    assert r.exit_code == 0, r.output
    return out


def draw(run_dir, tmp_path, name, *args):
    path = str(tmp_path / f"{name}.npy")
    r = run("sample", "--checkpoint", run_dir, "--n", "16", "--device", "cpu", "--out", path, *args)
    assert r.exit_code == 0, r.output + r.stderr
    return np.load(path), r.output


def test_set_reaches_the_sampler_options(run_dir, tmp_path):
    base = ["--sampler", "dpm_solver", "--steps", "6"]
    plain, _ = draw(run_dir, tmp_path, "plain", *base)
    two, _ = draw(run_dir, tmp_path, "two", *base, "--set", "sample.order=2")          # the default, given
    three, _ = draw(run_dir, tmp_path, "three", *base, "--set", "sample.order=3")
    assert np.array_equal(plain, two) and not np.allclose(plain, three)
    deis, _ = draw(run_dir, tmp_path, "deis", "--sampler", "deis", "--steps", "6", "--set", "sample.schedule=quadratic",
                   "--set", "sample.corrector=true")
    karras, _ = draw(run_dir, tmp_path, "karras", "--sampler", "deis", "--steps", "6")
    assert not np.allclose(deis, karras)
    pc, _ = draw(run_dir, tmp_path, "pc", "--sampler", "pc", "--steps", "30", "--set", "sample.snr=0.05",
                 "--set", "sample.corrector_steps=2")
    assert np.isfinite(pc).all()


def test_bad_options_are_one_line_naming_the_flag(run_dir, tmp_path):
    out = ["--checkpoint", run_dir, "--n", "4", "--out", str(tmp_path / "x.npy"), "--device", "cpu"]
    one_line_error(run("sample", *out, "--sampler", "dpm_solver", "--set", "sample.ordr=3"),
                   "--set: sampler 'dpm_solver': unknown option(s) ordr; expected some of: lower_order_final, order")
    one_line_error(run("sample", *out, "--sampler", "dpm_solver", "--set", "sample.order=abc"),
                   "--set: sampler 'dpm_solver': option order: expected an integer, found 'abc'")
    one_line_error(run("sample", *out, "--sampler", "dpm_solver", "--set", "sample.order=7"),
                   "--set sample.order: expected 1, 2 or 3, found 7")
    one_line_error(run("sample", *out, "--set", "model.width=3"), "expected sample.KEY=VALUE")
    one_line_error(run("sample", *out, "--set", "sample.steps=3"), "use --steps")
    one_line_error(run("sample", *out, "--set", "order"), "expected SECTION.KEY=VALUE")
    assert not (tmp_path / "x.npy").exists()


def test_a_sampler_that_ignores_steps_says_so(run_dir, tmp_path):
    _, output = draw(run_dir, tmp_path, "ode", "--sampler", "ode", "--steps", "20", "--set", "sample.rtol=1e-3",
                     "--set", "sample.atol=1e-3")
    assert "--steps 20: not used by ode, an adaptive solver" in output
    _, output = draw(run_dir, tmp_path, "ddim", "--sampler", "ddim", "--steps", "20")
    assert "--steps" not in output
    _, output = draw(run_dir, tmp_path, "ode2", "--sampler", "ode", "--set", "sample.rtol=1e-3")   # no --steps given
    assert "not used" not in output


def test_list_samplers_and_help_come_from_the_records():
    from scoresde.samplers import list_samplers, sampler_info
    r = run("sample", "--list-samplers")
    assert r.exit_code == 0, r.output
    for name in list_samplers():
        assert f"{name} ({sampler_info(name).kind}): {sampler_info(name).summary}" in r.output
    assert "order=2" in r.output and "rtol=1e-05" in r.output and "chosen by the solver" in r.output
    assert "dpm_solver: schedule, rho, order, lower_order_final" in " ".join(run("sample", "--help").output.split())


def test_optimize_steps_out_and_sample_steps_file_on_a_run(run_dir, tmp_path):
    fit = tmp_path / "fit.json"
    r = run("optimize-steps", "--checkpoint", run_dir, "--budget", "4", "--n", "16", "--reference-steps", "20",
            "--maxfev", "10", "--device", "cpu", "--out", str(fit))
    assert r.exit_code == 0 and f"--steps-file {fit}" in r.output, r.output
    rec = json.loads(fit.read_text())
    assert rec["sampler"] == "unipc" and rec["budget"] == 4 and rec["checkpoint"].endswith("ckpt_00000006.safetensors")
    x, output = draw(run_dir, tmp_path, "fitted", "--steps-file", str(fit))
    assert "using the fitted time grid" in output and "note" not in output
    default, _ = draw(run_dir, tmp_path, "default", "--sampler", "unipc", "--steps", "4")
    assert not np.allclose(x, default)
    one_line_error(run("sample", "--checkpoint", run_dir, "--steps-file", str(fit), "--sampler", "ddim", "--out",
                       str(tmp_path / "y.npy")), "--sampler ddim: --steps-file")
    one_line_error(run("sample", "--checkpoint", run_dir, "--steps-file", str(tmp_path / "none.json"), "--out",
                       str(tmp_path / "y.npy")), "--steps-file")
