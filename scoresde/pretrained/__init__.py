"""Pretrained models from other codebases, loaded exactly: `(model, sde)` ready for every sampler.

- `load_score_sde(path, config, ema=True)`: official score_sde_pytorch `checkpoint_N.pth` files
  (NCSN++, DDPM++, DDPM; VE, VP, sub-VP), `config` a preset name or score_sde's nested config dict;
- `from_diffusers(path_or_module)`: a local diffusers `save_pretrained` directory (UNet2DModel and its
  scheduler, or a pipeline folder);
- `load_dit(path_or_state_dict, **official_args)`: facebookresearch/DiT weights.

Each returns `(model, sde)`: `model(x, t)` is the score (a `ScoreModel`), `model.net` the raw network,
called exactly as its original code calls it. Nothing is downloaded and nothing is unpickled beyond
tensors and plain containers. `load_any` is the dispatcher the command line uses.
"""
from __future__ import annotations

import importlib
import os
from typing import Any
from scoresde.runs.load import load

__all__ = ["load_score_sde", "list_configs", "from_diffusers", "load_dit", "load_any"]

_LAZY = {"load_score_sde": ".score_sde", "list_configs": ".score_sde_configs", "from_diffusers": ".diffusers_models",
         "load_dit": ".dit"}


def __getattr__(name: str) -> Any:          # the loaders import their modules only when used
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_diffusers_dir(path: str | os.PathLike) -> bool:
    """A diffusers `save_pretrained` folder: a pipeline (`model_index.json`) or a model (`config.json`
    with diffusers' `_class_name`)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return False
    if os.path.isfile(os.path.join(path, "model_index.json")):
        return True
    cfg = os.path.join(path, "config.json")
    if os.path.isfile(cfg):
        import json
        try:
            with open(cfg) as f:
                return "_class_name" in json.load(f)
        except (OSError, ValueError):
            return False
    return False


def load_any(path: str | os.PathLike, *, config: Any = None, ema: bool = True, device: Any = None,
             verify: bool = True):
    """(model, sde) from whatever `path` names: a scoresde run directory or checkpoint, an official
    score_sde `.pth` (with `config`, a preset name or nested dict), or a diffusers directory. `verify`: as
    for `scoresde.load`."""
    path = os.fspath(path)
    if is_diffusers_dir(path):
        if config is not None:
            raise ValueError(f"config: a diffusers directory carries its own config ({path!r}); found config={config!r}")
        model, sde = __getattr__("from_diffusers")(path)
    elif os.path.isfile(path) and path.endswith((".pth", ".pt")):
        if config is None:
            raise ValueError(f"config: the score_sde checkpoint {path!r} needs its config (a preset name from "
                             "`scoresde sample --list-configs`, or a nested config dict); found none")
        model, sde = __getattr__("load_score_sde")(path, config, ema=ema)
    else:
        if config is not None:
            raise ValueError(f"config: a scoresde run or checkpoint ({path!r}) carries its own config; "
                             f"found config={config!r}")
        return load(path, ema=ema, device=device, verify=verify)
    model.eval()
    return (model.to(device) if device is not None else model), sde
