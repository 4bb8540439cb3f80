"""Loading a trained model from a run directory or checkpoint file (`scoresde.load`; `open_run` also
gives the checkpoint file and its metadata): rebuild the network, the ScoreModel and the SDE from the
checkpoint's metadata, apply the EMA weights; and `load_autoencoder` for latent runs (a scoresde
autoencoder run or a diffusers `AutoencoderKL` directory).

The metadata never sizes memory or time before it is bounded: every size field is checked against
`scoresde._common.limits` first, then the network is built on the meta device and its weights' shapes
compared with the file's and its size with the memory budget; only then is it built for real.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, NamedTuple

import torch
from torch import nn

from scoresde.models.prebuild import check_footprint, check_meta_sizes, skeleton
from scoresde.models.token_model import build_token_model
from scoresde.runs.checkpoint import CheckpointError, check_shapes, find_checkpoint, read_checkpoint, unflatten_state

from scoresde.models.autoencoders.vae import KLAutoencoder
from scoresde.models.autoencoders.autoencoder import Autoencoder, diffusers_dir, from_diffusers, load_diffusers
from scoresde.models.nets import get_model
from scoresde.models.score_model import ScoreModel
from scoresde.models.preconditioners import PRECONDITIONERS
from scoresde.models.text import build_text_encoder
from scoresde.sde.base import get_sde
from scoresde.models.ema import EMA


def build_model(meta: dict[str, Any], device: Any = None, *, on_meta: bool = False):
    """(ScoreModel, SDE) described by a checkpoint's metadata, with freshly initialised weights (the
    network on the meta device, shapes only, with `on_meta`). The sizes are bounded first (`check_meta_sizes`)."""
    check_meta_sizes(meta)
    sde = get_sde(meta["sde"]["name"], **meta["sde"]["config"])
    net_cfg = dict(meta["model"]["config"])
    net_cfg["data_shape"] = tuple(net_cfg.get("data_shape", meta["data_shape"]))
    with torch.device("meta") if on_meta else contextlib.nullcontext():
        net = get_model(meta["model"]["name"], **net_cfg)
        model = ScoreModel(net, sde, **score_settings(meta["model"].get("score_config", {})))
        text = meta["model"].get("text_encoder")
        if text:                              # a text-conditional run: its jointly trained encoder
            model.text_encoder = build_text_encoder(text["name"], **text["config"])
    return model.to(device) if device is not None else model, sde


_SCORE_MODEL_KEYS = ("parameterization", "conditioning", "scale_by_sigma")


def score_settings(score_config: dict[str, Any]) -> dict[str, Any]:
    """ScoreModel keyword arguments of a checkpoint's `score_config` (`ScoreModel.config()`): the settings of a
    preconditioner beyond its name (EDM's sigma_data) build that preconditioner."""
    kw = {k: v for k, v in score_config.items() if k in _SCORE_MODEL_KEYS}
    extra = {k: v for k, v in score_config.items() if k not in _SCORE_MODEL_KEYS}
    if extra:
        kw["parameterization"] = PRECONDITIONERS[kw.get("parameterization", "eps")](**extra)
    return kw


class LoadedRun(NamedTuple):
    """A trained model with the checkpoint it came from (`open_run`)."""
    model: Any
    sde: Any
    file: str                  # the checkpoint file read
    meta: dict[str, Any]       # its metadata: config, step, model/SDE/data descriptions


def load(path: str | os.PathLike, *, ema: bool = True, device: Any = None, autoencoder: Any = None,
         verify: bool = True):
    """Load a trained model: `(score_model, sde)` from a run directory (its latest checkpoint) or a
    checkpoint file. With `ema` (the default) the weights are the EMA weights used for sampling.
    A sequence run (task "masked" / "autoregressive") gives `(MaskedLM, MaskedProcess)` /
    `(AutoregressiveLM, None)` (`scoresde.discrete.model`).

    A latent run's model works on latents and carries its autoencoder as `model.autoencoder`
    (`model.autoencoder.decode(z)` gives images), read from where the run recorded it, or from
    `autoencoder` (a path) if it moved; its weights must be the ones the run was trained with.

    `verify=False` also loads a checkpoint that cannot prove its integrity (written before metadata
    digests, format version 1, or with a digest missing), which is refused otherwise; digests it has are
    still checked."""
    return open_run(path, ema=ema, device=device, autoencoder=autoencoder, verify=verify)[:2]


def open_run(path: str | os.PathLike, *, ema: bool = True, device: Any = None, autoencoder: Any = None,
             verify: bool = True) -> LoadedRun:
    """`load`, with the checkpoint file and its metadata (read once)."""
    file = find_checkpoint(path)
    tensors, meta = read_checkpoint(file, verify=verify)
    if meta.get("task") == "autoencoder":
        raise CheckpointError(f"checkpoint {file!r}: an autoencoder run (scoresde train-autoencoder), not a score "
                              "model; load it with scoresde.load_autoencoder, or train a latent model on it with "
                              "scoresde train --autoencoder")
    check_meta_sizes(meta, f"checkpoint {file!r}: metadata ", CheckpointError)
    build = build_token_model if meta.get("task") in ("masked", "autoregressive") else build_model
    try:
        # the network on the meta device first: its weights' shapes against the file's, its size against
        # the memory budget; only then for real
        bare = build(meta, on_meta=True)[0]
        check_shapes(lambda: bare, tensors, "model/", file)
        _check_footprint(bare, file)
        model, sde = build(meta)
        weights = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        model.load_state_dict(weights, strict=True)
        if ema:
            e = EMA(model)
            e.load_state_dict(unflatten_state(meta["state"]["ema"], tensors))
            e.copy_to(model)
    except CheckpointError:
        raise
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {file!r}: does not match the model it describes "
                              f"({str(e).splitlines()[0]})") from None
    if meta.get("task") == "latent":
        model.autoencoder = _latent_autoencoder(file, meta["autoencoder"], autoencoder, verify)
    model.eval()
    if device is not None:
        model.to(device)
    return LoadedRun(model, sde, file, meta)


def _check_footprint(module: nn.Module, file: str) -> None:
    try:
        check_footprint(module, f"checkpoint {file!r}: the model its metadata describes")
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def _latent_autoencoder(file: str, info: dict[str, Any], path: Any, verify: bool = True):
    """The autoencoder a latent run recorded (or the one at `path`), checked against its digest."""
    source = info.get("source") if path is None else path
    if source is None:
        raise ValueError(f"checkpoint {file!r}: a latent model whose autoencoder has no recorded path; pass "
                         "autoencoder=PATH (scoresde sample --autoencoder PATH)")
    try:
        return load_autoencoder(source, expect=info, verify=verify)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}; the latent model {file!r} was trained on it: pass its new place as "
                                "autoencoder=PATH (scoresde sample --autoencoder PATH)") from None


def _load_scoresde(path: str, verify: bool = True) -> Autoencoder:
    if os.path.isdir(path) and not os.path.isdir(os.path.join(path, "checkpoints")):
        raise ValueError(f"autoencoder {path!r}: neither a scoresde autoencoder run (no checkpoints/) nor a "
                         "diffusers AutoencoderKL directory (no config.json)")
    file = find_checkpoint(path)
    tensors, meta = read_checkpoint(file, verify=verify)
    if meta.get("task") != "autoencoder":
        raise ValueError(f"autoencoder {path!r}: a scoresde run of task {meta.get('task', 'score')!r}; expected an "
                         "autoencoder run (scoresde train-autoencoder) or a diffusers AutoencoderKL directory")
    check_meta_sizes(meta, f"checkpoint {file!r}: metadata ", CheckpointError)
    cfg, info = meta["model"]["config"], meta["autoencoder"]
    prefix = "model/vae."
    try:
        bare = skeleton(lambda: KLAutoencoder(**cfg))
        check_shapes(lambda: bare, tensors, prefix, file)
        _check_footprint(bare, file)
        vae = KLAutoencoder(**cfg)
        vae.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    except CheckpointError:
        raise
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {file!r}: does not match the autoencoder it describes "
                              f"({str(e).splitlines()[0]})") from None
    # the raw weights: LDM's first stage keeps no EMA (train-autoencoder sets train.ema_decay = 0, so the
    # run's plots show these same weights); the scale factor was measured on them
    C, H, W = vae.data_shape
    return Autoencoder(vae, kind="scoresde", source=os.path.abspath(path), image_channels=C,
                       downsample=vae.downsample, latent_channels=vae.latent_shape[0],
                       scale_factor=info["scale_factor"], shift_factor=info.get("shift_factor", 0.0), image_size=(H, W))


def load_autoencoder(path: str | os.PathLike | nn.Module, *, device: Any = None,
                     expect: dict[str, Any] | None = None, verify: bool = True) -> Autoencoder:
    """An `Autoencoder` from a scoresde autoencoder run directory or checkpoint, a diffusers `AutoencoderKL`
    `save_pretrained` directory (or a pipeline directory with a vae/ sub-folder), or an `AutoencoderKL` module.

    `expect`: the `meta()` a latent run recorded; the weights must have its digest, and its scaling is used
    (the one the score model was trained with). `verify=False`: as for `load`.
    """
    if isinstance(path, nn.Module):
        ae = from_diffusers(path, None)
    elif not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"autoencoder: expected a path (run directory, checkpoint or diffusers directory), found "
                        f"{type(path).__name__}")
    else:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"autoencoder {path!r}: no such run directory, checkpoint file or diffusers "
                                    "AutoencoderKL directory")
        d = diffusers_dir(path) if os.path.isdir(path) else None
        ae = load_diffusers(path, d) if d else _load_scoresde(path, verify)
    if expect is not None:
        if expect.get("digest") != ae.digest:
            raise CheckpointError(f"autoencoder {ae.source!r}: its weights are not the ones the latent model was "
                                  f"trained with (digest {ae.digest[:12]}, recorded {str(expect.get('digest'))[:12]})")
        ae = Autoencoder(ae.vae, kind=ae.kind, source=ae.source, image_channels=ae.image_channels,
                         downsample=ae.downsample, latent_channels=ae.latent_channels,
                         scale_factor=expect["scale_factor"], shift_factor=expect.get("shift_factor", 0.0),
                         latents_mean=expect.get("latents_mean"), latents_std=expect.get("latents_std"),
                         image_size=ae.image_size)._with_digest(ae.digest)
    return ae.to(device) if device is not None else ae
