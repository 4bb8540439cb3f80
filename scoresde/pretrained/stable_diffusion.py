"""Stable Diffusion pipelines as latent, text-conditional score models (`from_diffusers(SD_DIR)`).

A diffusers `StableDiffusionPipeline` (SD 1.x epsilon, SD 2.x v-prediction; Rombach et al. 2022,
arXiv:2112.10752) or `StableDiffusionXLPipeline` (Podell et al. 2023, arXiv:2307.01952) save_pretrained
folder becomes:

- `StableDiffusionScoreModel`: the score of the latents, from the `UNet2DConditionModel` called as the
  pipelines call it, `unet(z, timestep, encoder_hidden_states=context, added_cond_kwargs={"text_embeds":
  pooled, "time_ids": micro})` (SDXL's extra inputs from the `Cond` fields `pooled` and `micro`), on the
  `DiscreteVPSDE` of the scheduler config (`from_diffusers`' timestep convention, so a sampler on
  `sde.t_from_timestep(scheduler.timesteps)` steps where the pipeline steps);
- `model.text_encoder`: the prompts encoded as the pipeline encodes them (`scoresde.models.clip_text`);
  `model(x, t)` without a condition is the unconditional score, the text encoder's `null` (the empty prompt,
  or SDXL's zeros);
- `model.autoencoder`: the pipeline's VAE as an `Autoencoder`, `decode(z) = vae.decode(z / scaling_factor)`
  (0.18215 SD 1/2, 0.13025 SDXL, from the VAE's config), as the pipelines decode `output_type="pil"`.

Classifier-free guidance with the pipeline's weight w is `classifier_free_score(model, y=text_encoder.encode(
[prompt]), w=w, uncond=text_encoder.null(1))` (or of a negative prompt): eps_u + w (eps_c - eps_u), as the
pipelines guide (batch order aside). Every network is built on the meta device and compared with its
safetensors header before it is read; pickled weights are refused; nothing is downloaded.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from scoresde.models.autoencoders.autoencoder import Autoencoder, from_diffusers as autoencoder_from_diffusers
from scoresde.models.autoencoders.autoencoder import load_diffusers as load_diffusers_autoencoder
from scoresde.models.clip_text import (CLIPTextEncoder, SDXLTextEncoder, TextEncoder, load_clip_text_model,
                                       load_clip_tokenizer)
from scoresde.models.conditioning import Cond, as_cond
from scoresde.models.prebuild import check_diffusers_model, read_diffusers_config
from scoresde.models.score_model import ScoreModel
from scoresde.pretrained.diffusers_common import diffusers_module


__all__ = ["StableDiffusionScoreModel", "PIPELINES", "is_stable_diffusion", "load_parts", "parts_of_pipeline",
           "component_dir"]

# pipeline class -> its components and the (library, class) each must be
_SD = {"unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
       "text_encoder": ("transformers", "CLIPTextModel"), "tokenizer": ("transformers", "CLIPTokenizer")}
PIPELINES = {
    "StableDiffusionPipeline": _SD,
    "StableDiffusionXLPipeline": {**_SD, "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
                                  "tokenizer_2": ("transformers", "CLIPTokenizer")},
}
_FIELDS = {"context", "context_mask", "pooled", "micro"}


class StableDiffusionScoreModel(ScoreModel):
    """The score of a Stable Diffusion U-Net's latents with its text encoder and VAE.

    `model(z, t, cond)`: cond a `Cond` with `context` (B, 77, D) (and for SDXL `pooled` (B, P), `micro` (B, 6)),
    e.g. `model.text_encoder.encode(prompts)`; a `context_mask` that is not all True is passed to the U-Net as
    `encoder_attention_mask`; no condition = `model.text_encoder.null`. `model.net` is the diffusers U-Net,
    `model.data_shape` the latent shape (C, H, W), `model.autoencoder.decode(z)` the images in [-1, 1].
    """

    def __init__(self, net: nn.Module, sde: Any, parameterization: str, text_encoder: TextEncoder,
                 autoencoder: Autoencoder | None = None, scheduler_config: dict[str, Any] | None = None):
        super().__init__(net, sde, parameterization, conditioning="timestep")
        cfg = net.config
        if cfg.get("time_cond_proj_dim") is not None:
            raise ValueError("unet: time_cond_proj_dim is set (a guidance-distilled LCM U-Net, which takes the guidance "
                             "scale as an input); not supported")
        self.text_encoder = text_encoder
        self.autoencoder = autoencoder
        self.scheduler_config = dict(scheduler_config or {})
        self.sdxl = cfg.get("addition_embed_type") == "text_time"
        size = cfg.get("sample_size")
        hw = (size, size) if isinstance(size, int) else tuple(size)
        self._data_shape = (int(cfg["in_channels"]), *(int(s) for s in hw))

    @property
    def data_shape(self) -> tuple[int, ...]:
        return self._data_shape

    @property
    def num_classes(self) -> None:
        return None

    def null_condition(self, device: torch.device) -> Cond:
        """The text encoder's unconditional condition (batch 1) on `device` (computed at each call, so a change
        of the encoder's settings, e.g. SDXL's sizes, always applies)."""
        return self.text_encoder.null(1).to(device)

    def call_net(self, x: torch.Tensor, c: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        cond = as_cond(cond)
        if cond is None:
            cond = self.null_condition(x.device)
        extra = set(cond.keys()) - _FIELDS
        if extra or cond.context is None:
            raise ValueError(f"cond: a Stable Diffusion U-Net reads context (and pooled, micro for SDXL), found "
                             f"fields {list(cond.keys())}")
        need = {"pooled", "micro"}
        if self.sdxl and not need <= set(cond.keys()):
            raise ValueError(f"cond: an SDXL U-Net needs pooled (text_embeds) and micro (time_ids) besides context, "
                             f"found fields {list(cond.keys())}")
        if not self.sdxl and need & set(cond.keys()):
            raise ValueError(f"cond: pooled and micro are SDXL's inputs; this U-Net reads context only, found fields "
                             f"{list(cond.keys())}")
        cond = cond.expand(x.shape[0]).to(x.device, x.dtype)
        kwargs: dict[str, Any] = {"encoder_hidden_states": cond.context}
        if cond.context_mask is not None and not bool(cond.context_mask.all()):
            kwargs["encoder_attention_mask"] = cond.context_mask
        if self.sdxl:
            kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled, "time_ids": cond.micro}
        return self.net(x, c, **kwargs).sample


# --- loading ----------------------------------------------------------------------------------------------
def is_stable_diffusion(components: dict[str, Any]) -> bool:
    """A model_index.json of a pipeline this module loads."""
    return components.get("_class_name") in PIPELINES


def component_dir(path: str, components: dict[str, Any], name: str, expected: tuple[str, str]) -> str:
    """The folder of component `name` of a pipeline folder, its model_index.json entry checked against `expected`."""
    entry = components.get(name)
    if not isinstance(entry, (list, tuple)) or list(entry) != list(expected):
        raise ValueError(f"path_or_module: {components['_class_name']} {path!r}: expected component {name} = "
                         f"{list(expected)}, found {entry!r}")
    d = os.path.join(path, name)
    if not os.path.isdir(d):
        raise ValueError(f"path_or_module: {components['_class_name']} {path!r} has no {name}/ folder")
    return d


def load_unet_and_vae(diffusers: Any, path: str, dirs: dict[str, str]) -> tuple[Any, Any]:
    """(the UNet2DConditionModel, our Autoencoder of the VAE) of a pipeline folder's `unet` and `vae` components,
    the U-Net checked against its safetensors header (a meta build) before it is read."""
    check_diffusers_model(diffusers.UNet2DConditionModel, dirs["unet"], f"path_or_module: {path!r}: unet")
    try:
        unet = diffusers.UNet2DConditionModel.from_pretrained(dirs["unet"], local_files_only=True, use_safetensors=True,
                                                              low_cpu_mem_usage=False)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"path_or_module: {path!r}: unet: diffusers could not read it ({str(e).splitlines()[0]})") from None
    return unet, load_diffusers_autoencoder(path, dirs["vae"])


def load_parts(path: str, components: dict[str, Any]) -> dict[str, Any]:
    """(unet, text_encoder, autoencoder, scheduler_config) of a Stable Diffusion (XL) save_pretrained folder,
    each network checked before it is read (meta build against the safetensors header)."""
    diffusers = diffusers_module("diffusers transformers (or scoresde[sd])")
    kind = components["_class_name"]
    dirs = {name: component_dir(path, components, name, exp) for name, exp in PIPELINES[kind].items()}
    sched = os.path.join(path, "scheduler", "scheduler_config.json")
    if not os.path.isfile(sched):
        raise ValueError(f"path_or_module: {kind} {path!r} has no scheduler/scheduler_config.json")
    unet, autoencoder = load_unet_and_vae(diffusers, path, dirs)
    what = f"path_or_module: {path!r}: "
    tokenizers = [load_clip_tokenizer(dirs[n], what + n) for n in ("tokenizer", "tokenizer_2") if n in dirs]
    encoders = [load_clip_text_model(dirs["text_encoder"], False, what + "text_encoder")]
    if "text_encoder_2" in dirs:
        encoders.append(load_clip_text_model(dirs["text_encoder_2"], True, what + "text_encoder_2"))
    return _parts(unet.float().eval(), autoencoder, tokenizers, encoders, components,
                  read_diffusers_config(sched, "path_or_module"))


def parts_of_pipeline(pipe: Any) -> dict[str, Any]:
    """The same parts from a built pipeline object (StableDiffusionPipeline / StableDiffusionXLPipeline)."""
    kind = type(pipe).__name__
    if kind not in PIPELINES:
        raise ValueError(f"path_or_module: expected one of {sorted(PIPELINES)} or a pixel-space pipeline, found {kind}")
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if kind == "StableDiffusionXLPipeline" else [])
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if kind == "StableDiffusionXLPipeline" else [])
    sched = {"_class_name": type(pipe.scheduler).__name__, **dict(pipe.scheduler.config)}
    return _parts(pipe.unet, autoencoder_from_diffusers(pipe.vae, None), tokenizers, encoders,
                  {"_class_name": kind, **dict(pipe.config)}, sched)


def _parts(unet, autoencoder: Autoencoder, tokenizers, encoders, components: dict[str, Any],
           scheduler_config: dict[str, Any]) -> dict[str, Any]:
    if unet.config.get("in_channels") != autoencoder.latent_channels:
        raise ValueError(f"path_or_module: the unet reads {unet.config.get('in_channels')} channels, the vae gives "
                         f"{autoencoder.latent_channels}-channel latents")
    if components["_class_name"] == "StableDiffusionXLPipeline":
        size = unet.config.sample_size
        hw = (size, size) if isinstance(size, int) else tuple(size)
        text = SDXLTextEncoder(tokenizers, encoders, image_size=[int(s) * autoencoder.downsample for s in hw],
                               force_zeros_for_empty_prompt=bool(components.get("force_zeros_for_empty_prompt", True)))
    else:
        text = CLIPTextEncoder(tokenizers[0], encoders[0])
    if text.context_dim != unet.config.get("cross_attention_dim"):
        raise ValueError(f"path_or_module: the text encoder gives a context of width {text.context_dim}, the unet "
                         f"attends to cross_attention_dim {unet.config.get('cross_attention_dim')}")
    return {"unet": unet, "text_encoder": text, "autoencoder": autoencoder, "scheduler_config": scheduler_config}
