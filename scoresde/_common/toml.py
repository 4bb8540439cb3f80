"""TOML reading and writing of plain nested dicts (configs, run records); writes are atomic."""
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
