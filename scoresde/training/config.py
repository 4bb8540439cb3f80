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

import copy
import inspect
import math
import os
import tomllib
from typing import Any, Mapping

from scoresde._common import limits as L
from scoresde._common.toml import load_toml
from scoresde.training.tasks.base import TASKS
from scoresde.training.recipes import RECIPES
from scoresde.models.nets import MODELS, check_model_config, model_parameters
from scoresde.models.phema import check_sigma_rel
from scoresde.models.score_model import ScoreModel
from scoresde.models.text import TEXT_ENCODERS, TEXT_KEYS


__all__ = ["default_config", "resolve", "validate", "check_model_keys", "check_sizes_of", "check_run_memory",
           "parse_override", "set_dotted"]


# The embedded default: `scoresde train` with no arguments trains this (about 2 minutes on 2 cores: 6000 steps + 4000 samples).
DEFAULTS: dict[str, Any] = {
    "name": "",              # run name; the run directory defaults to runs/<name or timestamp>
    "out": "",               # run directory (overrides runs/<name>)
    "seed": 0,               # seeds the weights, the data order, the loss noise and the samples
    "device": "auto",        # auto | cpu | cuda
    "threads": 0,            # CPU threads (0: auto, one thread for small examples of <= 256 values,
                             # where more threads only add synchronisation; else torch's default)
    "task": "score",         # what is trained (scoresde.tasks): score | masked | autoregressive | autoencoder
                             # (the [vae] first stage); a task's own defaults apply under the file
    "autoencoder": "",       # latent diffusion: a scoresde autoencoder run or a diffusers AutoencoderKL
                             # directory; the score model is trained on its scaled latents
    "data": {
        "name": "mixture",   # built-in name (see list_datasets) or a path (.npy/.npz/image folder)
        "size": 50000,       # points drawn once for the built-in 2-D datasets
        "normalize": "auto", # auto | none | standardize   (auto: uint8 arrays -> [-1, 1])
        "image_size": 0,     # resize image-folder images to this square size (0: keep)
        "labels": True,      # load labels when present (npz key y/labels, image sub-folders)
    },
    "sde": {"name": "vp"},   # plus constructor arguments: beta_min, beta_max, sigma_min, sigma_max, N
    "model": {"name": "mlp", "parameterization": "eps"},  # plus get_model keyword arguments, and
                             # num_classes: 0 (unconditional), K, or "auto" (K from the data's labels);
                             # on captioned data text_encoder ("transformer" by default, "" for none),
                             # text_len, text_depth, text_heads, text_tokenizer (scoresde.models.text)
    "train": {
        "steps": 6000,       # optimisation steps
        "batch_size": 512,   # per process
        "lr": 2e-4 * 10,     # Adam learning rate (score_sde: 2e-4 for images; 2-D MLPs like more)
        "beta1": 0.9,
        "beta2": 0.999,
        "adam_eps": 1e-8,
        "weight_decay": 0.0,
        "warmup": 500,       # linear learning-rate warm-up steps (score_sde: 5000 for images)
        "grad_clip": 1.0,    # clip the gradient norm (negative: off)
        "ema_decay": 0.999,  # EMA of the weights (score_sde: 0.9999 for images)
        "phema_std": [],     # post-hoc EMA (EDM2): the relative lengths of the power-function EMAs tracked and
                             # snapshotted to RUN/phema, e.g. [0.05, 0.1] ([]: off); `scoresde ema` fits others
        "phema_every": 0,    # post-hoc EMA snapshot interval (steps; 0: train.ckpt_every)
        "likelihood_weighting": False,
        "loss_eps": 1e-5,    # smallest diffusion time in the loss
        "p_uncond": 0.1,     # label dropout of a class-conditional model (model.num_classes), prompt dropout
                             # (caption -> "") of a text model: the rate that trains the unconditional
                             # score (Ho & Salimans 2022)
        "recipe": "dsm",     # dsm | edm | flow (scoresde.training.recipes): the loss, its time distribution, and
                             # (new runs) the default preconditioner and SDE: edm -> model.parameterization edm, sde
                             # edm; flow -> parameterization flow, sde flow; keys set by the user win
        "p_mean": -1.2,      # edm: ln sigma ~ N(p_mean, p_std^2) (Karras et al. 2022)
        "p_std": 1.2,
        "sigma_data": 0.5,   # edm: sigma_data of the loss weight and of the EDM preconditioner
        "t_dist": "uniform", # flow: uniform | logit_normal (logit t ~ N(logit_mean, logit_std^2); SD3: 0, 1)
        "logit_mean": 0.0,
        "logit_std": 1.0,
        "shift": 1.0,        # flow: SD3's shift of the drawn t, shift t / (1 + (shift - 1) t) (1: none)
        "aug": "noise",      # super-resolution (model.image_shape set): noise | none: the low-res condition is
                             # noised by the forward SDE to a level s ~ U(0, aug_max) per row, s given to the net
                             # (noise-conditioning augmentation of CDM / Imagen)
        "aug_max": 0.35,     # super-resolution: the largest s, a time of the model's SDE (VP: 0.35 is the SD x4
                             # upscaler's max noise level 350 of 1000 DDPM steps, sqrt(alpha_bar) = 0.53)
        "blur": 0.0,         # super-resolution: CDM's blur augmentation, a Gaussian blur of the low-res image
                             # (after the downsampling) of std ~ U(0, blur) low-res pixels per row (0: off)
        "amp": True,         # bf16 autocast on CUDA (ignored on CPU)
        "log_every": 100,    # CSV log interval (steps)
        "ckpt_every": 1000,  # checkpoint interval (steps)
        "sample_every": 0,   # sample plot interval (steps; 0: only at the end)
        "eval_every": 0,     # evaluation interval (steps; 0: off): the run's metric on [eval] EMA samples,
                             # logged to log.csv and metrics.json; the best checkpoint is kept as best.safetensors
        "keep": 3,           # checkpoints kept
        "max_nonfinite": 20, # stop after this many non-finite losses in a row
        "progress": True,    # progress bar with the loss
    },
    "sample": {
        "sampler": "euler_maruyama",
        "steps": 200,        # on the trained 2-D mixture as good as 500 (mode TV + KL 0.032 both), 3x faster
        "n": 4000,           # samples drawn at the end of training (and for the plots)
    },
    "eval": {
        "n": 2000,           # samples per evaluation during training (with the [sample] sampler and steps)
    },
    "discrete": {            # only task = "masked" / "autoregressive": token sequences (scoresde.discrete)
        "seq_len": 0,        # tokens per sequence (0: from the data: the longest string / line + EOS)
        "schedule": "linear",  # masking schedule alpha_t: linear (1 - t) | cosine
        "eps": 1e-3,         # smallest t of the training loss (LLaDA, MDLM)
        "antithetic": True,  # stratified t across the batch (MDLM's low-discrepancy sampler)
        "loss": "count",     # NELBO estimator of the loss: count (l ~ U{1..L} tokens masked, the mean masked
                             # cross-entropy; LLaDA eq. 6: bounded weights, lower variance, trains faster)
                             # | time (t ~ U[eps, 1], weight w(t) up to 1/eps; MDLM, LLaDA eq. 3)
        "tokenizer": "char", # text files: char (the text's characters) | byte
        "text_mode": "lines",  # text files: lines (a sequence per line, EOS-padded) | stream (rows of seq_len)
        "vocab_size": 0,     # .npy token arrays: V (0: the largest id + 1)
        "eos_id": -1,        # .npy token arrays: the end / padding token (-1: none)
        "max_depth": 3,      # brackets: nesting depth bound (the length bound is seq_len - 1, default 16)
        "digits": 2,         # sums: digits of a and b
        "holdout": 0.05,     # fraction of the sequences kept out of training, for the bound at eval_every
        "remasking": "entropy",  # llada sampler: entropy (the most certain position first; keeps the data's
                             # law) | low_confidence (LLaDA's: collapses to the shortest strings) | random
        "block_length": 0,   # llada sampler: semi-autoregressive block length (0: one block)
        "order_temperature": 0.0,  # llada sampler: Gumbel noise on the reveal order (0: sorted by the score)
        "eta": 0.1,          # remdm sampler: remasking strength (cap: sigma_t = min(eta, sigma_max))
        "remdm_schedule": "cap",  # remdm sampler: cap | rescale (eta sigma_max) | conf (least confident first)
        "block_size": 0,     # task masked: block diffusion (BD3-LM) with blocks of this many tokens (0: none)
        "temperature": 1.0,  # sampling temperature (0: argmax)
        "eval_draws": 4,     # mask draws per held-out sequence for the bound
    },
    "vae": {                 # task = "autoencoder": the KL autoencoder of LDM (Rombach et al. 2022)
        "ch": 32,            # base width
        "ch_mult": [1, 2, 2],  # widths per level; downsampling f = 2^(len - 1) (LDM kl-f8: [1, 2, 4, 4])
        "num_res_blocks": 1, # ResNet blocks per level
        "z_channels": 4,     # latent channels c
        "mid_attn": True,    # self-attention in the mid-blocks
        "num_groups": 8,     # GroupNorm groups (must divide every width)
        "dropout": 0.0,
        "loss": "l1",        # reconstruction loss: l1 | l2 (summed over pixels)
        "kl_weight": 1e-6,   # weight of KL(q(z|x) || N(0, I)) (LDM: 1e-6)
        "disc_weight": 0.0,  # patch-discriminator (hinge) loss weight, adaptive as LDM (0: no discriminator)
        "disc_start": 0,     # step from which the discriminator loss counts (LDM: 50001)
        "disc_ch": 32,       # discriminator base width
        "disc_layers": 2,    # discriminator stride-2 layers
    },
}

_FREE_SECTIONS = ("sde", "model")
_TASK_SECTIONS = ("discrete", "vae")   # kept only for the tasks that list them in `Task.sections`
_CHOICES = {"device": ("auto", "cpu", "cuda"), "data.normalize": ("auto", "none", "standardize"),
            "discrete.tokenizer": ("char", "byte"), "discrete.text_mode": ("lines", "stream"),
            "discrete.remasking": ("entropy", "low_confidence", "margin", "random"),
            "discrete.remdm_schedule": ("cap", "rescale", "conf"), "discrete.loss": ("time", "count"),
            "train.t_dist": ("uniform", "logit_normal"), "train.aug": ("noise", "none"),
            "vae.loss": ("l1", "l2")}
# (minimum, strict) bounds of numeric keys: strict means value > minimum
_BOUNDS = {
    "seed": (0, False), "threads": (0, False), "data.size": (1, False), "data.image_size": (0, False),
    "train.steps": (1, False), "train.batch_size": (1, False), "train.lr": (0.0, True),
    "train.beta1": (0.0, False), "train.beta2": (0.0, False), "train.adam_eps": (0.0, True),
    "train.weight_decay": (0.0, False), "train.warmup": (0, False), "train.ema_decay": (0.0, False),
    "train.loss_eps": (0.0, True), "train.p_uncond": (0.0, False),
    "train.p_std": (0.0, True), "train.sigma_data": (0.0, True), "train.logit_std": (0.0, True), "train.shift": (0.0, True),
    "train.aug_max": (0.0, False), "train.blur": (0.0, False),
    "train.log_every": (1, False), "train.ckpt_every": (1, False),
    "train.sample_every": (0, False), "train.eval_every": (0, False), "eval.n": (1, False),
    "train.phema_every": (0, False),
    "train.keep": (1, False), "train.max_nonfinite": (1, False),
    "sample.steps": (1, False), "sample.n": (1, False),
    "discrete.seq_len": (0, False), "discrete.eps": (0.0, False), "discrete.vocab_size": (0, False),
    "discrete.eos_id": (-1, False), "discrete.max_depth": (1, False), "discrete.digits": (1, False),
    "discrete.holdout": (0.0, False), "discrete.block_length": (0, False), "discrete.temperature": (0.0, False),
    "discrete.eval_draws": (1, False), "discrete.order_temperature": (0.0, False), "discrete.eta": (0.0, False),
    "discrete.block_size": (0, False),
    "vae.ch": (1, False), "vae.num_res_blocks": (1, False), "vae.z_channels": (1, False), "vae.num_groups": (1, False),
    "vae.dropout": (0.0, False), "vae.kl_weight": (0.0, False), "vae.disc_weight": (0.0, False),
    "vae.disc_start": (0, False), "vae.disc_ch": (1, False), "vae.disc_layers": (1, False),
}
# upper bounds of the keys that size memory or time (scoresde._common.limits): checked on the merged config,
# so a resumed run's stored config is held to them too; the [sde], [model] and [vae] sizes by their names
_MAXIMA = {
    "train.batch_size": L.MAX_BATCH, "data.size": L.MAX_DATA_SIZE, "data.image_size": L.MAX_IMAGE_SIDE,
    "sample.n": L.MAX_SAMPLES, "eval.n": L.MAX_SAMPLES, "sample.steps": L.MAX_STEPS,
    "discrete.seq_len": L.MAX_SEQ_LEN, "discrete.vocab_size": L.MAX_VOCAB, "discrete.eos_id": L.MAX_VOCAB,
    "discrete.max_depth": L.MAX_SEQ_LEN, "discrete.digits": L.MAX_DIGITS, "discrete.block_length": L.MAX_SEQ_LEN,
    "discrete.eval_draws": L.MAX_SAMPLES, "discrete.block_size": L.MAX_SEQ_LEN,
}
_BELOW_ONE = ("train.beta1", "train.beta2", "train.ema_decay", "train.loss_eps", "discrete.eps", "discrete.holdout")


def default_config() -> dict[str, Any]:
    """A fresh deep copy of `DEFAULTS`."""
    return copy.deepcopy(DEFAULTS)


def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}.get(type(v), type(v).__name__)


def _check_value(key: str, value: Any, default: Any) -> Any:
    """Check `value` against the type of `default` and the bounds of `key`; ints widen to floats."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ValueError(f"config {key}: expected {_type_name(default)}, found {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"config {key}: expected a finite number, found {value!r}")
    if key == "train.recipe" and value not in RECIPES:
        raise ValueError(f"config {key}: expected one of {', '.join(RECIPES)}, found {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ValueError(f"config {key}: expected one of {', '.join(_CHOICES[key])}, found {value!r}")
    if key in _BOUNDS:
        lo, strict = _BOUNDS[key]
        if value < lo or (strict and value == lo):
            raise ValueError(f"config {key}: expected {'>' if strict else '>='} {lo}, found {value!r}")
    if key in _BELOW_ONE and value >= 1:
        raise ValueError(f"config {key}: expected < 1, found {value!r}")
    if key == "train.p_uncond" and value > 1:
        raise ValueError(f"config {key}: expected a probability in [0, 1], found {value!r}")
    if key == "train.phema_std":
        value = _check_phema_std(value)
    return value


def _check_phema_std(value: list) -> list[float]:
    """train.phema_std: distinct relative EMA lengths in (0, 1/sqrt(12)] (distinct to 3 decimals, the snapshots'
    file names)."""
    try:
        out = [check_sigma_rel(v, "config train.phema_std") for v in value]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{e} (in {value!r})") from None
    if len({f"{v:.3f}" for v in out}) != len(out):
        raise ValueError(f"config train.phema_std: expected distinct values (to 3 decimals), found {value!r}")
    return out


def _check_num_classes(value: Any) -> Any:
    """model.num_classes: 0 (unconditional), an int K >= 1, or "auto" (K from the data's labels)."""
    ok = value == "auto" if isinstance(value, str) else isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if not ok:
        raise ValueError(f"config model.num_classes: expected 0 (unconditional), an int K >= 1 or \"auto\", "
                         f"found {value!r}")
    return value


def validate(cfg: Mapping[str, Any], base: Mapping[str, Any] | None = None, data: Any = None) -> dict[str, Any]:
    """Merge `cfg` (a possibly partial nested dict) over `base` (the defaults) and check every value.

    The defaults are layered: the built-in `DEFAULTS`, then the task's `defaults`, then its `data_defaults`
    for the data the config names (or the in-memory `data`; e.g. a fast sampler and a small network for
    small images), then `base` (a resumed run's own config), then `cfg`: a value the user set always wins.
    Unknown keys in the fixed sections, wrong types and out-of-range values raise ValueError
    naming the key. Registry names (SDE, model, sampler) are checked where they are used.
    """
    if not isinstance(cfg, Mapping):
        raise TypeError(f"config: expected a mapping of sections, found {type(cfg).__name__}")
    out = default_config()
    task = cfg.get("task", (base or {}).get("task", DEFAULTS["task"]))
    _apply_task_defaults(out, task)
    if base is None:                                  # a resumed run keeps its own values
        by_data = _task_attr(task, "data_defaults", None)
        _overlay(out, by_data(_view(out, cfg), data) if by_data is not None else {})
    for key, value in (base or {}).items():          # a resolved config (e.g. a checkpoint's)
        out[key] = copy.deepcopy(value) if not isinstance(value, Mapping) else {**out.get(key, {}), **copy.deepcopy(dict(value))}
    for key, value in cfg.items():
        if key not in DEFAULTS:
            raise ValueError(f"config: unknown key {key!r}; known: {', '.join(DEFAULTS)}")
        default = DEFAULTS[key]
        if isinstance(default, dict):
            if not isinstance(value, Mapping):
                raise ValueError(f"config [{key}]: expected a table of options, found {value!r}")
            for sub, v in value.items():
                name = f"{key}.{sub}"
                if key in _FREE_SECTIONS and sub not in default:
                    if isinstance(v, Mapping):
                        raise ValueError(f"config {name}: expected a number, string, boolean or list, found a table")
                    out[key][sub] = _check_num_classes(v) if name == "model.num_classes" else copy.deepcopy(v)
                elif sub not in default:
                    raise ValueError(f"config: unknown key {name!r}; known in [{key}]: {', '.join(default)}")
                else:
                    out[key][sub] = _check_value(name, v, default[sub])
        else:
            out[key] = _check_value(key, value, default)
    for key in _TASK_SECTIONS:                   # sections only some tasks read are kept for those tasks
        if key not in _task_attr(task, "sections", ()):
            if key in cfg:
                raise ValueError(f"config [{key}]: options of the tasks that read them, but task = {task!r}; "
                                 "set task (e.g. --task masked) or remove the section")
            out.pop(key)
    check_model_keys(out["model"])
    check_sizes_of(out)
    return out


def check_sizes_of(cfg: Mapping[str, Any]) -> None:
    """The keys that size memory or time within their bounds (`_MAXIMA`; the [sde], [model] and [vae]
    sizes by name, `scoresde._common.limits.SIZE_BOUNDS`): ValueError "config KEY: expected at most ...".
    """
    for key, limit in _MAXIMA.items():
        section, sub = key.split(".")
        value = cfg.get(section, {}).get(sub)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
            raise ValueError(f"config {key}: expected at most {limit}, found {value!r}")
    for section in ("sde", "model", "vae"):
        L.check_sizes(cfg.get(section, {}), f"config {section}.")


def check_run_memory(cfg: Mapping[str, Any], example_numel: int) -> None:
    """The data tensors a run holds at once within the memory budget: a batch (the examples, the noise, the
    noised examples and the network's output) and the samples drawn at once (sample.n, eval.n: the state,
    the noise and the score), float32 examples of `example_numel` values. ValueError naming the key;
    the network's activations come on top."""
    for key, copies in (("train.batch_size", 4), ("sample.n", 3), ("eval.n", 3)):
        section, sub = key.split(".")
        count = cfg.get(section, {}).get(sub, 0)
        L.check_memory(4 * example_numel * count * copies, f"config {key} = {count}: {count} examples of "
                       f"{example_numel} values (float32, {copies} copies)")


def _task_attr(task: Any, name: str, default: Any) -> Any:
    """An attribute of the registered task class `task` (scoresde.tasks), or `default` for unknown names
    (reported where the task is looked up)."""
    return getattr(TASKS[task], name) if isinstance(task, str) and task in TASKS else default


def _apply_task_defaults(out: dict[str, Any], task: Any) -> None:
    """Overlay the `defaults` of the task `task` (scoresde.tasks) on the built-in defaults `out`."""
    _overlay(out, _task_attr(task, "defaults", {}))


def _overlay(out: dict[str, Any], defaults: Mapping[str, Any]) -> None:
    """Defaults {section: {key: value}} over `out`; a free section (`model`, `sde`) is replaced whole."""
    for key, value in defaults.items():
        out[key] = copy.deepcopy(value) if key in _FREE_SECTIONS else {**out[key], **copy.deepcopy(value)}


def _view(out: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The user's `cfg` over the defaults so far, unchecked: what a task's `data_defaults` reads (the data name,
    the network's name and the keys the user set; `cfg` itself, under "user")."""
    view = {k: dict(v) if isinstance(v, Mapping) else v for k, v in out.items()}
    for key, value in cfg.items():
        if isinstance(view.get(key), dict) and isinstance(value, Mapping):
            view[key].update(value)
        elif key in view and not isinstance(view[key], dict):
            view[key] = value
    view["user"] = cfg
    return view


def check_model_keys(model: Mapping[str, Any]) -> None:
    """The [model] keys are arguments of the network or of ScoreModel (e.g. `model.widht` is refused,
    naming the known keys), of the types their signatures declare (e.g. `model.width = "abc"` is refused
    before any run). `data_shape` comes from the data, so it is not a key; an unknown model name is left
    to the registry lookup."""
    name = model.get("name")
    if not isinstance(name, str) or name not in MODELS:
        return
    score_params = {k: p for k, p in inspect.signature(ScoreModel).parameters.items()
                    if k not in ("net", "sde", "text_encoder")}
    keys = {k: v for k, v in model.items() if k != "name"}
    for key, kind in TEXT_KEYS.items():          # the text encoder's keys (scoresde.models.text)
        if key in keys and (not isinstance(keys[key], kind) or isinstance(keys[key], bool)):
            raise ValueError(f"config model.{key}: expected {_type_name(kind())}, found {keys[key]!r}")
    if keys.get("text_encoder"):
        TEXT_ENCODERS[keys["text_encoder"]]
    score_params.update({k: None for k in TEXT_KEYS})
    if "data_shape" in keys:
        raise ValueError("config model.data_shape: set from the data (each example's shape), not a config key")
    check_model_config(name, keys, extra=tuple(score_params), exclude=("data_shape",), prefix="model.")
    params = {**score_params, **(model_parameters(name) or {})}
    for key, value in keys.items():
        allowed = (_annotated_types(params[key].annotation) if params.get(key) is not None and key != "num_classes"
                   else None)
        ok = allowed is None or (isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed))
        if not ok:
            raise ValueError(f"config model.{key}: expected {_annotation_words(params[key].annotation)}, "
                             f"found {value!r}")


_ANNOTATED = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "None": (type(None),)}


def _annotation_words(annotation: str) -> str:
    """"int | None" -> "an integer or none", "Sequence[int]" -> "a list of integers"."""
    words = {"int": "an integer", "float": "a number", "bool": "a boolean", "str": "a string", "None": "none"}
    out = []
    for part in (a.strip() for a in annotation.split("|") if a.strip() != "None"):    # TOML has no None
        inner = part[part.index("[") + 1:-1] if "[" in part else None
        out.append(f"a list of {words[inner][words[inner].index(' ') + 1:]}s" if inner in words else words.get(part, part))
    return " or ".join(out)


def _annotated_types(annotation: Any) -> tuple[type, ...] | None:
    """The types a parameter annotated `annotation` ("int | None", "Sequence[int]", ...) takes from a TOML config,
    or None (not checked) for an annotation other than these."""
    if not isinstance(annotation, str):
        return None
    types: tuple[type, ...] = ()
    for part in (a.strip() for a in annotation.split("|")):
        if part.startswith(("Sequence[", "tuple[", "list[")):
            types += (list, tuple)
        elif part in _ANNOTATED:
            types += _ANNOTATED[part]
        else:
            return None
    return types


def set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    """Set `cfg["a"]["b"] = value` for key "a.b" (a top-level key for a plain name)."""
    parts = key.split(".")
    if not all(parts) or len(parts) > 2:
        raise ValueError(f"config override {key!r}: expected KEY or SECTION.KEY, e.g. train.lr")
    if len(parts) == 1:
        cfg[parts[0]] = value
    else:
        section = cfg.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ValueError(f"config override {key!r}: {parts[0]!r} is not a section")
        section[parts[1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse "section.key=VALUE" (VALUE in TOML syntax; bare words are strings)."""
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. train.lr=1e-4")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def resolve(config: str | os.PathLike | Mapping[str, Any] | None = None,
            overrides: Mapping[str, Any] | None = None, base: Mapping[str, Any] | None = None,
            data: Any = None) -> dict[str, Any]:
    """`base` (the defaults) <- config (a TOML path or a nested dict) <- dotted `overrides`; validated
    (`data`: the in-memory data of `train(data=...)`, for the defaults that depend on the data)."""
    if config is None:
        cfg_in: dict[str, Any] = {}
    elif isinstance(config, (str, os.PathLike)):
        cfg_in = load_toml(config)
    elif isinstance(config, Mapping):
        cfg_in = copy.deepcopy(dict(config))
    else:
        raise TypeError(f"config: expected a TOML path, a dict or None, found {type(config).__name__}")
    for key, value in (overrides or {}).items():
        set_dotted(cfg_in, key, value)
    return validate(cfg_in, base, data)
