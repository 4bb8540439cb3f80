"""Bounds on what a file or a config may ask of memory and time, checked before anything is read or built.

A checkpoint's metadata, a diffusers config, an array header or an image header is small, but the numbers
in it size allocations (a schedule of N steps, a network of `depth` blocks, an array of `shape`) and
build times. Every such number is checked here first:

- `SIZE_BOUNDS`: the largest value of each field that sizes a network, a schedule or a sequence model,
  by its name (the same names in scoresde's metadata, training configs and diffusers' config.json). Each
  bound is far above every published model (DiT-XL/2: depth 28, width 1152; DDPM: 1000 steps; SD's U-Net:
  4 levels of 2 blocks, 1280 channels) and far below what would exhaust a machine while the network is
  merely built; `check_sizes` walks a config and refuses the first field over its bound, naming it.
- `memory_budget()`: the bytes one load may allocate: `SCORESDE_MEMORY_BUDGET` (e.g. "8G") when set, else
  half the physical memory (and at most half the address-space limit, `ulimit -v`, when one is set).
  Arrays are refused by their header's shape and dtype before they are read (`check_memory`).
- `PIXEL_BUDGET`: the most pixels one image may decode to (8192^2), below PIL's own bomb limit.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping

__all__ = ["SIZE_BOUNDS", "PIXEL_BUDGET", "MAX_EXAMPLE_NUMEL", "memory_budget", "parse_bytes", "format_bytes",
           "size_problem", "check_sizes", "check_memory", "sample_batch"]

# --- the bounds --------------------------------------------------------------------------------------------
MAX_STEPS = 100_000          # SDE steps N, diffusion timesteps (DDPM: 1000, score_sde VE: 2000)
MAX_DEPTH = 1_024            # stacked blocks of a transformer / MLP (DiT-XL: 28)
MAX_BLOCKS = 64              # residual blocks per resolution level of a U-Net (score_sde: 4, SD: 2)
MAX_LEVELS = 16              # resolution levels (len(ch_mult), len(block_out_channels))
MAX_WIDTH = 65_536           # channels / hidden width of one layer (SD U-Net: 1280, DiT-XL: 1152)
MAX_HEADS = 1_024            # attention heads
MAX_MULT = 1_024             # channel multipliers (ch_mult entries) and MLP ratios
MAX_SIDE = 65_536            # one side of an image, a patch or a data dimension
MAX_SEQ_LEN = 1 << 20        # tokens per sequence
MAX_VOCAB = 1 << 20          # vocabulary size (GPT-4's is 100k)
MAX_CLASSES = 1 << 20        # class labels (ImageNet-21k: 21841)
MAX_DIGITS = 18              # decimal digits of the `sums` language's numbers (int64)
MAX_LIST = 64                # entries of other list-valued sizes (attn_resolutions, fir_kernel, ...)
MAX_EXAMPLE_NUMEL = 1 << 28  # values in one example (prod(data_shape)): 1 GiB as float32
MAX_BATCH = 1 << 20          # examples per training batch (score_sde: 128, 2-D runs: 512)
MAX_DATA_SIZE = 10_000_000   # points drawn for a built-in 2-D dataset (default 50000)
MAX_SAMPLES = 1 << 20        # samples drawn at once by a run (sample.n, eval.n; FID uses 50000)
MAX_IMAGE_SIDE = 8_192       # images resized to (data.image_size): the pixel budget's side
MAX_INT = 1 << 24            # any other integer of a network / schedule config
PIXEL_BUDGET = 1 << 26       # pixels one image may decode to (8192 x 8192; PIL warns from 89.5M)

_B = {
    "steps": (MAX_STEPS, "steps of a schedule"), "depth": (MAX_DEPTH, "stacked blocks"),
    "blocks": (MAX_BLOCKS, "residual blocks per level"), "levels": (MAX_LEVELS, "resolution levels"),
    "width": (MAX_WIDTH, "channels of a layer"), "heads": (MAX_HEADS, "attention heads"),
    "mult": (MAX_MULT, "a width multiplier"), "side": (MAX_SIDE, "one side of an image or patch"),
    "seq": (MAX_SEQ_LEN, "tokens per sequence"), "vocab": (MAX_VOCAB, "vocabulary size"),
    "classes": (MAX_CLASSES, "class labels"), "digits": (MAX_DIGITS, "decimal digits"), "list": (MAX_LIST, "entries"),
}
# field name -> (kind of its value, kind of its entries when a list); None: not a list
SIZE_BOUNDS: dict[str, tuple[int, str]] = {}
_FIELDS: dict[str, tuple[str, str | None]] = {
    # SDEs and discrete schedules (scoresde, score_sde, diffusers schedulers)
    "N": ("steps", None), "num_scales": ("steps", None), "num_timesteps": ("steps", None),
    "num_train_timesteps": ("steps", None), "timesteps": ("steps", None),
    # depth
    "depth": ("depth", None), "n_layers": ("depth", None), "disc_layers": ("depth", None),
    "num_layers": ("depth", None), "transformer_layers_per_block": ("depth", None),
    "num_hidden_layers": ("depth", None),
    "num_res_blocks": ("blocks", None), "layers_per_block": ("blocks", None),
    # widths
    "width": ("width", None), "ch": ("width", None), "nf": ("width", None), "num_channels": ("width", None), "hidden_size": ("width", None), "embed_dim": ("width", None),
    "freq_dim": ("width", None), "z_channels": ("width", None), "latent_channels": ("width", None),
    "in_channels": ("width", None), "out_channels": ("width", None), "num_groups": ("width", None),
    "norm_num_groups": ("width", None), "disc_ch": ("width", None), "time_embedding_dim": ("width", None),
    "cross_attention_dim": ("width", None), "attention_head_dim": ("width", None), "num_outputs": ("vocab", None),
    "intermediate_size": ("width", None), "projection_dim": ("width", None), "addition_time_embed_dim": ("width", None),
    "projection_class_embeddings_input_dim": ("width", None),
    "block_out_channels": ("levels", "width"), "ch_mult": ("levels", "mult"),
    "down_block_types": ("levels", None), "up_block_types": ("levels", None),
    # heads, ratios
    "num_heads": ("heads", None), "heads": ("heads", None), "num_attention_heads": ("heads", None),
    "mlp_ratio": ("mult", None),
    # spatial sizes
    "patch_size": ("side", None), "input_size": ("side", None), "sample_size": ("side", "side"),
    "image_size": ("side", "side"), "data_shape": ("list", "side"), "attn_resolutions": ("list", "side"),
    "fir_kernel": ("list", None),
    # sequences, vocabularies, classes
    "seq_len": ("seq", None), "max_len": ("seq", None), "max_position_embeddings": ("seq", None),
    "model_max_length": ("seq", None), "max_depth": ("seq", None), "vocab_size": ("vocab", None),
    "num_classes": ("classes", None), "num_class_embeds": ("classes", None), "digits": ("digits", None),
    # cross-attention and text encoders (models/nets/attention.py, models/text.py)
    "context_dim": ("width", None), "context_resolutions": ("list", "side"), "transformer_depth": ("depth", None),
    "context_heads": ("heads", None), "context_ff_mult": ("mult", None), "text_len": ("seq", None),
    "text_depth": ("depth", None), "text_heads": ("heads", None),
}
SIZE_BOUNDS.update({k: _B[kind] for k, (kind, _) in _FIELDS.items()})


def size_problem(key: str, value: Any) -> str | None:
    """Why `value` of the field `key` is over its bound ("expected ... found ..."), or None if it is within.

    Types are the constructors' business: only numbers (and lists of numbers) are bounded here; a field not
    in `SIZE_BOUNDS` is bounded by `MAX_INT` when it is an integer."""
    kind, entry = _FIELDS.get(key, (None, None))

    def over(v: Any, limit: int, what: str) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        if not (math.isfinite(v) and v <= limit):
            return f"expected at most {limit} ({what}), found {v!r}"
        return None

    if isinstance(value, (list, tuple)):
        if kind in ("levels", "list") and len(value) > _B[kind][0]:          # a list that counts levels or
            return f"expected at most {_B[kind][0]} entries ({_B[kind][1]}), found {len(value)}"   # blocks
        for v in value:                       # other lists (a schedule's table) are sized by the file itself
            p = over(v, *_B[entry]) if entry else over(v, MAX_INT, "a size") if isinstance(v, int) else None
            if p:
                return p
        if key == "data_shape" and all(isinstance(v, int) for v in value) and math.prod(value) > MAX_EXAMPLE_NUMEL:
            return (f"expected at most {MAX_EXAMPLE_NUMEL} values per example, found shape {list(value)} "
                    f"({math.prod(value)} values)")
        return None
    if kind is None:
        return over(value, MAX_INT, "a size") if isinstance(value, int) else None
    return over(value, *_B[kind])


def check_sizes(config: Mapping[str, Any], where: str, error: type[Exception] = ValueError) -> None:
    """Refuse the first field of `config` (nested mappings included) over its bound: `error` reads
    "{where}{key}: expected at most ..., found ...". `where` names the source, e.g. "config model." or
    "checkpoint 'x': metadata model.config."."""
    if not isinstance(config, Mapping):
        return
    for key, value in config.items():
        if isinstance(value, Mapping):
            check_sizes(value, f"{where}{key}.", error)
            continue
        problem = size_problem(str(key), value)
        if problem:
            raise error(f"{where}{key}: {problem}")


# --- memory ------------------------------------------------------------------------------------------------
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str, name: str = "SCORESDE_MEMORY_BUDGET") -> int:
    """'8G', '512M', '1.5T' or a plain number of bytes -> bytes (binary units)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([KMGT]?)i?B?\s*", str(text), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{name}: expected a positive size such as 8G, 512M or a number of bytes, found {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def memory_budget() -> int:
    """Bytes one load may allocate: $SCORESDE_MEMORY_BUDGET, else half the physical memory, at most half
    the address-space limit (RLIMIT_AS) when one is set."""
    env = os.environ.get("SCORESDE_MEMORY_BUDGET")
    if env:
        return parse_bytes(env)
    try:
        budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):       # not POSIX
        budget = 8 << 30
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft not in (resource.RLIM_INFINITY, -1) and soft > 0:
            budget = min(budget, soft // 2)
    except (ImportError, ValueError, OSError):
        pass
    return int(budget)


def check_memory(needed: int, what: str, *, budget: int | None = None) -> None:
    """ValueError "{what} needs about X in memory, over the memory budget of Y (...)" when needed > budget."""
    budget = memory_budget() if budget is None else budget
    if needed > budget:
        raise ValueError(f"{what} needs about {format_bytes(needed)} in memory, over the memory budget of "
                         f"{format_bytes(budget)} (half the machine's memory; set SCORESDE_MEMORY_BUDGET to change it)")


SAMPLE_BATCH = 1 << 16       # examples drawn in one sampler call when they are small (2-D points)
SAMPLE_BATCH_VALUES = 1 << 22  # values (examples x values per example) in one sampler call otherwise


def sample_batch(data_shape) -> int:
    """Examples per sampler call when many are drawn (`scoresde sample --n`, `likelihood --n`): at most
    65536, and at most 2^22 values in all (e.g. 1365 images of 3x32x32), so the network's activations for
    one call stay within a few GB; fewer examples than that are one call."""
    return max(1, min(SAMPLE_BATCH, SAMPLE_BATCH_VALUES // max(1, math.prod(data_shape))))
