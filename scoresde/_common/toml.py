"""Training configuration: defaults, TOML files, command-line overrides and validation.

A config is a nested dict with the sections below. The fixed sections (`data`, `train`,
`sample`, and the top-level run keys) are checked key by key against `DEFAULTS`, each value against
the default's type. The `sde` and `model` sections hold a `name` plus free keyword arguments that
go to the SDE constructor and to `get_model`, so every network option stays reachable from a file.

    cfg = resolve("configs/digits.toml", {"train.lr": 1e-4})   # file, then dotted overrides
    save_toml(cfg, "runs/x/config.toml"); cfg == load_toml("runs/x/config.toml")

Training defaults follow score_sde (Song et al. 2021, arXiv:2011.13456): Adam lr 2e-4, betas
(0.9, 0.999), eps 1e-8, gradient clipping at norm 1, EMA; the embedded default is a short 2-D
run (the four-mode mixture), so its warm-up and EMA decay are shorter than the image defaults.
"""
from __future__ import annotations

import os
import tomllib
from typing import Any, Mapping
from scoresde._common.files import atomic_write_bytes


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML config file (not yet merged with the defaults)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path!r} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"config file {path!r} is a directory, expected a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config file {path!r} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"config file {path!r} is not valid TOML: not UTF-8 text") from None


def to_toml(cfg: Mapping[str, Any]) -> str:
    """The config as TOML text (top-level keys first, then one table per section)."""
    import tomli_w
    flat = {k: v for k, v in cfg.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in cfg.items() if isinstance(v, Mapping)}
    return tomli_w.dumps({**flat, **tables})


def save_toml(cfg: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write the config as TOML, atomically (temporary file, then rename)."""
    atomic_write_bytes(path, ("# resolved scoresde config\n" + to_toml(cfg)).encode())
