"""The Stable Diffusion x4 upscaler as a latent, text- and image-conditional score model (`from_diffusers(DIR)`).

A diffusers `StableDiffusionUpscalePipeline` save_pretrained folder (stabilityai/stable-diffusion-x4-upscaler:
latent diffusion, Rombach et al. 2022, arXiv:2112.10752; the low-resolution image concatenated on channels, SR3,
arXiv:2104.07636; noise-conditioning augmentation, Cascaded Diffusion Models, arXiv:2106.15282) becomes:

- `StableDiffusionUpscaleModel`: the score of the latents z (4, h, w) given a prompt and the low-resolution image
  (3, h, w) in [-1, 1] AT THE LATENT'S SPATIAL SIZE (the VAE decodes z to (3, f h, f w), f = 4 for the real
  upscaler). The U-Net is called as the pipeline calls it:
  `unet(cat([z, noisy_image], dim=1), timestep, encoder_hidden_states=context, class_labels=noise_level)`;
- the condition: `Cond(context=..., image=noisy_image, image_level=noise_level)`, made by
  `model.image_cond(image, noise_level)`: the pipeline's augmentation, `low_res_scheduler.add_noise(image, eps,
  noise_level)` = sqrt(abar[l]) image + sqrt(1 - abar[l]) eps on the low-res scheduler's own (DDPM) table at the
  INTEGER level l in [0, max_noise_level] (350; the pipeline's default 20). So for this model the level s of the
  image condition is the pipeline's `noise_level`, not a time of the model's SDE; level 0 still adds the table's
  first-step noise sqrt(1 - abar[0]) eps, as the pipeline does;
- `model.text_encoder` (the prompts encoded as the pipeline encodes them, `scoresde.models.clip_text`) and
  `model.autoencoder` (`decode(z) = vae.decode(z / 0.08333)`; the pipeline forces scaling_factor 0.08333 on its
  VAE, and so does this loader).

"Any h, w equal to the latent's": `model.image_shape` is (3, h, w) with (h, w) = `model.data_shape[1:]`, by default
the U-Net's sample_size; `model.set_size(h, w)` changes both (the network is fully convolutional), so generic
super-resolution code that checks the low-res input against `image_shape` and samples `data_shape` works at any size.
Classifier-free guidance as the pipeline: `classifier_free_score(model, y=text ∪ image cond, w=w,
uncond=null text ∪ the same image cond)`; a condition without `context` is the empty prompt's.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from scoresde._common.validation import check_real
from scoresde.models.autoencoders.autoencoder import Autoencoder, from_diffusers as autoencoder_from_diffusers
from scoresde.models.clip_text import CLIPTextEncoder, load_clip_text_model, load_clip_tokenizer
from scoresde.models.conditioning import Cond, as_cond
from scoresde.models.guidance import classifier_free_score
from scoresde.models.prebuild import read_diffusers_config
from scoresde.pretrained.diffusers_common import diffusers_module
from scoresde.pretrained.stable_diffusion import StableDiffusionScoreModel, component_dir, load_unet_and_vae
from scoresde.samplers.core import sample


__all__ = ["StableDiffusionUpscaleModel", "UPSCALE_PIPELINE", "is_upscaler", "load_upscaler_parts",
           "upscaler_parts_of_pipeline", "VAE_SCALING_FACTOR", "DEFAULT_NOISE_LEVEL"]

UPSCALE_PIPELINE = "StableDiffusionUpscalePipeline"
_COMPONENTS = {"unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
               "text_encoder": ("transformers", "CLIPTextModel"), "tokenizer": ("transformers", "CLIPTokenizer"),
               "low_res_scheduler": ("diffusers", "DDPMScheduler")}
VAE_SCALING_FACTOR = 0.08333          # what the pipeline sets on its VAE, whatever the VAE's config says
DEFAULT_NOISE_LEVEL = 20              # the pipeline's default noise_level
_FIELDS = {"context", "context_mask", "image", "image_level"}


class StableDiffusionUpscaleModel(StableDiffusionScoreModel):
    """The score of the x4 upscaler's latents given a prompt and a low-resolution image (see the module docstring).

    `model(z, t, cond)`: z (B, 4, h, w); cond a `Cond` with `image` (B, 3, h, w) already noised to `image_level`
    (B,) = the pipeline's integer noise_level (make it with `model.image_cond(image, noise_level)`) and
    optionally `context` (B, 77, D) (`model.text_encoder.encode(prompts)`; none = the empty prompt).
    `model.low_res_alphas_cumprod` is the low-res scheduler's float32 table, `model.max_noise_level` its bound.
    """

    def __init__(self, net: Any, sde: Any, parameterization: str, text_encoder: Any, autoencoder: Autoencoder,
                 scheduler_config: dict[str, Any] | None, low_res_alphas_cumprod: torch.Tensor,
                 max_noise_level: int = 350, low_res_scheduler_config: dict[str, Any] | None = None):
        super().__init__(net, sde, parameterization, text_encoder, autoencoder, scheduler_config)
        c_lat = int(autoencoder.latent_channels)
        self.image_channels = int(net.config["in_channels"]) - c_lat
        self._data_shape = (c_lat, *self._data_shape[1:])
        self.register_buffer("low_res_alphas_cumprod", low_res_alphas_cumprod.detach().float().clone(),
                             persistent=False)
        self.max_noise_level = int(max_noise_level)
        self.default_image_level = DEFAULT_NOISE_LEVEL
        self.low_res_scheduler_config = dict(low_res_scheduler_config or {})

    # --- geometry ------------------------------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, ...]:
        """(3, h, w): the low-resolution image, at the latent's spatial size (`data_shape[1:]`; see `set_size`)."""
        return (self.image_channels, *self._data_shape[1:])

    def set_size(self, h: int, w: int) -> "StableDiffusionUpscaleModel":
        """Work on low-resolution images (and latents) of h x w (the decoded output is f h x f w); returns the model."""
        for name, v in (("h", h), ("w", w)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int (the low-resolution image's size, = the latent's), "
                                 f"found {v!r}")
        self._data_shape = (self._data_shape[0], int(h), int(w))
        return self

    # --- the image condition: the pipeline's low_res_scheduler.add_noise -----------------------------------
    def check_image_level(self, level: Any, batch: int, like: torch.Tensor, name: str = "level") -> torch.Tensor:
        """(B,) noise levels (as `like`'s dtype) from a number or a (B,) tensor of integers in [0, max_noise_level]."""
        return self._levels(level, batch, like.device, name).to(like.dtype)

    def _levels(self, level: Any, batch: int, device: torch.device, name: str = "level") -> torch.Tensor:
        """(B,) long noise levels from a number or a (B,) tensor of integers in [0, max_noise_level]."""
        what = f"the pipeline's integer noise_level in [0, {self.max_noise_level}] (a number or a ({batch},) tensor)"
        if isinstance(level, bool) or not isinstance(level, (int, float, torch.Tensor)):
            raise TypeError(f"{name}: expected {what}, found {type(level).__name__}")
        lv = torch.as_tensor(level, dtype=torch.float64).to(device)
        if lv.ndim == 0:
            lv = lv.expand(batch)
        if lv.shape != (batch,):
            raise ValueError(f"{name}: expected {what}, found shape {tuple(lv.shape)}")
        bad = ~torch.isfinite(lv) | (lv != lv.round()) | (lv < 0) | (lv > self.max_noise_level)
        if bool(bad.any()):
            raise ValueError(f"{name}: expected {what}, found {lv[bad][0].item()!r}")
        return lv.long()

    def augment(self, image: torch.Tensor, level: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """The pipeline's augmentation of the low-res image: sqrt(abar[l]) image + sqrt(1 - abar[l]) eps, eps drawn
        as the pipeline draws it (`randn(image.shape, generator)`), abar the low-res scheduler's table, l the integer
        noise_level (a number or (B,)); level 0 is not the identity (abar[0] = 1 - beta_0), as in the pipeline."""
        if not isinstance(image, torch.Tensor) or not image.is_floating_point():
            raise ValueError(f"image: expected a floating-point (B, {self.image_channels}, h, w) tensor, found "
                             f"{type(image).__name__ if not isinstance(image, torch.Tensor) else image.dtype}")
        lv = self._levels(level, image.shape[0], image.device)
        eps = torch.randn(image.shape, generator=generator, dtype=image.dtype,
                          device=generator.device if generator is not None else image.device).to(image.device)
        abar = self.low_res_alphas_cumprod.to(device=image.device, dtype=image.dtype)
        shape = (-1,) + (1,) * (image.ndim - 1)
        # x_l = sqrt(abar_l) x + sqrt(1 - abar_l) eps   (DDPMScheduler.add_noise, in the image's dtype)
        return (abar[lv] ** 0.5).view(shape) * image + ((1 - abar[lv]) ** 0.5).view(shape) * eps

    def image_cond(self, image: torch.Tensor, level: Any = 0.0, *, generator: torch.Generator | None = None,
                   noisy: bool = False, labels: Any = None) -> Cond:
        """Cond(image=augment(image, level) (or `image` itself when `noisy`: already at that noise level),
        image_level=level as floats) for a (B, *image_shape) image in [-1, 1]; `level` the pipeline's integer
        noise_level (the pipeline's default is `model.default_image_level` = 20). The upscaler has no class
        labels (`labels` must be None)."""
        shape = self.image_shape
        if (not isinstance(image, torch.Tensor) or not image.is_floating_point() or image.ndim != 4
                or tuple(image.shape[1:]) != shape):
            found = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image: expected a (B, {', '.join(map(str, shape))}) floating-point low-resolution "
                             f"image in [-1, 1] (at the latent's size; model.set_size(h, w) for another), found {found}")
        if not isinstance(noisy, bool):
            raise TypeError(f"noisy: expected a bool, found {type(noisy).__name__}")
        if labels is not None:
            raise ValueError(f"labels: the x4 upscaler has no class labels (its class input is the noise level), "
                             f"found {type(labels).__name__}")
        return self._image_cond(image, level, generator, noisy)

    def _image_cond(self, image: torch.Tensor, level: Any, generator: torch.Generator | None, noisy: bool) -> Cond:
        lv = self._levels(level, image.shape[0], image.device)
        return Cond(image=image if noisy else self.augment(image, lv, generator), image_level=lv.to(image.dtype))

    def upscale(self, low_res: torch.Tensor, prompt: str | list[str] = "", *, negative_prompt: str | list[str] | None = None,
                w: float = 9.0, noise_level: Any = DEFAULT_NOISE_LEVEL, sampler: str = "ddim", steps: int | None = 75,
                generator: torch.Generator | None = None, decode: bool = True, progress: bool = False,
                **options: Any) -> torch.Tensor:
        """The pipeline's call in one line: `low_res` (B, 3, h, w) in [-1, 1] of any h, w (multiples of nothing:
        the latent has the image's size) -> the upscaled images (B, 3, f h, f w) in [-1, 1] (`decode=False`: the
        latents (B, 4, h, w)). As `StableDiffusionUpscalePipeline.__call__` (its defaults: guidance_scale 9,
        noise_level 20, 75 steps): the image noised by `augment` with a first draw from `generator`, the initial
        latents a second draw, then `sampler` (any of `ss.list_samplers()`, `**options` its options, e.g. `times=`,
        `denoise=`) on the classifier-free guided score of `prompt` against `negative_prompt` (default the empty
        prompt) with weight w (w <= 1: the conditional score alone, as the pipeline skips guidance)."""
        if (not isinstance(low_res, torch.Tensor) or not low_res.is_floating_point() or low_res.ndim != 4
                or low_res.shape[1] != self.image_channels):
            found = f"{low_res.dtype} {tuple(low_res.shape)}" if isinstance(low_res, torch.Tensor) else type(low_res).__name__
            raise ValueError(f"low_res: expected a (B, {self.image_channels}, h, w) floating-point image batch in "
                             f"[-1, 1], found {found}")
        w = check_real("w", w)
        B = low_res.shape[0]
        image = self._image_cond(low_res, noise_level, generator, False)
        text = self.text_encoder
        prompts = _per_row(prompt, B, "prompt")
        with torch.no_grad():
            cond = Cond(**dict(text.encode(prompts).to(low_res.device).items()), **dict(image.items()))
            score: Any
            if w > 1.0:
                neg = text.null(B) if negative_prompt is None else text.encode(_per_row(negative_prompt, B,
                                                                                        "negative_prompt"))
                uncond = Cond(**dict(neg.to(low_res.device).items()), **dict(image.items()))
                score = classifier_free_score(self, y=cond, w=w, uncond=uncond)
            else:
                def score(x, t):
                    return self(x, t, cond)
            z = sample(self.sde, score, (B, self._data_shape[0], *low_res.shape[2:]), sampler=sampler, steps=steps,
                       generator=generator, device=low_res.device, dtype=low_res.dtype, progress=progress, **options)
            return self.autoencoder.decode(z) if decode else z

    # --- the network call --------------------------------------------------------------------------------
    def call_net(self, x: torch.Tensor, c: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        cond = as_cond(self.encode_prompts(cond))
        if cond is None or cond.image is None:
            raise ValueError("cond.image: the x4 upscaler needs its low-resolution image, e.g. "
                             f"cond = model.image_cond(image, noise_level) with image (B, {self.image_channels}, "
                             f"{x.shape[-2]}, {x.shape[-1]}); found {'no condition' if cond is None else 'no image'}")
        extra = set(cond.keys()) - _FIELDS
        if extra:
            raise ValueError(f"cond: the x4 upscaler reads context, image and image_level, found fields "
                             f"{list(cond.keys())}")
        cond = cond.expand(x.shape[0]).to(x.device)
        image = cond.image
        want = (x.shape[0], self.image_channels, *x.shape[2:])
        if tuple(image.shape) != want:
            raise ValueError(f"cond.image: expected shape {want} (the low-resolution image at the latent's size), "
                             f"found {tuple(image.shape)}")
        level = cond.image_level
        if level is None:                                     # a missing level is s = 0, as for every SR model
            noise_level = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        else:
            noise_level = level.round().long()
            if bool(((level != noise_level) | (noise_level < 0) | (noise_level > self.max_noise_level)).any()):
                raise ValueError(f"cond.image_level: expected the pipeline's integer noise_level in "
                                 f"[0, {self.max_noise_level}] (model.image_cond makes it), found {level.tolist()}")
        kwargs: dict[str, Any] = {}
        if cond.context is None:
            text = self.null_condition(x.device).expand(x.shape[0])
            context, mask = text.context, text.context_mask
        else:
            context, mask = cond.context, cond.context_mask
        if mask is not None and not bool(mask.all()):
            kwargs["encoder_attention_mask"] = mask
        # the pipeline: unet(cat([latents, noisy low-res image], dim=1), t, context, class_labels=noise_level)
        return self.net(torch.cat([x, image.to(x.dtype)], dim=1), c, encoder_hidden_states=context.to(x.dtype),
                        class_labels=noise_level, **kwargs).sample


def _per_row(prompt: Any, batch: int, name: str) -> list[str]:
    """One prompt per image: a string (for every image), or a list of 1 or `batch` strings."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if (not isinstance(prompts, (list, tuple)) or len(prompts) not in (1, batch)
            or not all(isinstance(p, str) for p in prompts)):
        raise ValueError(f"{name}: expected a string or a list of 1 or {batch} strings (one per image), found "
                         f"{prompt!r}")
    return list(prompts) * (batch // len(prompts))


# --- loading ----------------------------------------------------------------------------------------------
def is_upscaler(components: dict[str, Any]) -> bool:
    """A model_index.json of a StableDiffusionUpscalePipeline."""
    return components.get("_class_name") == UPSCALE_PIPELINE


def load_upscaler_parts(path: str, components: dict[str, Any]) -> dict[str, Any]:
    """The parts of a StableDiffusionUpscalePipeline save_pretrained folder (unet, text_encoder, autoencoder,
    scheduler_config, low_res_scheduler_config, max_noise_level), each network checked before it is read
    (meta build against the safetensors header); safetensors only."""
    diffusers = diffusers_module("diffusers transformers (or scoresde[sd])")
    dirs = {name: component_dir(path, components, name, exp) for name, exp in _COMPONENTS.items()}
    configs = {}
    for name in ("scheduler", "low_res_scheduler"):
        f = os.path.join(path, name, "scheduler_config.json")
        if not os.path.isfile(f):
            raise ValueError(f"path_or_module: {UPSCALE_PIPELINE} {path!r} has no {name}/scheduler_config.json")
        configs[name] = read_diffusers_config(f, f"path_or_module: {name}")
    _low_res(components, configs["low_res_scheduler"])          # before any network is read
    unet, autoencoder = load_unet_and_vae(diffusers, path, dirs)
    what = f"path_or_module: {path!r}: "
    tokenizer = load_clip_tokenizer(dirs["tokenizer"], what + "tokenizer")
    encoder = load_clip_text_model(dirs["text_encoder"], False, what + "text_encoder")
    return _parts(unet.float().eval(), autoencoder, tokenizer, encoder, components, configs["scheduler"],
                  configs["low_res_scheduler"])


def upscaler_parts_of_pipeline(pipe: Any) -> dict[str, Any]:
    """The same parts from a built StableDiffusionUpscalePipeline object."""
    sched = {"_class_name": type(pipe.scheduler).__name__, **dict(pipe.scheduler.config)}
    low = {"_class_name": type(pipe.low_res_scheduler).__name__, **dict(pipe.low_res_scheduler.config)}
    return _parts(pipe.unet, autoencoder_from_diffusers(pipe.vae, None), pipe.tokenizer, pipe.text_encoder,
                  {"_class_name": UPSCALE_PIPELINE, **dict(pipe.config)}, sched, low)


def _low_res(components: dict[str, Any], config: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """(the low-res scheduler's alphas_cumprod, float32 as diffusers computes it; max_noise_level), checked."""
    diffusers = diffusers_module()
    name = config.get("_class_name")
    if name != "DDPMScheduler":
        raise ValueError(f"path_or_module: low_res_scheduler: expected a DDPMScheduler (the pipeline's), found {name!r}")
    table = diffusers.DDPMScheduler.from_config({k: v for k, v in config.items() if not k.startswith("_")}).alphas_cumprod
    max_level = components.get("max_noise_level", 350)
    if isinstance(max_level, bool) or not isinstance(max_level, int) or max_level < 0:
        raise ValueError(f"path_or_module: model_index.json max_noise_level: expected an int >= 0, found {max_level!r}")
    if max_level >= table.shape[0]:
        raise ValueError(f"path_or_module: max_noise_level {max_level} is beyond the low_res_scheduler's "
                         f"{table.shape[0]} timesteps")
    return table, max_level


def _parts(unet: Any, autoencoder: Autoencoder, tokenizer: Any, encoder: Any, components: dict[str, Any],
           scheduler_config: dict[str, Any], low_res_config: dict[str, Any]) -> dict[str, Any]:
    cfg = unet.config
    if autoencoder.scale_factor != VAE_SCALING_FACTOR:       # the pipeline's __init__ overrides it
        vae = autoencoder.vae.vae
        vae.register_to_config(scaling_factor=VAE_SCALING_FACTOR)
        autoencoder = autoencoder_from_diffusers(vae, autoencoder.source)
    c_lat, c_img = autoencoder.latent_channels, autoencoder.image_channels
    if cfg.get("in_channels") != c_lat + c_img or cfg.get("out_channels") != c_lat:
        raise ValueError(f"path_or_module: an upscaler's unet reads the {c_lat}-channel latents and the "
                         f"{c_img}-channel low-resolution image ({c_lat + c_img} channels in, {c_lat} out), found "
                         f"in_channels {cfg.get('in_channels')}, out_channels {cfg.get('out_channels')}")
    table, max_level = _low_res(components, low_res_config)
    classes = cfg.get("num_class_embeds")
    if cfg.get("class_embed_type") is None and (classes is None or classes <= max_level):
        raise ValueError(f"path_or_module: the unet's class embedding (num_class_embeds {classes}) must take every "
                         f"noise level 0..{max_level} (class_labels = noise_level)")
    text = CLIPTextEncoder(tokenizer, encoder)
    if text.context_dim != cfg.get("cross_attention_dim"):
        raise ValueError(f"path_or_module: the text encoder gives a context of width {text.context_dim}, the unet "
                         f"attends to cross_attention_dim {cfg.get('cross_attention_dim')}")
    return {"unet": unet, "text_encoder": text, "autoencoder": autoencoder, "scheduler_config": scheduler_config,
            "low_res_scheduler_config": low_res_config, "low_res_alphas_cumprod": table, "max_noise_level": max_level}
