"""Checks before a network described by a file is built for real.

A config (a checkpoint's metadata, a diffusers config.json, load_dit's arguments) first has every size
field bounded (`scoresde._common.limits.check_sizes`), so that even a build on the meta device stays
quick; the network is then built on the meta device (shapes only, no memory), its parameters and
buffers compared with the memory budget and its state-dict shapes with the weights the file holds
(from the file's header where it has one). Only a network that passed is built with real memory.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import torch
from torch import nn

from scoresde._common.headers import safetensors_shapes
from scoresde._common.limits import check_memory, check_sizes

__all__ = ["check_meta_sizes", "skeleton", "module_bytes", "check_footprint", "compare_shapes", "check_diffusers_model",
           "check_transformers_model", "check_pretrained_model", "weights_shapes", "read_diffusers_config"]


def check_meta_sizes(meta: dict[str, Any], where: str = "metadata ", error: type[Exception] = ValueError) -> None:
    """Every field of a checkpoint's metadata that sizes memory or time (the SDE's N, the network's depth,
    widths, levels, heads, patch and image sizes, sequence length, vocabulary, classes; the autoencoder's)
    within the bounds of `scoresde._common.limits`, before anything is built: `error` names the field."""
    for section, sub in (("sde", "config"), ("model", "config"), ("model", "score_config"), ("model", "text_encoder"),
                         ("tokens", None),
                         ("process", None), ("autoencoder", None)):
        part = meta.get(section)
        part = part.get(sub) if isinstance(part, dict) and sub else part
        if isinstance(part, dict):
            check_sizes({k: v for k, v in part.items() if k != "tokenizer"}, f"{where}{section}.{sub + '.' if sub else ''}",
                        error)
    check_sizes({"data_shape": meta.get("data_shape", [])}, where, error)


def skeleton(build: Callable[[], nn.Module]) -> nn.Module:
    """`build()` on the meta device: every parameter and buffer has its shape and dtype, none has memory."""
    with torch.device("meta"):
        return build()


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (persistent or not), from their shapes and dtypes."""
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def check_footprint(module: nn.Module, what: str) -> None:
    """ValueError naming `what` when the module's parameters and buffers exceed the memory budget."""
    n = sum(p.numel() for p in module.parameters())
    check_memory(module_bytes(module), f"{what}: the network it describes ({n} parameters)")


def compare_shapes(module: nn.Module, shapes: Mapping[str, tuple[int, ...]], what: str) -> None:
    """The module's state-dict shapes against a weights file's `shapes` (from its header): when the names
    agree, every shape must; when they do not (a file in an older naming that the loader converts), the
    network may not hold more values than the file. ValueError naming `what`, the tensor and both shapes."""
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if set(own) == set(shapes):
        for k, s in own.items():
            if tuple(shapes[k]) != s:
                raise ValueError(f"{what}: weight {k!r} has shape {list(shapes[k])} in the file, but the config "
                                 f"describes {list(s)}")
        return
    need = sum(_numel(s) for s in own.values())
    have = sum(_numel(s) for s in shapes.values())
    if need > have:
        missing = sorted(set(own) - set(shapes))
        raise ValueError(f"{what}: the config describes a network of {need} values, but the weights file holds "
                         f"{have}" + (f" (it lacks {missing[0]!r}, ...)" if missing else ""))


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


_WEIGHTS = ("diffusion_pytorch_model.safetensors", "model.safetensors")
_INDEX_BYTES = 64 << 20          # a sharded checkpoint's index (a JSON map of tensor names to shard files)


def read_diffusers_config(path: str, what: str) -> dict[str, Any]:
    """A diffusers JSON config (config.json, scheduler_config.json, model_index.json) as a dict, its sizes
    within bounds (`check_sizes`); ValueError "{what}: ..." naming the file otherwise."""
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{what}: cannot read {path!r} as a diffusers config ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{what}: {path!r} is not a diffusers config (a JSON object)")
    check_sizes({k: v for k, v in cfg.items() if not k.startswith("_")}, f"{what}: {path!r}: ")
    return cfg


def weights_shapes(model_dir: str, what: str) -> tuple[dict[str, tuple[int, ...]], str]:
    """(the tensor shapes, the file they were read from) of a save_pretrained folder's safetensors weights,
    from the files' headers: one file (diffusion_pytorch_model.safetensors or model.safetensors) or the
    shards its .safetensors.index.json lists (the index named). Nothing is unpickled: a folder with only
    pickled .bin / .ckpt weights is one ValueError naming them."""
    files = [os.path.join(model_dir, w) for w in _WEIGHTS if os.path.isfile(os.path.join(model_dir, w))][:1]
    source = files[0] if files else None
    if not files:
        source = next((os.path.join(model_dir, w + ".index.json") for w in _WEIGHTS
                       if os.path.isfile(os.path.join(model_dir, w + ".index.json"))), None)
        if source is not None:
            files = _shards(source, model_dir, what)
    if not files:
        found = sorted(n for n in os.listdir(model_dir) if n.endswith((".bin", ".ckpt", ".pt", ".pth")))
        raise ValueError(f"{what}: {model_dir!r} holds no safetensors weights" + (
            f" (only pickled {', '.join(found)}: scoresde never unpickles; save them again with "
            "save_pretrained(..., safe_serialization=True))" if found else ""))
    shapes: dict[str, tuple[int, ...]] = {}
    for weights in files:
        try:
            shapes.update(safetensors_shapes(weights))
        except Exception as e:          # safetensors reports a damaged header with several exception types
            raise ValueError(f"{what}: {weights!r} is not a readable safetensors file "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    return shapes, source


def _shards(index: str, model_dir: str, what: str) -> list[str]:
    """The shard files an index names (each a plain file name inside `model_dir`)."""
    if os.path.getsize(index) > _INDEX_BYTES:
        raise ValueError(f"{what}: {index!r} is larger than {_INDEX_BYTES >> 20} MiB: not a weights index")
    try:
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{what}: cannot read {index!r} as a sharded-weights index ({e})") from None
    for n in names:
        if not isinstance(n, str) or os.path.basename(n) != n or not n.endswith(".safetensors"):
            raise ValueError(f"{what}: {index!r} names the shard {n!r}; expected .safetensors files beside it")
        if not os.path.isfile(os.path.join(model_dir, n)):
            raise ValueError(f"{what}: {index!r} names the shard {n!r}, which is missing")
    return [os.path.join(model_dir, n) for n in names]


def check_pretrained_model(build: Callable[[dict[str, Any]], nn.Module], model_dir: str, what: str,
                           kind: str) -> dict[str, Any]:
    """Before a save_pretrained folder's network is loaded for real: its config.json's sizes within bounds,
    `build(config)` on the meta device within the memory budget and compared with the safetensors weights'
    headers (`weights_shapes`). `kind` names the network in messages. Returns the config."""
    path = os.path.join(model_dir, "config.json")
    cfg = read_diffusers_config(path, what)
    try:
        net = skeleton(lambda: build(cfg))
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError, AssertionError) as e:
        raise ValueError(f"{what}: {path!r} does not describe a {kind} "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    shapes, source = weights_shapes(model_dir, what)
    compare_shapes(net, shapes, f"{what}: {source!r}")
    check_footprint(net, f"{what}: {path!r}")
    return cfg


def check_diffusers_model(cls: Any, model_dir: str, what: str) -> dict[str, Any]:
    """`check_pretrained_model` for a diffusers model class (`cls.from_config`), before `cls.from_pretrained`."""
    return check_pretrained_model(cls.from_config, model_dir, what, cls.__name__)


def check_transformers_model(config_cls: Any, model_cls: Any, model_dir: str, what: str) -> dict[str, Any]:
    """`check_pretrained_model` for a transformers model (`model_cls(config_cls(**config))`, e.g. CLIPTextModel
    and CLIPTextConfig), before `model_cls.from_pretrained`."""
    def build(cfg: dict[str, Any]) -> nn.Module:
        return model_cls(config_cls.from_dict(cfg))
    return check_pretrained_model(build, model_dir, what, model_cls.__name__)
