"""What a run leaves and what its bars and plots say (issue 33, items 9 and 10): no `.lock` or empty
`samples/` after a finished run, no "EMA" in titles of runs without one, progress bars that read right,
plots with context and without blank bands or overlapping text."""
import os

import torch

import scoresde as ss
from scoresde.evaluation.likelihood import _ExampleBar
from scoresde.runs.directory import RunLock
from scoresde.runs.plots import pair_rows, scatter_figure, text_figure
from scoresde.samplers.ode import TimeBar
from scoresde.training.tasks.score import ScoreTask

TINY = {"device": "cpu", "data": {"name": "moons", "size": 256},
        "model": {"width": 8, "depth": 1, "embed_dim": 8},
        "train": {"steps": 3, "batch_size": 16, "ckpt_every": 3, "log_every": 1, "progress": False},
        "sample": {"n": 16, "steps": 3}}


def tiny(**train):
    return {**TINY, "train": {**TINY["train"], **train}}


def test_a_finished_run_leaves_no_lock_and_no_empty_samples_folder(tmp_path):
    ss.train(tiny(), out=str(tmp_path / "a"))
    left = sorted(os.listdir(tmp_path / "a"))
    assert ".lock" not in left and "samples" not in left and "samples.png" in left and "checkpoints" in left
    ss.train(tiny(sample_every=3), out=str(tmp_path / "b"))             # plots during training stay
    assert os.listdir(tmp_path / "b" / "samples") == ["step_00000003.png"]
    ss.train(tiny(steps=6), out=str(tmp_path / "a"), resume=True)          # a resumed run takes the lock again
    assert ".lock" not in os.listdir(tmp_path / "a")


def test_a_lock_file_removed_by_its_ending_holder_is_not_taken_for_the_lock(tmp_path):
    first = RunLock(str(tmp_path)).acquire()
    waiting = RunLock(str(tmp_path))
    fd = os.open(waiting.path, os.O_RDWR)           # opened before the holder ends, locked after: a dead file
    try:
        first.release()
        assert not os.path.exists(first.path) and not waiting._names(fd)
    finally:
        os.close(fd)
    second = waiting.acquire()
    assert second._names(second._fd)
    second.release()


def test_titles_say_ema_only_for_runs_with_an_ema(tmp_path, monkeypatch):
    titles = []
    monkeypatch.setattr(ScoreTask, "plot", lambda self, x, path, title: titles.append(title))
    ss.train(tiny(ema_decay=0.0), out=str(tmp_path / "raw"))
    ss.train(tiny(), out=str(tmp_path / "ema"))
    assert titles == ["3 steps", "3 steps, EMA"]


def test_progress_bars_count_finished_examples_and_show_the_time_plainly():
    bar = _ExampleBar(8, 1e-5, 1.0)
    bar.batch(0, 8)(0.95)                                   # one batch of 8, its ODE at t = 0.95
    text = str(bar.bar)
    assert " 95%" in text and "0/8 examples done" in text and "8/8" not in text
    bar.close()
    ode = TimeBar(1.0, 1e-3, True)
    ode.update(0.0425)
    text = str(ode.bar)
    ode.close()
    assert "t=0.0425" in text and "t=," not in text and ", 0.0425" not in text


def _extent(fig, artist):
    return artist.get_window_extent(fig.canvas.get_renderer())


def test_wide_2d_data_has_no_blank_band_and_conditional_samples_show_the_data():
    moons = ss.load_dataset("moons", size=2000).x
    fig = scatter_figure(moons, moons, title="moons: 3 steps, EMA")
    fig.canvas.draw()
    title = _extent(fig, fig._suptitle)
    top = max(_extent(fig, ax.title).y1 for ax in fig.axes)
    assert (title.y0 - top) / fig.dpi < 0.5                 # inches between the title and the panels' titles (was 0.88)
    mix = ss.load_dataset("mixture", size=4000)
    one = mix.x[mix.labels == 0]
    fig = scatter_figure(one, title="class 0", context=mix.x)
    ax = fig.axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 < -1 and x1 > 1 and y0 < -1 and y1 > 1       # every mode in view, not a zoom on class 0
    assert "data in grey" in ax.get_title()


def test_text_plot_title_does_not_overlap_its_first_line():
    fig = text_figure(["()[]", "[]", "(("] * 20, [True, True, False] * 20, title="brackets: 2000 steps, EMA")
    fig.canvas.draw()
    boxes = sorted((_extent(fig, t) for t in fig.texts), key=lambda b: -b.y1)
    for upper, lower in zip(boxes, boxes[1:]):
        assert lower.y1 <= upper.y0 + 0.5                    # each line below the one above, no overlap


def test_inpainting_grid_shows_the_originals_above_known_and_filled():
    n = 5
    known = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 4, 4) / 10
    mask = torch.zeros_like(known, dtype=torch.bool)
    mask[..., :2, :] = True                                 # top half known
    filled = -known
    images, c = pair_rows(known, mask, filled, originals=known)
    assert c == n and images.shape[0] == 3 * n
    assert torch.equal(images[:n], known)                                              # originals
    assert (images[n:2 * n][~mask] == -1).all() and torch.equal(images[n:2 * n][mask], known[mask])  # known
    assert torch.equal(images[2 * n:], filled)                                         # fills
