"""Samplers: a registry of flat functions sharing one signature, and `sample()` in front of them
(`core`). Importing this package registers every sampler family."""
from .core import (SAMPLERS, SamplerInfo, sample, list_samplers, sampler_info, uniform_grid, progress_range,
                   CheckedScore, check_options, check_times, randn_like, flush_checks, check_samples)
from . import predictors, correctors, ode, torchsde_solver  # noqa: F401  (register their samplers)
from . import exponential, edm, deis, unipc, bns  # noqa: F401
from .paths import path_schedules
from .img2img import sdedit, invert

__all__ = ["SAMPLERS", "SamplerInfo", "sample", "list_samplers", "sampler_info", "uniform_grid", "progress_range",
           "CheckedScore", "check_options", "check_times", "randn_like", "flush_checks", "check_samples", "path_schedules",
           "sdedit", "invert"]
