"""Helpers shared by tests in several folders: the CLI runner and its one-line-error check, a tiny
training config for CLI runs, and a wall-clock guard for tests of hangs (tests/ is on sys.path:
conftest.py)."""
import contextlib
import os
import signal

from click.testing import CliRunner

from scoresde.cli.main import cli

TINY = ["--device", "cpu", "--no-progress", "--steps", "6", "--batch-size", "16", "--set", "data.size=200",
        "--set", "model.width=8", "--set", "model.depth=1", "--set", "model.embed_dim=8", "--set", "sample.n=16",
        "--set", "sample.steps=3", "--set", "train.ckpt_every=3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args):
    """`scoresde ARGS` through click's CliRunner (stdout and stderr kept apart)."""
    return CliRunner().invoke(cli, list(args))


def one_line_error(r, match):
    """A CLI result that failed with exactly one `Error: ...` line containing `match`, and no traceback."""
    assert r.exit_code != 0, r.output
    assert "Traceback" not in r.output and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and match in lines[0], r.stderr


@contextlib.contextmanager
def time_limit(seconds: float):
    """Fail with TimeoutError when the block runs longer than `seconds` (main thread, Unix): a guard against
    hangs (a NaN in an adaptive solver), never a speed assertion."""
    def handler(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
