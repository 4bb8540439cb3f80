"""The time grid each sampler lays out on each registered path: its own default, or the SDE's
`default_schedule` (FlowSDE, EDMSDE) where the SDE declares one (see `grids.schedule_for`)."""
from __future__ import annotations

from scoresde.samplers.core import SAMPLERS
from scoresde.samplers.grids import schedule_for
from scoresde.sde.base import SDES


__all__ = ["path_schedules"]


def path_schedules(sampler: str) -> dict[str, str]:
    """{"default": the sampler's own grid layout (absent for the samplers that step on the uniform grid),
    <registered SDE name>: the layout `sample` gives it on that path where it differs}, e.g. for "ddim"
    {"default": "logsnr", "flow": "quadratic"}."""
    own = SAMPLERS[sampler].schedule
    out = {} if own is None else {"default": own}
    for name in SDES:
        path = schedule_for(SDES[name], sampler, own)
        if path != own:
            out[name] = path
    return out
