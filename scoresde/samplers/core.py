"""Samplers: a registry of flat functions sharing one signature, and `sample()` in front of them.

Every registered sampler is

    fn(sde, score_fn, x, ts, *, generator, denoise, progress, **options) -> x

where `x` is the prior draw x_{t_0} shaped (B, *D) and `ts` the decreasing time grid
t_0 = T > t_1 > ... > t_steps = eps (a `(steps + 1,)` tensor on x's device and dtype), or the
caller's own grid `times` (T >= t_0 > ... > t_steps >= 0; samplers that lay out their own grid are
then given `schedule="given"`). Step i calls
`score_fn` at t_i with the whole batch and moves x to t_{i+1}; with `denoise` the last step adds
no noise (the "noise removal" of Song et al. 2021). Samplers never dispatch on the SDE type: the
per-SDE maths (discretisation, ancestral step, Langevin alpha) are SDE methods.

Each sampler declares its facts once, next to its function (`SAMPLERS.register(name, kind=..., nfe=...)`):
one `SamplerInfo` record that `sample`, `optimize_steps`, the CLI and the benchmarks read, the way a
diffrax solver declares what it supports and the dispatcher checks it.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from scoresde._common.finite import CheckedScore, NonFiniteError, check_finite, nonfinite_count
from scoresde._common.registry import Registry
from scoresde._common.validation import check_int
from scoresde._common.threads import thread_policy
from scoresde.samplers.grids import schedule_for, time_grid


__all__ = ["SAMPLERS", "SamplerInfo", "sample", "list_samplers", "sampler_info", "uniform_grid", "progress_range",
           "CheckedScore", "check_options", "check_sampler_options", "check_times", "randn_like", "flush_checks",
           "check_samples", "estimate_sampling", "describe_estimate", "start_grid"]

KINDS = ("sde", "pc", "corrector", "ode", "fast ode")
_SHARED = ("generator", "denoise", "progress")          # the keywords every sampler takes (not options)
FITS = (None, "times", "times and weights")


@dataclass(frozen=True)
class SamplerInfo:
    """What a sampler declares about itself, once, where it is registered.

    name, fn: the registry name and the sampler function (the record is callable as the function).
    kind: "sde" (reverse-SDE steps), "pc" (predictor-corrector), "corrector" (Langevin only),
        "ode" (probability-flow ODE, adaptive) or "fast ode" (few-step probability-flow integrators).
    summary: one line for the CLI help and the docs.
    nfe: nfe(steps, denoise=True, **options) -> the exact score evaluations of `sample(..., steps=steps,
        denoise=denoise, **options)` (an explicit grid passes `schedule="given"`, see `grid_nfe`), or
        None where the solver decides (adaptive ODE, torchsde's higher-order methods).
    stochastic: draws noise from `generator` while sampling (else deterministic given x_T).
    takes_grid: steps through every time of an explicit `times` grid (ode, torchsde: its end points only).
    schedule: the default layout of its own grid (a `schedule=` option, "given" for an explicit grid),
        None for the samplers that step on the uniform grid. An SDE's `default_schedule` replaces it (or the
        uniform grid) when the caller names none (FlowSDE, EDMSDE): `samplers.paths.path_schedules` lists them.
    fitted: what `optimize_steps` fits for it: "times", "times and weights" (bns), None: nothing.
    options: the defaults of the options a sampler taking `**options` accepts (None: a default the grid or
        another option sets); the others' options are their keyword-only parameters (`option_defaults`).
    """
    name: str
    fn: Callable = field(repr=False)
    kind: str
    summary: str
    nfe: Callable[..., int | None] = field(repr=False)
    stochastic: bool
    takes_grid: bool
    schedule: str | None = None
    fitted: str | None = None
    options: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind: expected one of {', '.join(KINDS)}, found {self.kind!r}")
        if "\n" in self.summary:
            raise ValueError(f"summary: expected one line, found {self.summary!r}")
        if self.fitted not in FITS:
            raise ValueError(f"fitted: expected one of {FITS}, found {self.fitted!r}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def option_defaults(self) -> dict[str, Any]:
        """{option: default} of every option this sampler accepts: its keyword-only parameters beyond the shared
        ones (generator, denoise, progress), and the `options` it declares for its `**options`."""
        params = inspect.signature(self.fn).parameters.values()
        own = {p.name: p.default for p in params if p.kind == p.KEYWORD_ONLY and p.name not in _SHARED}
        return {**own, **(self.options or {})}

    def grid_nfe(self, intervals: int, denoise: bool = True, **options: Any) -> int | None:
        """Score evaluations on an explicit grid of `intervals` intervals, as `sample(..., times=...)` runs it."""
        if self.schedule is not None:
            options = {**options, "schedule": "given"}
        return self.nfe(intervals, denoise, **options)

    def min_budget(self, denoise: bool = True, **options: Any) -> int | None:
        """The fewest score evaluations on an explicit grid (2 times, the fewest `times` allows)."""
        return self.grid_nfe(1, denoise, **options)

    def steps_for(self, budget: int, denoise: bool = True, **options: Any) -> int:
        """The most steps (at least 1) whose NFE is at most `budget` (NFE grows with steps, one or more per step)."""
        steps = 1
        while steps < budget and self.nfe(steps + 1, denoise, **options) <= budget:
            steps += 1
        return steps


class SamplerRegistry(Registry):
    """The samplers' registry: name -> `SamplerInfo`; `register(name, **facts)` declares the facts."""

    def register(self, name: str, **facts: Any) -> Callable[[Callable], Callable]:
        """Decorator: register `fn` under `name` with its facts (`SamplerInfo`'s fields); returns `fn` unchanged."""
        add = super().register(name)

        def deco(fn: Callable) -> Callable:
            add(SamplerInfo(name=name, fn=fn, **facts))
            return fn

        return deco

    def records(self) -> list[SamplerInfo]:
        """Every record, in registration order (the order the families are imported in `samplers/__init__`)."""
        return list(self._items.values())


SAMPLERS = SamplerRegistry("sampler")


def list_samplers() -> list[str]:
    """Names of the registered samplers."""
    return list(SAMPLERS)


def sampler_info(name: str) -> SamplerInfo:
    """The facts `name` declares (`SamplerInfo`); an unknown name raises a KeyError listing the known ones."""
    return SAMPLERS[name]


def flush_checks(score_fn: Any) -> None:
    """Read the pending NaN checks of a `CheckedScore` (raises at the first non-finite value)."""
    flush = getattr(score_fn, "flush", None)
    if isinstance(score_fn, CheckedScore) and callable(flush):
        flush()


def check_samples(x: torch.Tensor, where: str) -> torch.Tensor:
    """The final samples, refused with NonFiniteError when any entry is NaN/inf (one host read)."""
    bad = nonfinite_count(x)
    if bad:
        raise NonFiniteError(f"{where}: {bad} of {x.numel()} sample values are NaN/inf although every score "
                             "evaluation was finite; the last steps are unstable (use more steps)")
    return x


def uniform_grid(sde, steps: int, eps: float, device=None, dtype=None) -> torch.Tensor:
    """t_i = T - i (T - eps) / steps, i = 0..steps: the reference samplers' uniform grid."""
    return torch.linspace(sde.T, eps, steps + 1, device=device, dtype=dtype)


def progress_range(n: int, progress: bool, desc: str = "sampling"):
    """range(n), with a tqdm progress bar when `progress`."""
    if not progress:
        return range(n)
    from tqdm.auto import trange
    return trange(n, desc=desc, leave=False, dynamic_ncols=True)


def check_options(sampler: str, options: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`defaults` updated with the caller's `options`; unknown option names raise a TypeError."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"sampler {sampler!r}: unknown option(s) {', '.join(unknown)}; "
                        f"expected some of: {', '.join(sorted(defaults)) or '(none)'}")
    return {**defaults, **options}


def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(type(v), type(v).__name__)


def check_sampler_options(sampler: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` of `sampler` checked before anything runs: names against `option_defaults()` (a TypeError
    naming the unknown ones and the known ones), types against the defaults' (ints widen to numbers; a None
    default takes any). The sampler checks the values' ranges when it runs."""
    defaults = SAMPLERS[sampler].option_defaults()
    check_options(sampler, dict(options), defaults)
    for key, value in options.items():
        d = defaults[key]
        if d is None:
            continue
        if isinstance(d, bool) or isinstance(d, str):
            ok = isinstance(value, type(d))
        elif isinstance(d, (int, float)):
            ok = isinstance(value, (int, float) if isinstance(d, float) else int) and not isinstance(value, bool)
        else:
            ok = True
        if not ok:
            raise TypeError(f"sampler {sampler!r}: option {key}: expected {_type_name(d)}, found {value!r}")
    return dict(options)


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """z ~ N(0, I) shaped like x, on x's device and dtype, drawn from `generator`."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def check_times(sde, times: Any) -> torch.Tensor:
    """An explicit time grid as a float64 host tensor: 1-D, strictly decreasing, within [0, sde.t_limit] (T, or 1
    for the flow path, whose kernel is defined up to t = 1 although sampling starts at T < 1)."""
    try:
        t = (times.detach().double().cpu() if isinstance(times, torch.Tensor)
             else torch.tensor([float(v) for v in times], dtype=torch.float64))
    except (TypeError, ValueError):
        raise TypeError(f"times: expected a 1-D sequence or tensor of times, found {type(times).__name__}") from None
    if t.ndim != 1 or len(t) < 2 or not bool(torch.isfinite(t).all()):
        raise ValueError(f"times: expected at least 2 finite times in a 1-D sequence, found shape {tuple(t.shape)}")
    if not bool((t[1:] < t[:-1]).all()):
        raise ValueError(f"times: expected strictly decreasing times, found {t.tolist()[:8]}...")
    limit = getattr(sde, "t_limit", sde.T)
    if float(t[0]) > limit or float(t[-1]) < 0:
        raise ValueError(f"times: expected times in [0, {'T=' if limit == sde.T else 't_limit='}{limit}], "
                         f"found {float(t[0])} ... {float(t[-1])}")
    return t


def start_grid(sde, sampler: str, steps: int, eps: float, t_start: Any) -> tuple[int, float]:
    """(n_full, t0) of `sample(..., steps=steps, eps=eps, t_start=t_start)`: the intervals of its grid counted
    from T and the time it starts at. Samplers with their own grid layout (fast ones, EDM's step grid) or none
    (`ode`, `torchsde`: the end points only) start at t_start exactly on `steps` intervals (n_full = steps); the ones on the uniform grid run the last
    `steps` of n_full = round(steps (T - eps) / (t_start - eps)) uniform intervals from T, starting at
    t0 = T - (n_full - steps) (T - eps) / n_full, the grid time nearest t_start."""
    if isinstance(t_start, bool) or not isinstance(t_start, (int, float)) or not eps < t_start <= sde.T:
        raise ValueError(f"t_start: expected a start time in (eps={eps}, T={sde.T}], found {t_start!r}")
    info = SAMPLERS[sampler]
    if info.schedule is not None or not info.takes_grid or schedule_for(sde, sampler, None) is not None:
        return steps, float(t_start)
    n_full = max(steps, round(steps * (sde.T - eps) / (t_start - eps)))
    t0 = float(uniform_grid(sde, n_full, float(eps), dtype=torch.float64)[n_full - steps])
    return n_full, t0


def _resolve_shape(score_fn: Any, shape: Any) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        data_shape = getattr(score_fn, "data_shape", None)
        if data_shape is None:
            raise ValueError(f"shape: expected (B, *D); a batch size alone ({shape}) needs a score_fn "
                             "with a `data_shape` attribute (a trained ScoreModel)")
        return (shape, *data_shape)
    if not isinstance(shape, (tuple, list, torch.Size)) or not shape or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"shape: expected a batch size or a sequence of positive ints (B, *D), found {shape!r}")
    return tuple(shape)


def sample(sde, score_fn: Callable, shape: Any = None, *, sampler: str = "pc", steps: int | None = None,
           generator: torch.Generator | None = None, device: Any = None, dtype: torch.dtype | None = None,
           x_init: torch.Tensor | None = None, eps: float | None = None, denoise: bool = True,
           progress: bool = False, return_info: bool = False, times: Sequence[float] | torch.Tensor | None = None,
           t_start: float | None = None, **options: Any):
    """Draw samples from the reverse process of `sde` driven by `score_fn`.

    Args:
        score_fn: callable score_fn(x, t) -> grad_x log p_t(x), shaped like x.
        shape: (B, *D), or the batch size alone when `score_fn.data_shape` exists; may be None
            when `x_init` is given.
        sampler: a name from `list_samplers()`.
        steps: number of steps (default `sde.N`); NFE per sampler as documented in the API and declared
            by the sampler (`sampler_info(sampler).nfe(steps, denoise, **options)`).
        eps: final time (default `sde.default_eps`: 1e-3 for VP/sub-VP, 1e-5 for VE).
        x_init: start here instead of a prior draw.
        denoise: end with one noise-free step (Tweedie / "noise removal").
        progress: show a progress bar.
        return_info: also return a dict with the NFE used, the sampler, steps and wall time.
        times: an explicit decreasing time grid T >= t_0 > ... > t_n >= 0 that replaces `steps`
            and `eps` (steps = n): the step samplers step exactly on it (t_n = 0, the data, is
            allowed for them), the fast ones (ddim, heun, dpm_solver, deis, unipc) integrate through
            every interval and, with `denoise`, add the data prediction at t_n > 0; ode and torchsde
            use its end points only. E.g. a diffusers timestep grid, `sde.t_from_timestep(...)`.
        t_start: begin at this time (eps < t_start <= T) instead of T, `x_init` being the state there
            (SDEdit, `samplers.img2img.sdedit`): the `steps` intervals run from t_start to eps in the
            sampler's own layout. The samplers on the uniform grid run the last `steps` intervals of
            the uniform grid from T with the same spacing (`start_grid`), so that the SDE's N-step
            discretisation (reverse diffusion, Langevin step sizes) holds; t_start is rounded to
            its nearest time.
        **options: sampler-specific options (e.g. `predictor`, `corrector`, `snr` for "pc").
    Returns:
        samples of the requested shape, or `(samples, info)` with `return_info`.

    The first score evaluation is checked (a tensor shaped like x, of its dtype and device,
    finite) and every later one is watched for NaN/inf (`scoresde.checks.CheckedScore`): a
    non-finite input, score or state raises `NonFiniteError` (a ValueError) within a step or two,
    naming where it appeared; samples are never returned with NaN/inf in them. On the CPU, data of
    at most 256 values per example are sampled with one thread (`scoresde._common.threads.thread_policy`).
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn: expected a callable score_fn(x, t), found {type(score_fn).__name__}")
    info = SAMPLERS[sampler]
    if times is not None:
        if steps is not None or eps is not None:
            raise ValueError(f"times: an explicit grid replaces steps and eps; found steps={steps!r}, eps={eps!r}")
        grid = check_times(sde, times)
        steps = len(grid) - 1
        if (info.schedule is None and float(grid[0]) > sde.T                  # beyond T: t = 1 of the flow path
                and float(sde.marginal_coefs(grid[:1])[0]) == 0):
            raise ValueError(f"times: sampler {sampler!r} needs the score at t_0 = {float(grid[0])}, where alpha = 0 "
                             "and the score carries no information about the data; start below it (e.g. at "
                             f"T={sde.T}) or use sampler 'ddim', which reads the model's data prediction there")
        if info.schedule is not None:          # a sampler with its own grid layout steps on this one
            if options.setdefault("schedule", "given") != "given":
                raise ValueError(f"schedule: an explicit `times` grid is stepped as given; found "
                                 f"schedule={options['schedule']!r}")
    elif info.schedule is not None and "schedule" not in options:
        path = schedule_for(sde, sampler, info.schedule)    # the path's own grid (flow, EDM) if it declares one
        if path != info.schedule:
            options["schedule"] = path
    steps = sde.N if steps is None else check_int("steps", steps)
    eps = sde.default_eps if eps is None else eps
    if times is None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < sde.T):
        raise ValueError(f"eps: expected a final time in (0, T={sde.T}), found {eps!r}")
    n_full = steps                 # intervals of the (uniform) grid from T; more when starting below T
    if t_start is not None:
        if times is not None:
            raise ValueError(f"t_start: an explicit `times` grid sets its own start; found t_start={t_start!r}")
        n_full, t_start = start_grid(sde, sampler, steps, eps, t_start)
    if x_init is not None:
        if not isinstance(x_init, torch.Tensor) or not x_init.is_floating_point() or x_init.ndim < 1:
            raise TypeError(f"x_init: expected a floating-point tensor (B, *D), found {type(x_init).__name__}")
        if shape is not None and tuple(x_init.shape) != _resolve_shape(score_fn, shape):
            raise ValueError(f"x_init: expected shape {_resolve_shape(score_fn, shape)}, found {tuple(x_init.shape)}")
        x = check_finite("x_init", x_init.to(device=device or x_init.device, dtype=dtype or x_init.dtype))
    else:
        if shape is None:
            raise ValueError("shape: expected (B, *D) or a batch size when x_init is not given, found None")
        x = sde.prior_sampling(_resolve_shape(score_fn, shape), generator=generator, device=device, dtype=dtype)
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"generator: expected a torch.Generator on the samples' device ({x.device}), "
                         f"found one on {generator.device}")
    if n_full != sde.N:     # discretisation-based steps (DDPM/SMLD, Langevin alpha) follow the grid
        sde = sde.with_steps(n_full)
    step_schedule = schedule_for(sde, sampler, None) if info.schedule is None else None
    if times is None and step_schedule is not None:      # e.g. EDM's rho = 7 grid for euler_maruyama
        ts = time_grid(sde, steps, float(eps), step_schedule, device=x.device, dtype=x.dtype, t_start=t_start)
    elif times is None and (info.schedule is not None or n_full == steps):   # fast samplers, ode: from ts[0]
        ts = torch.linspace(sde.T if t_start is None else t_start, eps, steps + 1, device=x.device, dtype=x.dtype)
    elif times is None:                                   # the last `steps` intervals of the uniform grid from T
        ts = uniform_grid(sde, n_full, float(eps), device=x.device, dtype=x.dtype)[n_full - steps:]
    else:
        ts = grid.to(device=x.device, dtype=x.dtype)
    counted = CheckedScore(score_fn, where=f"sampler {sampler!r}")
    start = time.perf_counter()
    with torch.no_grad(), thread_policy(x.shape[1:], x.device):
        x = info.fn(sde, counted, x, ts, generator=generator, denoise=bool(denoise), progress=bool(progress), **options)
        counted.flush()
        check_samples(x, f"sampler {sampler!r}")
    if not return_info:
        return x
    return x, {"nfe": counted.nfe, "sampler": sampler, "steps": steps, "seconds": time.perf_counter() - start}


def estimate_sampling(sde, score_fn: Callable, shape: Any, *, sampler: str = "pc", steps: int | None = None,
                      device: Any = None, dtype: torch.dtype | None = None, denoise: bool = True,
                      **options: Any) -> dict[str, Any]:
    """How long `sample(sde, score_fn, shape, sampler=sampler, steps=steps, **options)` will take, before it runs:
    one score evaluation of the whole batch (a prior draw at t = T / 2, under the sampler's thread policy) is
    timed and multiplied by the NFE the sampler declares. Costs that one evaluation.

    Returns {"n", "sampler", "steps", "nfe", "seconds_per_call", "seconds"}; "nfe" and "seconds" are None where
    the solver chooses its steps (ode, torchsde's higher-order methods)."""
    info = SAMPLERS[sampler]
    steps = sde.N if steps is None else check_int("steps", steps)
    x = sde.prior_sampling(_resolve_shape(score_fn, shape), device=device, dtype=dtype)
    t = torch.full((x.shape[0],), 0.5 * sde.T, device=x.device, dtype=x.dtype)
    with torch.no_grad(), thread_policy(x.shape[1:], x.device):
        _sync(x.device)
        start = time.perf_counter()
        score_fn(x, t)
        _sync(x.device)
        per_call = time.perf_counter() - start
    nfe = info.nfe(steps, bool(denoise), **options)
    return {"n": int(x.shape[0]), "sampler": sampler, "steps": steps, "nfe": nfe, "seconds_per_call": per_call,
            "seconds": None if nfe is None else nfe * per_call}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_estimate(est: dict[str, Any], what: str = "samples", calls: str = "score evaluations") -> str:
    """One line for an `estimate_sampling` result: "64 samples: dpm_solver, 20 steps (20 score evaluations of
    the batch, 0.12 s each): about 2.4 s"."""
    head = f"{est['n']} {what}: {est['sampler']}, {est['steps']} steps"
    each = f"{est['seconds_per_call']:.3g} s each"
    if est["nfe"] is None:
        return f"{head} (the solver chooses the number of {calls}, {each})"
    return f"{head} ({est['nfe']} {calls} of the batch, {each}): about {_duration(est['seconds'])}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
