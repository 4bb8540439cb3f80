"""What is trained: the task interface of the training engine, and the registry of tasks.

The engine (`scoresde.engine`) owns how training runs: the run directory and its lock, config.toml,
log.csv, checkpoints and resume, signals, the optimiser, warm-up, clipping, non-finite skipping,
the EMA, DDP and the hooks. A task owns what is trained: its data and modules, the loss of one batch,
samples, plots and evaluation, and the metadata that rebuilds its model. A task knows nothing of
files' places, signals or ranks; the engine knows nothing of SDEs.

    class MyTask(Task):
        name = "mine"
        def prepare(self): ...                              # data, checks (no weights yet)
        def build(self, device): return module              # weights from torch's global RNG
        def loss(self, model, data_gen, noise_gen): ...     # one batch -> scalar loss
        def meta(self): return {...}                        # JSON, enough to rebuild the model

A task may set `defaults` ({section: {key: value}}): they replace the built-in defaults for a run of that
task (a free section, `model` or `sde`, is replaced whole), under the user's config. Defaults that depend
on the data (a sampler and a sample count for images, a network sized to them) come from the classmethod
`data_defaults(view, data)`, laid over `defaults` and under the user's config, for new runs.
"""
from __future__ import annotations

import sys
from typing import Any

import torch

from scoresde._common.registry import Registry


__all__ = ["Task", "TASKS", "get_task"]

TASKS = Registry("task")


class Task:
    """Base class of what the engine trains. `cfg` is the resolved config, `data` an optional in-memory
    dataset given to `train(data=...)`. Override `prepare`, `build`, `loss` and `meta`; the hooks
    (`sample`, `plot`, `evaluate`, `final_metrics`) are optional."""

    name = ""
    defaults: dict[str, dict[str, Any]] = {}   # config defaults of this task (see the module docstring)
    sections: tuple[str, ...] = ()      # optional config sections this task reads (e.g. "discrete"); the
    #                                     others are left out of its resolved config
    eval_fields: tuple[str, ...] = ()    # what `evaluate` returns, in log.csv column order; the first is
    #                                      the figure of merit (lower is better) that marks the best checkpoint

    def __init__(self, cfg: dict[str, Any], data: Any = None):
        self.cfg, self.data = cfg, data

    @classmethod
    def data_defaults(cls, view: dict[str, Any], data: Any = None) -> dict[str, dict[str, Any]]:
        """Defaults {section: {key: value}} that depend on the data: `view` is the user's config over the
        defaults so far, unchecked (view["user"]: the user's own config, to tell the keys they set), `data`
        the in-memory data given to `train(data=...)` or None. They go under the user's values."""
        return {}

    @classmethod
    def check_config(cls, cfg: dict[str, Any]) -> None:
        """Validate the names a config refers to before anything runs (a dry run calls this too)."""

    def prepare(self) -> None:
        """Load the data and check it against the config. Called before any weight is drawn."""

    @property
    def example_numel(self) -> int:
        """Values per training example (the engine's CPU thread policy uses it)."""
        return 1 << 30

    def build(self, device: torch.device) -> torch.nn.Module:
        """The module whose parameters are trained (and averaged by the EMA), on `device`."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, data_gen: torch.Generator, noise_gen: torch.Generator) -> torch.Tensor:
        """Scalar loss of one batch. `model` is `build`'s module (possibly DDP-wrapped: call it, do not
        inspect it); draw the batch from `data_gen` (CPU) and any noise from `noise_gen` (on the device)."""
        raise NotImplementedError

    def meta(self) -> dict[str, Any]:
        """JSON-able description stored in each checkpoint, enough to rebuild the model (see `ss.load`)."""
        raise NotImplementedError

    def sample(self, model: torch.nn.Module, generator: torch.Generator, n: int, progress: bool = False):
        """`n` samples of the trained model (called with the EMA weights, in eval mode), or None."""
        return None

    def plot(self, x: torch.Tensor, path: str, title: str) -> None:
        """Draw samples `x` to `path`."""

    def evaluate(self, model: torch.nn.Module, generator: torch.Generator) -> dict[str, float]:
        """The run's metrics (keys `eval_fields`), called with the EMA weights at `train.eval_every`."""
        return {}

    def final_metrics(self, x: torch.Tensor) -> dict[str, Any]:
        """Metrics of the final samples, stored in metrics.json."""
        return self.draw_metrics()

    # --- helpers of the hooks ---------------------------------------------------------------------------
    estimate: dict[str, Any] | None = None     # what `sample` estimated for the final draw (progress=True)

    def draw_metrics(self) -> dict[str, Any]:
        """The final draw's estimate for metrics.json: {"sample_n", "sample_nfe", "sample_estimate_seconds"}."""
        e = self.estimate
        if not e:
            return {}
        return {"sample_n": e["n"], "sample_nfe": e["nfe"],
                "sample_estimate_seconds": None if e["seconds"] is None else round(e["seconds"], 2)}

    @staticmethod
    def say(message: str) -> None:
        """One line on stderr beside the progress bars (the count and the time of a draw, before it runs)."""
        from tqdm.auto import tqdm
        tqdm.write(message, file=sys.stderr)


def get_task(name: str) -> type[Task]:
    return TASKS[name]
