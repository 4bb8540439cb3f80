"""What the `scoresde` commands share: user errors as one line, the registries' names for click choices,
shared options, and `ModelSource`, the one way a command opens the model --checkpoint names.

User errors (bad flags, paths, data, configs, checkpoints) print one `Error: ...` line and exit 1.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, NamedTuple

import click
import torch

from scoresde._common.files import StorageError
from scoresde.models.nets import list_models
from scoresde.pretrained import is_diffusers_dir, load_any
from scoresde.runs.directory import RunLockedError
from scoresde.runs.load import open_run
from scoresde.samplers.core import list_samplers
from scoresde.samplers.masked import list_discrete_samplers
from scoresde.sde.base import SDES
from scoresde.training.engine import TrainingError


__all__ = ["user_errors", "MODEL_FLAGS", "names", "CONFIG_HELP", "model_options", "device_option", "allow_unverified_option",
           "Opened", "ModelSource"]


_USER_ERRORS = (ValueError, TypeError, KeyError, OSError, ModuleNotFoundError,   # OSError: file-system errors
                TrainingError, StorageError, RunLockedError)


# the library's argument names that open a model, and the flags of the commands that pass them (`ModelSource`)
MODEL_FLAGS = {"path_or_module": "--checkpoint", "path_or_state_dict": "--checkpoint", "checkpoint": "--checkpoint",
               "config": "--config"}


@contextlib.contextmanager
def user_errors(flags: dict[str, str] | None = None):
    """Library errors a user can fix become one ClickException line; one that starts with a library argument
    named in `flags` ("path_or_module: ...") starts with its flag instead ("--checkpoint: ...")."""
    try:
        yield
    except _USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if isinstance(e, OSError) and not isinstance(e, StorageError) and e.strerror and e.filename:
            msg = f"{e.filename}: {e.strerror.lower()}"        # not "[Errno 30] Read-only file system: '...'"
        msg = str(msg).splitlines()[0] if msg else type(e).__name__
        name, colon, rest = msg.partition(":")
        if colon and name in (flags or {}):
            msg = flags[name] + colon + rest
        raise click.ClickException(msg) from None


def names(kind: str) -> list[str]:
    """The registered names of `kind` (sde, model, sampler) for a click.Choice."""
    if kind == "sde":
        return list(SDES)
    if kind == "model":
        return list_models()
    return list_samplers() + list_discrete_samplers()       # the discrete ones: task masked


CONFIG_HELP = ("A score_sde .pth checkpoint's config: a preset name (--list-configs) or a JSON file with "
               "score_sde's nested config.")


def model_options(f):
    """--checkpoint and --config of the commands that open trained and pretrained models (`ModelSource`)."""
    f = click.option("--config", metavar="PRESET|FILE", help=CONFIG_HELP)(f)
    return click.option("--checkpoint", required=True, type=click.Path(), metavar="DIR|FILE",
                        help="Run directory (its latest checkpoint) or checkpoint file; a score_sde checkpoint_N.pth "
                             "(with --config) or a diffusers save_pretrained directory.")(f)


device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)

allow_unverified_option = click.option(
    "--allow-unverified", is_flag=True,
    help="Also open a checkpoint that cannot prove its integrity (written before metadata digests, format "
         "version 1), which is refused otherwise.")


class Opened(NamedTuple):
    """A model opened from --checkpoint: a run's checkpoint `file` and metadata `meta`; None for a pretrained one."""
    model: Any
    sde: Any
    file: str | None = None
    meta: dict[str, Any] | None = None


class ModelSource(NamedTuple):
    """What --checkpoint (and --config) name: a scoresde run directory or checkpoint file, or a pretrained
    model (a score_sde .pth with its `config`, a preset name or score_sde's nested config dict, or a diffusers
    save_pretrained directory). `ModelSource(path)` is a run; `parse` tells them apart."""
    path: str
    config: Any = None
    pretrained: bool = False
    verify: bool = True            # False: --allow-unverified (checkpoints without metadata digests)

    @classmethod
    def parse(cls, checkpoint: str, config: str | None = None, verify: bool = True) -> ModelSource:
        """--checkpoint and --config: which kind of model, its config file read; missing files are errors."""
        pretrained = config is not None or is_diffusers_dir(checkpoint) or checkpoint.endswith((".pth", ".pt"))
        if pretrained and not os.path.exists(checkpoint):
            raise FileNotFoundError(f"--checkpoint {checkpoint!r}: no such file or directory")
        if config is not None and config.endswith(".json"):
            if not os.path.isfile(config):
                raise FileNotFoundError(f"--config {config!r}: no such file")
            try:
                with open(config) as f:
                    config = json.load(f)
            except ValueError as e:
                raise ValueError(f"--config {config!r}: not a JSON file ({e})") from None
        return cls(checkpoint, config, pretrained, verify)

    def open(self, device: torch.device, *, ema: bool = True, autoencoder: str | None = None) -> Opened:
        """The model (EMA weights unless `ema=False`) and its SDE on `device`; a latent run's `autoencoder`
        from where it was recorded, or from this path if it moved."""
        if self.pretrained:
            return Opened(*load_any(self.path, config=self.config, ema=ema, device=device, verify=self.verify))
        return Opened(*open_run(self.path, ema=ema, device=device, autoencoder=autoencoder, verify=self.verify))
