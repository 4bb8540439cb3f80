"""Issue 27, item 3: `sample --n` and `likelihood --n` larger than a batch run in batches, with bounded
memory; a .npy is streamed to disk chunk by chunk."""
import os
import subprocess
import sys

import numpy as np
from click.testing import CliRunner

import scoresde.cli.measure as measure_cli
import scoresde.cli.sample as sample_cli
from scoresde.cli import cli
from problems import TESTS

RUN = os.path.join(str(TESTS), "fixtures", "main_run")     # a run written by 8c26e4f (format 1: opt-in)


def test_a_large_n_is_streamed_in_batches_under_an_address_space_limit(tmp_path):
    """2,000,000 samples in 31 batches of 65536 under RLIMIT_AS = 2 GiB (all at once needs more)."""
    out = tmp_path / "x.npy"
    # the child prints its own peak (VmHWM) at exit: RUSAGE_CHILDREN would also carry this process's peak
    code = ("import atexit, resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
            "atexit.register(lambda: print('PEAK_KB', next(int(l.split()[1]) for l in open('/proc/self/status') "
            "if l.startswith('VmHWM:')), file=sys.stderr)); "
            "from scoresde.cli import main; sys.argv = sys.argv[1:]; main(sys.argv)")
    p = subprocess.run([sys.executable, "-c", code, "sample", "--checkpoint", RUN, "--n", "2000000", "--steps", "1",
                        "--sampler", "ddim", "--out", str(out), "--allow-unverified", "--device", "cpu"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "in 31 batches of 65536" in p.stderr
    x = np.load(out, mmap_mode="r")
    assert x.shape == (2000000, 2) and x.dtype == np.float32 and np.isfinite(x[-1000:]).all()
    peak_kb = int(p.stderr.rsplit("PEAK_KB", 1)[1].split()[0])
    assert peak_kb < 1_500_000, peak_kb                                         # KiB


def test_batches_continue_one_generator_and_one_batch_is_one_call(tmp_path, monkeypatch):
    """n up to one batch is the single call of before (bit-identical); more are the same generator run on."""
    args = ["sample", "--checkpoint", RUN, "--n", "10", "--steps", "3", "--sampler", "ddim", "--allow-unverified",
            "--device", "cpu", "--seed", "4"]
    r = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "one.npy")])
    assert r.exit_code == 0, r.output
    monkeypatch.setattr(sample_cli, "sample_batch", lambda shape: 4)
    r = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "chunked.npy")])
    assert r.exit_code == 0, r.output
    one, chunked = np.load(tmp_path / "one.npy"), np.load(tmp_path / "chunked.npy")
    assert one.shape == chunked.shape == (10, 2)
    assert np.isfinite(chunked).all() and not np.array_equal(one, chunked)   # other draws, same law
    r = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "fig.png")])     # a figure: concatenated
    assert r.exit_code == 0 and (tmp_path / "fig.png").stat().st_size > 0


def test_a_figure_over_the_memory_budget_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORESDE_MEMORY_BUDGET", "1M")
    r = CliRunner().invoke(cli, ["sample", "--checkpoint", RUN, "--n", "1000000", "--steps", "1",
                                 "--allow-unverified", "--device", "cpu", "--out", str(tmp_path / "f.png")])
    assert r.exit_code == 1 and "--n 1000000" in r.output and ".npy" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "f.png").exists()


def test_likelihood_solves_at_most_one_batch_at_once(monkeypatch):
    seen = []
    real = measure_cli.dataset_likelihood

    def spy(model, sde, x, batch_size, **kw):
        seen.append((len(x), batch_size))
        return real(model, sde, x, batch_size, **kw)
    monkeypatch.setattr(measure_cli, "dataset_likelihood", spy)
    monkeypatch.setattr(measure_cli, "sample_batch", lambda shape: 7)
    r = CliRunner().invoke(cli, ["likelihood", "--checkpoint", RUN, "--data", "mixture", "--n", "20", "--tol", "1e-2",
                                 "--allow-unverified", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert seen == [(20, 7)] and "20 examples" in r.output
