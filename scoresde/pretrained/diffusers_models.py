"""diffusers models as score models: `from_diffusers(path_or_module) -> (model, sde)`.

A diffusers `UNet2DModel` (von Platen et al., huggingface/diffusers) trained with a discrete DDPM
schedule (Ho et al. 2020, arXiv:2006.11239) predicts, at integer timestep i in 0..M-1 of the
table alpha_bar_i, the noise ("epsilon"), the velocity v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0
("v_prediction", Salimans & Ho 2022, arXiv:2202.00512) or the data ("sample"). Here:

- the schedule becomes a `DiscreteVPSDE` whose marginals at t_i = (i + 1) / M equal the table
  exactly (the scheduler's own float32 `alphas_cumprod`, so every beta schedule and explicit
  `trained_betas` array of a DDPM-type scheduler is covered);
- the network is called at its own timestep scale, tau = M t - 1 (`DiscreteVPSDE.timestep`): at
  t_i exactly the integer i; between two timesteps the fractional tau, which the sinusoidal
  embedding of `UNet2DModel` is defined for (as k-diffusion's wrappers of discrete models do);
  below timestep 0 (t < 1 / M) it is called at timestep 0;
- the output becomes the score through `ScoreModel`'s "eps", "v" and "x0" parameterisations.

Sampling reproduces diffusers' loops on the same timesteps: `ddim` with
`times=sde.t_from_timestep(scheduler.timesteps)` is `DDIMScheduler` (eta = 0, set_alpha_to_one),
and `ancestral` with those times followed by 0 is `DDPMScheduler` given the same noise
(tests/pretrained/test_diffusers.py). Sampling heuristics of the schedulers (clip_sample, thresholding) are not
part of the model and are not applied. diffusers is needed only here (`pip install diffusers`).
Stable Diffusion (XL) pipelines, latent and text-conditional, are loaded by `stable_diffusion.py`.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from scoresde._common.limits import check_sizes
from scoresde.models.prebuild import read_diffusers_config
from scoresde.models.conditioning import Cond
from scoresde.pretrained.diffusers_common import (DiffusersUNetModel, data_shape_of, diffusers_module,
                                                  load_unet_folder, scheduler_config)
from scoresde.pretrained.diffusers_flow import flow_scheduler_name, from_diffusers_flow
from scoresde.sde.alpha_bar import DiscreteVPSDE
from scoresde.pretrained.stable_diffusion import (PIPELINES, StableDiffusionScoreModel, is_stable_diffusion,
                                                  load_parts, parts_of_pipeline)
from scoresde.pretrained.sd_upscaler import (UPSCALE_PIPELINE, StableDiffusionUpscaleModel, is_upscaler,
                                             load_upscaler_parts, upscaler_parts_of_pipeline)


__all__ = ["from_diffusers", "DiffusersScoreModel"]

PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
# DDPMScheduler.variance_type -> the ancestral step's variance (learned variances are not used)
VARIANCES = {"fixed_small": "posterior", "fixed_small_log": "posterior", "fixed_large": "beta",
             "fixed_large_log": "beta", "learned": "posterior", "learned_range": "posterior"}
_VE = ("ScoreSdeVeScheduler", "KarrasVeScheduler")


class DiffusersScoreModel(DiffusersUNetModel):
    """A `ScoreModel` around a diffusers network: `net(x, timestep)` (the UNet, called as diffusers
    calls it, returning its own output object), fed the SDE's timesteps; the first `C` output
    channels are the prediction (a learned-variance model's other C channels are dropped)."""

    def __init__(self, net: Any, sde: DiscreteVPSDE, parameterization: str, data_shape: tuple[int, ...] | None,
                 scheduler_config: dict[str, Any] | None = None):
        super().__init__(net, sde, parameterization, "timestep", data_shape, scheduler_config)

    def call_net(self, x: torch.Tensor, c: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        out = super().call_net(x, c, cond)
        if isinstance(out, torch.Tensor) and out.ndim == x.ndim and out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]          # learned variance: [prediction, variance] channels
        return out


# --- reading a save_pretrained folder -------------------------------------------------------------
def _read_json(path: str) -> dict[str, Any]:
    return read_diffusers_config(path, "path_or_module")


def _load_dir(path: str) -> tuple[Any, dict[str, Any] | None]:
    """(network, scheduler config or None) of a pipeline folder or a model folder; for a Stable Diffusion
    pipeline (the parts of `stable_diffusion.load_parts`, its scheduler config)."""
    diffusers_module()                          # one line saying how to install it, before any file is read
    index = os.path.join(path, "model_index.json")
    if os.path.isfile(index):
        components = _read_json(index)
        if is_stable_diffusion(components) or is_upscaler(components):
            parts = (load_upscaler_parts if is_upscaler(components) else load_parts)(path, components)
            return parts, parts["scheduler_config"]
        latent = [k for k in ("vae", "vqvae", "text_encoder") if components.get(k)]
        if latent:
            raise ValueError(f"path_or_module: {path!r} is a {components.get('_class_name', 'pipeline')} with "
                             f"{', '.join(latent)}: of latent / text-conditional pipelines only "
                             f"{', '.join(sorted(PIPELINES))} and {UPSCALE_PIPELINE} are supported, besides unconditional pixel-space "
                             "UNet2DModel pipelines (DDPMPipeline, DDIMPipeline)")
        return load_unet_folder(path, components, "a UNet2DModel (unconditional, pixel space)")
    return load_unet_folder(path, None, "a UNet2DModel (unconditional, pixel space)")


def _refuse_ve(name: Any) -> None:
    if name in _VE:
        raise ValueError(f"scheduler: {name} is a variance-exploding (score-SDE VE / Karras) schedule, which "
                         "from_diffusers does not express; load score_sde's original checkpoint with "
                         "scoresde.load_score_sde instead")


def _scheduler_config(scheduler: Any) -> dict[str, Any]:
    """A scheduler object, its config dict, or a path to scheduler_config.json / its folder -> dict."""
    return scheduler_config(scheduler, _refuse_ve)


def discrete_vp_sde(config: dict[str, Any], *, interpolation: str = "auto",
                    ancestral_variance: str | None = None) -> tuple[DiscreteVPSDE, str]:
    """(the `DiscreteVPSDE` of a diffusers scheduler config, our parameterisation of its prediction_type).

    interpolation "auto": "cubic" where its interpolant of log alpha_bar decreases everywhere (DDPM's
    1000-step tables), else "pchip", monotone for every table (short schedules such as 100 steps)."""
    diffusers = diffusers_module()
    name = config.get("_class_name")
    _refuse_ve(name)
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"scheduler: unknown diffusers scheduler class {name!r}; expected a DDPM-type scheduler "
                         "(DDPMScheduler, DDIMScheduler, PNDMScheduler, DPMSolverMultistepScheduler, ...)")
    check_sizes({k: v for k, v in config.items() if not k.startswith("_")}, "scheduler: ")   # num_train_timesteps
    pred = config.get("prediction_type", "epsilon")
    if pred not in PREDICTIONS:
        raise ValueError(f"scheduler: prediction_type {pred!r} is not supported; expected one of {sorted(PREDICTIONS)}")
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("scheduler: rescale_betas_zero_snr=True gives alpha_bar = 0 at the last timestep, where the "
                         "score is undefined; not supported")
    if config.get("timestep_type", "discrete") != "discrete":
        raise ValueError(f"scheduler: timestep_type {config['timestep_type']!r} feeds the network a continuous noise "
                         "level, not a discrete timestep; not supported")
    sched = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    table = getattr(sched, "alphas_cumprod", None)
    if not isinstance(table, torch.Tensor) or table.ndim != 1:
        raise ValueError(f"scheduler: {name} has no discrete alpha-bar table (alphas_cumprod): not a DDPM-type "
                         "variance-preserving schedule, which from_diffusers needs")
    if ancestral_variance is None:
        ancestral_variance = VARIANCES.get(config.get("variance_type", "fixed_small"), "posterior")
    if interpolation != "auto":
        return DiscreteVPSDE(table.double(), interpolation=interpolation,
                             ancestral_variance=ancestral_variance), PREDICTIONS[pred]
    try:
        sde = DiscreteVPSDE(table.double(), interpolation="cubic", ancestral_variance=ancestral_variance)
    except ValueError as e:
        if not str(e).startswith("interpolation:"):        # the cubic overshoots: beta(t) <= 0 somewhere
            raise
        sde = DiscreteVPSDE(table.double(), interpolation="pchip", ancestral_variance=ancestral_variance)
    return sde, PREDICTIONS[pred]


def from_diffusers(path_or_module: Any, scheduler: Any = None, *, interpolation: str = "auto",
                   ancestral_variance: str | None = None) -> tuple[DiffusersScoreModel, DiscreteVPSDE]:
    """(score model, SDE) of a diffusers model trained with a discrete VP (DDPM) schedule.

    Args:
        path_or_module: a local `save_pretrained` folder: a pipeline (model_index.json with unet/ and
            scheduler/, e.g. DDPMPipeline), or a UNet2DModel folder with its scheduler_config.json
            beside it (or in ../scheduler); or a built network (a UNet2DModel, or any module called
            as net(sample, timestep) returning a tensor or an object with `.sample`), or a pipeline
            object (with .unet and .scheduler). A `StableDiffusionPipeline` / `StableDiffusionXLPipeline`
            (folder or object) gives the latent, text-conditional `StableDiffusionScoreModel`, with
            `model.text_encoder` and `model.autoencoder` (scoresde/pretrained/stable_diffusion.py); a
            `StableDiffusionUpscalePipeline` the x4 upscaler, also conditioned on a low-resolution image
            (`model.image_cond(image, noise_level)`, scoresde/pretrained/sd_upscaler.py).
            Nothing is downloaded.
        scheduler: the schedule, when `path_or_module` does not carry one (or to override it): a
            diffusers scheduler, its config dict, or a path to scheduler_config.json or its folder.
        interpolation: of log alpha_bar between timesteps (see `DiscreteVPSDE`): "auto" (default) takes
            "cubic" where it is monotone and "pchip" otherwise (short schedules, e.g. 100 timesteps),
            so every DDPM-type schedule loads, also from the command line; `sde.interpolation` says which.
        ancestral_variance: "posterior" or "beta"; default from the scheduler's variance_type
            ("fixed_small" -> posterior, "fixed_large" -> beta; posterior otherwise).

    Returns:
        (model, sde): `model(x, t)` is the score, `model.net` the diffusers network itself,
        `model.data_shape` (C, H, W) from its config (the latent shape for Stable Diffusion); `sde` a
        `DiscreteVPSDE` (use
        `sde.t_from_timestep` to run samplers on diffusers' timesteps via `times=`).

    A FlowMatchEulerDiscreteScheduler / FlowMatchHeunDiscreteScheduler makes it a flow-matching model:
    (velocity model, `FlowSDE` with the scheduler's shift), see `scoresde.pretrained.diffusers_flow`.

    Raises:
        ImportError: diffusers is not installed. ValueError: not a supported model or schedule
        (a VE / zero-terminal-SNR / dynamically shifted scheduler, an unknown class, a latent pipeline).
    """
    if flow_scheduler_name(path_or_module, scheduler):          # FlowMatch*: diffusers_flow.py
        return from_diffusers_flow(path_or_module, scheduler, interpolation=interpolation,
                                   ancestral_variance=ancestral_variance)
    sched_cfg = None
    if isinstance(path_or_module, (str, os.PathLike)):
        path = os.fspath(path_or_module)
        if not os.path.isdir(path):
            raise ValueError(f"path_or_module: expected a diffusers save_pretrained folder, found {path!r} "
                             "(not a directory)")
        net, sched_cfg = _load_dir(path)
    elif type(path_or_module).__name__ in PIPELINES:                                   # a Stable Diffusion pipeline
        net = parts_of_pipeline(path_or_module)
        sched_cfg = net["scheduler_config"]
    elif type(path_or_module).__name__ == UPSCALE_PIPELINE:                            # the x4 upscaler
        net = upscaler_parts_of_pipeline(path_or_module)
        sched_cfg = net["scheduler_config"]
    elif hasattr(path_or_module, "unet") and hasattr(path_or_module, "scheduler"):      # a pipeline object
        net = path_or_module.unet
        sched_cfg = _scheduler_config(path_or_module.scheduler)
    elif callable(path_or_module):
        net = path_or_module
    else:
        raise TypeError(f"path_or_module: expected a folder, a diffusers network or pipeline, found "
                        f"{type(path_or_module).__name__}")
    if scheduler is not None:
        sched_cfg = _scheduler_config(scheduler)
    if sched_cfg is None:
        raise ValueError("scheduler: the model comes without a scheduler config (no scheduler_config.json found); "
                         "pass scheduler= (a diffusers scheduler, its config dict or its folder)")
    sde, parameterization = discrete_vp_sde(sched_cfg, interpolation=interpolation,
                                            ancestral_variance=ancestral_variance)
    if isinstance(net, dict) and "low_res_alphas_cumprod" in net:                   # the x4 upscaler's parts
        model = StableDiffusionUpscaleModel(net["unet"], sde, parameterization, net["text_encoder"], net["autoencoder"],
                                            sched_cfg, net["low_res_alphas_cumprod"], net["max_noise_level"],
                                            net["low_res_scheduler_config"])
    elif isinstance(net, dict):                 # a Stable Diffusion pipeline's parts
        model = StableDiffusionScoreModel(net["unet"], sde, parameterization, net["text_encoder"], net["autoencoder"],
                                          sched_cfg)
    else:
        model = DiffusersScoreModel(net, sde, parameterization, data_shape_of(net), sched_cfg)
    return model.eval(), sde
