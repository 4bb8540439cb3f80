"""What the diffusers loaders share: importing diffusers, finding and reading a scheduler config, and the
`ScoreModel` around a diffusers UNet (`DiffusersUNetModel`: its data shape and range, its call)."""
from __future__ import annotations

import os
from typing import Any, Callable

import torch

from scoresde.models.conditioning import Cond, as_cond
from scoresde.models.prebuild import check_diffusers_model, read_diffusers_config
from scoresde.models.score_model import ScoreModel


__all__ = ["diffusers_module", "DiffusersUNetModel", "find_scheduler_config", "scheduler_config", "data_shape_of",
           "load_unet_folder"]


def diffusers_module(extra: str = "diffusers"):
    """The diffusers package, or one ImportError line saying how to install it (`extra`: what to pip install)."""
    try:
        import diffusers
    except ImportError as e:
        raise ImportError("from_diffusers needs the diffusers package, which scoresde does not install: "
                          f"pip install {extra}") from e
    return diffusers


class DiffusersUNetModel(ScoreModel):
    """A `ScoreModel` around a diffusers UNet2DModel called as diffusers calls it, `net(x, c[, class_labels])`,
    returning its own output object; its data is images in [-1, 1] of `data_shape`."""

    def __init__(self, net: Any, sde: Any, parameterization: str, conditioning: str,
                 data_shape: tuple[int, ...] | None, scheduler_config: dict[str, Any] | None = None):
        super().__init__(net, sde, parameterization, conditioning=conditioning)
        self._data_shape = None if data_shape is None else tuple(int(d) for d in data_shape)
        self.scheduler_config = dict(scheduler_config or {})
        self.data_range = (-1.0, 1.0)           # diffusers' image models work on [-1, 1]

    @property
    def data_shape(self) -> tuple[int, ...] | None:
        return self._data_shape

    @property
    def num_classes(self) -> int | None:
        return None                             # diffusers' class embeddings have no null label

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Model data [-1, 1] -> [0, 1] (diffusers' image post-processing, without the clamp)."""
        return (x + 1) / 2

    def from_unit(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] -> the model's data space [-1, 1]."""
        return 2 * x - 1

    def call_net(self, x: torch.Tensor, c: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        cond = as_cond(cond)
        if cond is not None and cond.keys() != ("labels",):
            raise ValueError(f"cond: a diffusers UNet2DModel reads class labels only, found fields {list(cond.keys())}")
        out = self.net(x, c) if cond is None else self.net(x, c, class_labels=cond.expand(x.shape[0]).labels)
        if isinstance(out, (tuple, list)):
            out = out[0]
        elif not isinstance(out, torch.Tensor) and hasattr(out, "sample"):
            out = out.sample                    # UNet2DOutput
        return out


def find_scheduler_config(model_dir: str) -> str | None:
    """scheduler_config.json beside the model, in its scheduler/, or in ../scheduler (a pipeline's unet/)."""
    for cand in (os.path.join(model_dir, "scheduler_config.json"),
                 os.path.join(model_dir, "scheduler", "scheduler_config.json"),
                 os.path.join(os.path.dirname(os.path.abspath(model_dir)), "scheduler", "scheduler_config.json")):
        if os.path.isfile(cand):
            return cand
    return None


def scheduler_config(scheduler: Any, check_class: Callable[[str], None] | None = None) -> dict[str, Any]:
    """A scheduler object, its config dict, or a path to scheduler_config.json / its folder -> dict;
    `check_class(name)` may refuse a scheduler object by its class name."""
    if isinstance(scheduler, (str, os.PathLike)):
        p = os.fspath(scheduler)
        p = os.path.join(p, "scheduler_config.json") if os.path.isdir(p) else p
        if not os.path.isfile(p):
            raise ValueError(f"scheduler: expected a scheduler_config.json or its folder, "
                             f"found {os.fspath(scheduler)!r}")
        return read_diffusers_config(p, "path_or_module")
    if isinstance(scheduler, dict):
        return dict(scheduler)
    if check_class is not None:
        check_class(type(scheduler).__name__)
    cfg = getattr(scheduler, "config", None)
    if cfg is None:
        raise TypeError(f"scheduler: expected a diffusers scheduler, its config dict or a path, "
                        f"found {type(scheduler).__name__}")
    return {"_class_name": type(scheduler).__name__, **dict(cfg)}


def data_shape_of(net: Any) -> tuple[int, ...] | None:
    """(C, H, W) of a diffusers UNet's config (sample_size, in_channels), or None."""
    cfg = getattr(net, "config", None)
    size, channels = getattr(cfg, "sample_size", None), getattr(cfg, "in_channels", None)
    if size is None or channels is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return (int(channels), *hw)


def load_unet_folder(path: str, components: dict[str, Any] | None, expected: str) -> tuple[Any, dict[str, Any] | None]:
    """(UNet2DModel, scheduler config or None) of a pipeline folder (`components`: its model_index.json, whose
    other parts the caller has already refused) or of a model folder (None). The config is bounded and the
    network built on the meta device and compared with its safetensors header before any weight is read;
    `expected` says, in the error, what the caller loads (e.g. "a UNet2DModel (unconditional, pixel space)")."""
    diffusers = diffusers_module()
    if components is not None:
        if "unet" not in components:
            raise ValueError(f"path_or_module: the pipeline {path!r} has no 'unet' component, found "
                             f"{sorted(k for k in components if not k.startswith('_'))}")
        model_dir = os.path.join(path, "unet")
    else:
        model_dir = path
    cfg_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(cfg_path):
        raise ValueError(f"path_or_module: expected a diffusers save_pretrained folder (model_index.json, or "
                         f"config.json with the weights), found no config.json in {model_dir!r}")
    cls_name = read_diffusers_config(cfg_path, "path_or_module").get("_class_name")
    if cls_name != "UNet2DModel":
        raise ValueError(f"path_or_module: expected {expected}, found {cls_name!r} in {cfg_path!r}")
    check_diffusers_model(diffusers.UNet2DModel, model_dir, "path_or_module")
    net = diffusers.UNet2DModel.from_pretrained(model_dir, local_files_only=True, low_cpu_mem_usage=False,
                                               use_safetensors=True)
    sched = find_scheduler_config(model_dir)
    return net, (read_diffusers_config(sched, "scheduler") if sched else None)
