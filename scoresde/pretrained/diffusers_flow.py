"""diffusers flow-matching models as score models: what `from_diffusers` loads for a FlowMatch scheduler.

A diffusers model sampled with `FlowMatchEulerDiscreteScheduler` or `FlowMatchHeunDiscreteScheduler` was
trained on the straight path x_t = (1 - t) x_0 + t z (rectified flow, Liu et al. 2022, arXiv:2209.03003;
flow matching, Lipman et al. 2022, arXiv:2210.02747; SD3, Esser et al. 2024, arXiv:2403.03206), where the
scheduler's "sigma" is t. The network is called at timestep = sigma * num_train_timesteps and predicts the
velocity u = z - x_0 (the schedulers step x <- x + (sigma_next - sigma) u). Here:

- the path is a `FlowSDE` (alpha = 1 - t, sigma = t) carrying the scheduler's static `shift`
  (t' = shift t / (1 + (shift - 1) t)), which the path's default sampling grids honour;
- the network is called at the scheduler's timestep scale, c = num_train_timesteps * sigma(t);
- its output is read as u through `ScoreModel`'s "flow" preconditioner (D = x - t u on this path), so
  `model(x, t)` is the score -(x + (1 - t) u) / t, `model.x0` the data prediction and `model.velocity` u.

Sampling reproduces the scheduler's loop: `ddim` with `times=scheduler.sigmas[:-1]` (the grid starts at
t = 1, where ddim reads the data prediction) is `FlowMatchEulerDiscreteScheduler` given the same noise: on
this path DDIM is Euler in t, x_s = (s / t) x_t + (1 - s / t) D = x_t + (s - t) u, and its final data
prediction at the last sigma is the scheduler's last step to sigma = 0 (tests/pretrained/test_diffusers_flow.py).
The multistep schedulers set up for flow models (DPMSolverMultistepScheduler, UniPC, DEIS ... with
prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift) load the same way; `dpm_solver` on
their sigmas is DPMSolverMultistepScheduler's 2M loop, except that diffusers feeds those schedulers' network
the timestep truncated to an integer (int64 timesteps) while stepping with the exact sigma, and here the
network sees the exact 1000 sigma. The scheduler's grid options (shift_terminal, karras / exponential / beta sigmas, stochastic_sampling) choose
how it samples, not what the model is: they are not part of the model. A dynamic (resolution-dependent)
shift and inverted sigmas are refused. diffusers is needed only here (`pip install diffusers`).
"""
from __future__ import annotations

import math
import os
from typing import Any

import torch

from scoresde.models.conditioning import as_cond
from scoresde.models.prebuild import read_diffusers_config
from scoresde.pretrained.diffusers_common import (DiffusersUNetModel, data_shape_of, diffusers_module,
                                                  find_scheduler_config, load_unet_folder, scheduler_config)
from scoresde.sde.linear import FlowSDE


__all__ = ["FLOW_SCHEDULERS", "is_flow_config", "flow_scheduler_name", "flow_sde", "from_diffusers_flow", "DiffusersFlowScoreModel"]

FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
_WHAT = "path_or_module"


class DiffusersFlowScoreModel(DiffusersUNetModel):
    """A `ScoreModel` around a diffusers network trained for flow matching: `net(x, timestep)` (called as
    diffusers' flow pipelines call it, at timestep = num_train_timesteps * sigma) predicts u = z - x_0."""

    def __init__(self, net: Any, sde: FlowSDE, num_train_timesteps: int, data_shape: tuple[int, ...] | None,
                 scheduler_config: dict[str, Any] | None = None):
        super().__init__(net, sde, "flow", "sigma", data_shape, scheduler_config)
        self.num_train_timesteps = int(num_train_timesteps)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "timestep_scale": self.num_train_timesteps}

    def condition(self, t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The scheduler's timestep: c = num_train_timesteps * sigma (sigma = t on the flow path)."""
        return sigma * self.num_train_timesteps

    def velocity(self, x: torch.Tensor, t: Any, cond: Any = None) -> torch.Tensor:
        """The flow-matching velocity u = z - x_0 (= eps - x0): the network's output itself, F of "flow"."""
        return self._raw(x, t, as_cond(cond))[0]


# --- which scheduler, and its path ----------------------------------------------------------------
def is_flow_config(config: dict[str, Any]) -> bool:
    """A FlowMatch scheduler, or a multistep one (DPMSolverMultistep, UniPC, DEIS, ...) set up for a flow model:
    prediction_type "flow_prediction" with use_flow_sigmas (its shift is then `flow_shift`)."""
    return config.get("_class_name") in FLOW_SCHEDULERS or bool(
        config.get("use_flow_sigmas") and config.get("prediction_type") == "flow_prediction")


def flow_scheduler_name(path_or_module: Any, scheduler: Any = None) -> str | None:
    """The class of the flow scheduler (`is_flow_config`) that `from_diffusers(path_or_module, scheduler)` would
    use, or None (any other scheduler, or none readable: the DDPM-type loader then reports). Never raises."""
    try:
        if scheduler is not None:
            config = scheduler_config(scheduler)
        elif isinstance(path_or_module, (str, os.PathLike)):
            path = os.fspath(path_or_module)
            found = find_scheduler_config(os.path.join(path, "unet") if os.path.isfile(
                os.path.join(path, "model_index.json")) else path) if os.path.isdir(path) else None
            config = read_diffusers_config(found, "scheduler") if found else {}
        elif hasattr(path_or_module, "scheduler"):
            config = scheduler_config(path_or_module.scheduler)
        else:
            config = {}
    except (ValueError, TypeError, OSError):
        return None
    return str(config.get("_class_name")) if is_flow_config(config) else None


def _number(config: dict[str, Any], key: str, default: Any, integer: bool = False) -> Any:
    v = config.get(key, default)
    ok = isinstance(v, int) if integer else isinstance(v, (int, float)) and math.isfinite(v)
    if isinstance(v, bool) or not ok or not v > 0:
        raise ValueError(f"scheduler: {key}: expected a positive {'integer' if integer else 'number'}, found {v!r}")
    return v


def flow_sde(config: dict[str, Any]) -> tuple[FlowSDE, int]:
    """(the `FlowSDE` of a FlowMatch scheduler config, with its static shift; its num_train_timesteps)."""
    if not is_flow_config(config):
        raise ValueError(f"scheduler: expected one of {', '.join(FLOW_SCHEDULERS)} or a scheduler with "
                         f"prediction_type='flow_prediction' and use_flow_sigmas=True, found {config.get('_class_name')!r}")
    if config.get("use_dynamic_shifting"):
        raise ValueError("scheduler: use_dynamic_shifting=True (a resolution-dependent shift chosen per call through "
                         "mu, as Flux does) is not supported; save the scheduler with use_dynamic_shifting=False and "
                         "the static shift you sample with")
    if config.get("invert_sigmas"):
        raise ValueError("scheduler: invert_sigmas=True (Mochi's reversed time) is not supported")
    steps = _number(config, "num_train_timesteps", 1000, integer=True)
    shift = float(_number(config, "shift", 1.0) if config.get("_class_name") in FLOW_SCHEDULERS
                  else _number(config, "flow_shift", 1.0))
    return FlowSDE(shift=shift), steps


# --- reading a save_pretrained folder -------------------------------------------------------------
def _load_dir(path: str) -> tuple[Any, dict[str, Any] | None]:
    """(UNet2DModel, scheduler config or None) of a pipeline folder or a model folder."""
    diffusers_module()                          # one line saying how to install it, before any file is read
    if os.path.isfile(os.path.join(path, "model_index.json")):
        components = read_diffusers_config(os.path.join(path, "model_index.json"), _WHAT)
        other = [k for k in ("transformer", "vae", "vqvae", "text_encoder") if components.get(k)]
        if other:
            raise ValueError(f"{_WHAT}: {path!r} is a {components.get('_class_name', 'pipeline')} with "
                             f"{', '.join(other)}: flow-matching latent / text-conditional pipelines (SD3, Flux) are "
                             "not supported, only pixel-space UNet2DModel pipelines with a FlowMatch scheduler")
        return load_unet_folder(path, components, "a UNet2DModel with a FlowMatch scheduler")
    return load_unet_folder(path, None, "a UNet2DModel with a FlowMatch scheduler")


def from_diffusers_flow(path_or_module: Any, scheduler: Any = None, *, interpolation: str = "auto",
                        ancestral_variance: str | None = None) -> tuple[DiffusersFlowScoreModel, FlowSDE]:
    """(score model, FlowSDE) of a diffusers model sampled with a FlowMatch scheduler; `from_diffusers` calls it.

    Args:
        path_or_module: a local `save_pretrained` folder (a pipeline with unet/ and scheduler/, or a UNet2DModel
            folder with scheduler_config.json beside it or in ../scheduler), a pipeline object (.unet and
            .scheduler), or a network called as net(sample, timestep). Nothing is downloaded; weights are read
            from safetensors only.
        scheduler: a FlowMatchEulerDiscreteScheduler / FlowMatchHeunDiscreteScheduler, its config dict or a path
            to its scheduler_config.json, when `path_or_module` carries none (or to override it).
        interpolation, ancestral_variance: options of DDPM-type schedules; refused here.

    Returns:
        (model, sde): `model(x, t)` the score, `model.velocity(x, t)` the network's u = z - x_0,
        `model.x0(x, t)` the data prediction x - t u (defined at t = 1 too); `sde` a `FlowSDE` with the
        scheduler's `shift`. `sde.sample(model, x_init=z, sampler="ddim", times=scheduler.sigmas[:-1])` is the
        scheduler's Euler loop.
    """
    if interpolation != "auto" or ancestral_variance is not None:
        raise ValueError(f"interpolation / ancestral_variance: options of DDPM-type schedules, not of a FlowMatch "
                         f"scheduler; found interpolation={interpolation!r}, ancestral_variance={ancestral_variance!r}")
    sched_cfg = None
    if isinstance(path_or_module, (str, os.PathLike)):
        path = os.fspath(path_or_module)
        if not os.path.isdir(path):
            raise ValueError(f"{_WHAT}: expected a diffusers save_pretrained folder, found {path!r} (not a directory)")
        net, sched_cfg = _load_dir(path)
    elif hasattr(path_or_module, "scheduler"):                                          # a pipeline object
        if getattr(path_or_module, "unet", None) is None:
            raise ValueError(f"{_WHAT}: the {type(path_or_module).__name__} has no unet (SD3 / Flux transformer "
                             "pipelines are not supported, only UNet2DModel pipelines with a FlowMatch scheduler)")
        net, sched_cfg = path_or_module.unet, scheduler_config(path_or_module.scheduler)
    elif callable(path_or_module):
        net = path_or_module
    else:
        raise TypeError(f"{_WHAT}: expected a folder, a diffusers network or pipeline, found "
                        f"{type(path_or_module).__name__}")
    if scheduler is not None:
        sched_cfg = scheduler_config(scheduler)
    if sched_cfg is None:
        raise ValueError("scheduler: the model comes without a scheduler config (no scheduler_config.json found); "
                         "pass scheduler= (a diffusers scheduler, its config dict or its folder)")
    sde, num_train_timesteps = flow_sde(sched_cfg)
    model = DiffusersFlowScoreModel(net, sde, num_train_timesteps, data_shape_of(net), sched_cfg)
    return model.eval(), sde
