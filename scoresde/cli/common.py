"""The `scoresde` command line: train, sample, likelihood, evaluate.

Each command only builds a config (defaults <- TOML file <- flags) and calls the library
(`scoresde.train`, `scoresde.load`, `sde.sample`, `likelihood.dataset_likelihood`). User errors
(bad flags, paths, data, configs, checkpoints) print one `Error: ...` line and exit 1.
"""
from __future__ import annotations

import contextlib
import os

import click


_USER_ERRORS = (ValueError, TypeError, KeyError, OSError, ModuleNotFoundError)   # OSError: file system errors

ALLOW_UNVERIFIED_HELP = ("Also open a checkpoint that cannot prove its integrity (written before metadata digests, "
                         "format version 1), which is refused otherwise.")


@contextlib.contextmanager
def _user_errors():
    """Library errors a user can fix become one ClickException line."""
    from scoresde._common.files import StorageError
    from scoresde.runs.directory import RunLockedError
    from scoresde.training.engine import TrainingError
    try:
        yield
    except (*_USER_ERRORS, TrainingError, StorageError, RunLockedError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if isinstance(e, OSError) and not isinstance(e, StorageError) and e.strerror and e.filename:
            msg = f"{e.filename}: {e.strerror.lower()}"        # not "[Errno 30] Read-only file system: '...'"
        raise click.ClickException(str(msg).splitlines()[0] if msg else type(e).__name__) from None


_CONFIG_HELP = ("A score_sde .pth checkpoint's config: a preset name (--list-configs) or a JSON file with "
                "score_sde's nested config.")


def _pretrained_config(checkpoint: str, config: str | None):
    """(is a pretrained model, its config: preset name / dict / None) from --checkpoint and --config."""
    from scoresde.pretrained import is_diffusers_dir
    pretrained = config is not None or is_diffusers_dir(checkpoint) or checkpoint.endswith((".pth", ".pt"))
    if pretrained and not os.path.exists(checkpoint):
        raise FileNotFoundError(f"--checkpoint {checkpoint!r}: no such file or directory")
    if config is not None and config.endswith(".json"):
        import json
        if not os.path.isfile(config):
            raise FileNotFoundError(f"--config {config!r}: no such file")
        try:
            with open(config) as f:
                config = json.load(f)
        except ValueError as e:
            raise ValueError(f"--config {config!r}: not a JSON file ({e})") from None
    return pretrained, config
