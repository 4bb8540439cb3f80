"""Super-resolution sampling and cascades of score models.

- SR3 (Saharia et al. 2021, arXiv:2104.07636): a super-resolution model is a score model of the high-resolution
  image conditioned on the low-resolution one (`Cond.image`, upsampled and concatenated on channels by the
  network); sampling it is sampling the conditional score s(x, t | y) with any sampler.
- Cascaded Diffusion Models (Ho et al. 2021, arXiv:2106.15282, Sec. 4.2) and Imagen (Saharia et al. 2022,
  arXiv:2205.11487): a base model samples at low resolution and each stage super-resolves the previous output.
  Noise-conditioning augmentation: the low-resolution condition is corrupted by the forward process to a level
  s (a time of the model's SDE), z_s = alpha(s) y + sigma(s) eps, and s is given to the network
  (`Cond.image_level`). Non-truncated: the previous stage runs to t = 0 and its output is re-noised to s by the
  stage (`model.augment`). Truncated: the previous stage's reverse chain is stopped at s and its x_s, already
  noisy at level s, is the condition; it needs the same forward process (alpha, sigma) in both models.

The functions take any ScoreModel-like `model(x, t, cond)` with `sde`, `data_shape`, `image_shape`,
`image_cond(image, level, *, generator, noisy, labels)` and (optionally) `num_classes`, `text_encoder` and
`autoencoder` (a latent model: its samples are decoded).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from scoresde._common.validation import check_generator, check_int, check_real
from scoresde.models.conditioning import Cond, ConditionedScore, check_labels, check_num_classes
from scoresde.models.guidance import _same_length, classifier_free_score
from scoresde.models.text import check_prompts
from scoresde.samplers.core import sample


__all__ = ["super_resolve", "cascade", "output_shape", "DEFAULT_SAMPLER", "DEFAULT_STEPS", "SR_SAMPLER", "SR_STEPS",
           "sr_default"]

DEFAULT_SAMPLER, DEFAULT_STEPS = "dpm_solver", 20        # the base, as image runs sample (configs/digits.toml)
# Super-resolution stages that predict eps (or the score) default to the reverse SDE: on the digits32 8 -> 32 eps
# stages every probability-flow ODE sampler (dpm_solver, ddim, heun; 20 or 60 steps) ended at wrong images (pixel std
# ~1.7, values ~13; MSE 4.4 against the true images) while euler_maruyama at 50 steps came close (MSE 0.09): their
# data prediction at t = 1 is off by sigma/alpha = 150 times the eps error, and only the SDE's noise corrects what
# the ODE carries along. Stages that predict v (the training default, scoresde/training/tasks/score.py), x0 or EDM's
# F take dpm_solver at 20 steps like any image model (the same stage trained with v: ddim 20 MSE 0.00027,
# dpm_solver 20 0.00033, euler_maruyama 50 0.0024).
SR_SAMPLER, SR_STEPS = "euler_maruyama", 50


def sr_default(model: Any) -> tuple[str, int]:
    """(sampler, steps) a super-resolution stage samples with unless told: the reverse SDE at 50 steps for a stage
    that predicts eps or the score, else dpm_solver at 20 (see above)."""
    if getattr(model, "parameterization", None) in ("eps", "score"):
        return SR_SAMPLER, SR_STEPS
    return DEFAULT_SAMPLER, DEFAULT_STEPS


# --- shapes and checks ---------------------------------------------------------------------------------
def output_shape(model: Any) -> tuple[int, ...]:
    """The shape (C, H, W) of one sample of `model` as returned: its data shape, or a latent model's decoded
    image shape (autoencoder channels, data size times its downsampling factor)."""
    shape = getattr(model, "data_shape", None)
    if shape is None:
        raise ValueError(f"model: expected a score model with a `data_shape`, found {type(model).__name__} "
                         "without one")
    ae = getattr(model, "autoencoder", None)
    if ae is None:
        return tuple(shape)
    return (ae.image_channels, *(d * ae.downsample for d in tuple(shape)[1:]))


def _image_shape(model: Any, name: str) -> tuple[int, ...]:
    shape = getattr(model, "image_shape", None)
    if shape is None:
        raise ValueError(f"{name}: expected a super-resolution model (a network built with image_shape, "
                         f"conditioned on a low-resolution image), found {type(model).__name__} without an "
                         "image condition")
    return tuple(shape)


def _check_low_res(low_res: Any, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(low_res, torch.Tensor) or not low_res.is_floating_point():
        found = low_res.dtype if isinstance(low_res, torch.Tensor) else type(low_res).__name__
        raise TypeError(f"low_res: expected a floating-point tensor (B, {', '.join(map(str, shape))}), found {found}")
    if low_res.ndim != len(shape) + 1 or tuple(low_res.shape[1:]) != shape:
        raise ValueError(f"low_res: expected images of shape (B, {', '.join(map(str, shape))}) (the model's "
                         f"image_shape: channels, height, width), found {tuple(low_res.shape)}")
    return low_res


def _check_level(name: str, level: Any, sde: Any) -> float:
    """An augmentation level s: a time of the model's SDE in [0, T]."""
    return check_real(name, level, 0.0, float(sde.T))


def same_process(a: Any, b: Any, points: int = 17) -> bool:
    """Whether two SDEs have the same T and perturbation kernel alpha(t), sigma(t) (checked on a grid of times)."""
    if float(a.T) != float(b.T):
        return False
    t = torch.linspace(0.0, float(a.T), points, dtype=torch.float64)
    (a1, s1), (a2, s2) = a.marginal_coefs(t), b.marginal_coefs(t)
    return bool(torch.allclose(a1, a2, rtol=1e-6, atol=1e-9) and torch.allclose(s1, s2, rtol=1e-6, atol=1e-9))


# --- the conditional score ------------------------------------------------------------------------------
def _labels(model: Any, labels: Any, batch: int, device: Any, name: str = "labels") -> torch.Tensor | None:
    """Class labels (an int or a (B,) tensor) as a (B,) long tensor for a class-conditional `model`."""
    if labels is None:
        return None
    if getattr(model, "num_classes", None) is None:
        raise ValueError(f"{name}: expected a class-conditional model (built with num_classes), found "
                         f"{type(model).__name__} without classes")
    return check_labels(labels, batch, check_num_classes(None, model), allow_null=False, device=device)


def conditional_score(model: Any, cond: Cond | None, *, w: float | None = None, prompt: Any = None,
                      negative_prompt: Any = None) -> Callable:
    """The score function of `model` under `cond` (its rows: one per sample), with classifier-free guidance of
    weight `w` on its labels or on `prompt` (the image condition is kept in the unconditional branch, as
    `Cond.null_like` keeps it). A prompt is encoded by `model.text_encoder` and joins `cond`."""
    cond = cond if cond is not None else Cond()
    if prompt is not None or negative_prompt is not None:
        if prompt is None:
            raise ValueError("negative_prompt: expected together with prompt, found prompt=None")
        enc = getattr(model, "text_encoder", None)
        if enc is None:
            raise ValueError(f"prompt: expected a text-conditional model (a text_encoder), found "
                             f"{type(model).__name__} without one")
        B = cond.batch_size or 1
        prompts = check_prompts(prompt, "prompt")
        prompts = prompts * B if len(prompts) == 1 else prompts
        if len(prompts) != B:
            raise ValueError(f"prompt: expected 1 prompt or {B} (one per sample), found {len(prompts)}")
        with torch.no_grad():
            text = enc.encode(prompts)
            if negative_prompt is None:
                null = enc.null(B)
            else:
                neg = check_prompts(negative_prompt, "negative_prompt")
                null = enc.encode(neg * B if len(neg) == 1 else neg)
        text, null = _same_length(text.to(cond.device), null.to(cond.device))
        image = {k: v for k, v in cond.items() if k in ("image", "image_level")}
        uncond = Cond(**dict(null.items()), **image,
                      **({"labels": cond.labels} if cond.labels is not None else {}))
        cond = Cond(**dict(text.items()), **dict(cond.items()))
        if w is None:
            return ConditionedScore(model, cond)
        return classifier_free_score(model, cond, w, uncond=uncond)
    if w is None:
        return ConditionedScore(model, cond)
    if cond.labels is None:
        raise ValueError("w: classifier-free guidance acts on class labels or a prompt (the image condition is "
                         "kept in both branches); found neither")
    return classifier_free_score(model, cond, w)


def _device_of(model: Any, generator: torch.Generator | None) -> torch.device:
    """Where to sample: the generator's device, else the model's parameters', else the CPU."""
    if generator is not None:
        return generator.device
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


def _decoded(model: Any, x: torch.Tensor) -> torch.Tensor:
    ae = getattr(model, "autoencoder", None)
    return x if ae is None else ae.decode_all(x)


# --- super-resolution ------------------------------------------------------------------------------------
def super_resolve(model: Any, low_res: torch.Tensor, *, aug_level: Any = None, noisy: bool = False,
                  n_per: int = 1, sampler: str | None = None, steps: int | None = None, labels: Any = None,
                  w: float | None = None, prompt: Any = None, negative_prompt: Any = None,
                  generator: torch.Generator | None = None, progress: bool = False, **options: Any) -> torch.Tensor:
    """High-resolution samples of a super-resolution `model` conditioned on `low_res` (SR3, CDM).

    Args:
        model: a score model with an image condition (`model.image_shape` (C, h, w), `model.image_cond`).
        low_res: (B, C, h, w) low-resolution images in the model's data range (e.g. [-1, 1]).
        aug_level: the noise-conditioning augmentation level s, a time of the model's SDE in [0, T] (a number or
            one per low-res image): the condition is alpha(s) low_res + sigma(s) eps and the network is told s
            (0: the clean image). None: `model.default_image_level` (0 for our models; a wrapper's own, e.g. the SD
            x4 upscaler's integer noise_level 20), checked by `model.check_image_level`.
        noisy: `low_res` is already at level s (e.g. a truncated base chain's x_s): it is not re-noised.
        n_per: samples per low-resolution image; rows i * n_per ... (i + 1) * n_per - 1 belong to image i.
        sampler, steps: any sampler of `list_samplers()` and its steps; default `sr_default(model)`: dpm_solver
            at 20 steps, or euler_maruyama at 50 for a stage that predicts eps (its probability-flow samplers
            diverge: `SR_SAMPLER`), a named sampler 20 steps; `**options` its options (e.g. `times=`, an explicit grid, instead of steps).
        labels: class labels (an int or a (B,) tensor, one per low-res image) of a class-conditional model.
        w: classifier-free guidance weight on `labels` or `prompt` (None: the conditional score, unguided).
        prompt, negative_prompt: text, for a text-conditional model (one prompt, or one per low-res image).
        generator: the source of every random draw (augmentation noise, prior, sampler noise).
    Returns:
        (B * n_per, *D) samples, D the model's data shape (a latent model's samples decoded to images).
    """
    check_generator(generator)
    shape = _image_shape(model, "model")
    low_res = _check_low_res(low_res, shape)
    if aug_level is None:
        aug_level = getattr(model, "default_image_level", 0.0)
    check = getattr(model, "check_image_level", None)
    level = (check(aug_level, low_res.shape[0], low_res, "aug_level") if check is not None
             else _check_level("aug_level", aug_level, model.sde))
    n_per = check_int("n_per", n_per)
    if not isinstance(noisy, bool):
        raise TypeError(f"noisy: expected a bool, found {type(noisy).__name__}")
    B = low_res.shape[0]
    y = _labels(model, labels, B, low_res.device)
    if n_per > 1:
        low_res = low_res.repeat_interleave(n_per, 0)
        level = level.repeat_interleave(n_per, 0) if isinstance(level, torch.Tensor) and level.ndim else level
        y = None if y is None else y.repeat_interleave(n_per, 0)
        if prompt is not None and not isinstance(prompt, str) and len(prompt) == B:
            prompt = [p for p in prompt for _ in range(n_per)]
    cond = model.image_cond(low_res, level, generator=generator, noisy=noisy, labels=y)
    score = conditional_score(model, cond, w=w, prompt=prompt, negative_prompt=negative_prompt)
    default, default_steps = sr_default(model)
    x = sample(model.sde, score, (low_res.shape[0], *model.data_shape), sampler=sampler or default,
               steps=_steps(steps, options, sampler, default_steps), generator=generator, device=low_res.device,
               dtype=low_res.dtype, progress=progress, **options)
    return _decoded(model, x)


def _steps(steps: int | None, options: dict, sampler: str | None, default: int) -> int | None:
    """The steps of one model's sampler: given; else `default` for the default sampler and DEFAULT_STEPS (20) for a
    named one; None when an explicit `times` grid sets them."""
    if steps is not None or "times" in options:
        return steps
    return default if sampler is None else DEFAULT_STEPS


# --- cascades ----------------------------------------------------------------------------------------------
def _per_model(name: str, value: Any, k: int, what: str) -> list:
    """One value for every model, or a list/tuple of exactly `k` (one per model)."""
    if isinstance(value, (list, tuple)):
        if len(value) != k:
            raise ValueError(f"{name}: expected one {what} or a list of {k} (one per {'stage' if 'stage' in what else 'model'}), "
                             f"found a list of {len(value)}")
        return list(value)
    return [value] * k


def _check_chain(base: Any, stages: Sequence[Any]) -> None:
    """Each stage's image_shape equals the previous output's shape: one ValueError naming the stage."""
    if getattr(base, "image_shape", None) is not None:
        raise ValueError(f"base: expected a model that samples without an image condition, found a "
                         f"super-resolution model (image_shape {tuple(base.image_shape)}); put it in stages")
    prev = output_shape(base)
    for k, stage in enumerate(stages):
        expected = _image_shape(stage, f"stages[{k}]")
        if expected != prev:
            raise ValueError(f"stages[{k}]: expected a model conditioned on images of shape {prev} (the "
                             f"{'base' if k == 0 else f'stages[{k - 1}]'} output), found image_shape {expected}")
        prev = output_shape(stage)


def cascade(base: Any, stages: Sequence[Any], n: int, *, aug_level: float | Sequence[float] = 0.2,
            truncated: bool = False, sampler: str | None | Sequence[str | None] = None,
            steps: int | None | Sequence[int | None] = None, options: dict | Sequence[dict] | None = None,
            labels: Any = None, w: float | None = None, generator: torch.Generator | None = None,
            device: Any = None, dtype: torch.dtype | None = None, progress: bool = False,
            return_all: bool = False) -> torch.Tensor | list[torch.Tensor]:
    """Cascaded sampling (CDM, Imagen): `base` samples `n` low-resolution images and each of `stages`
    super-resolves the previous output.

    Args:
        base: the low-resolution score model (any; class-conditional with `labels`).
        stages: super-resolution models, in order; stage k's `image_shape` must be the previous output's shape.
        n: number of samples.
        aug_level: the augmentation level s of each stage's condition (one value or one per stage), a time of
            the stage's SDE in [0, T].
        truncated: CDM's truncated conditioning augmentation: the previous chain is stopped at time s and its
            x_s is the condition (the two models must share the forward process, and the previous model must
            not be a latent model); otherwise (non-truncated) the previous output at t = 0 is re-noised to s.
        sampler, steps, options: per model (base first, then the stages): one value for all or a list of
            len(stages) + 1; default dpm_solver at 20 steps for the base and `sr_default(stage)` for the stages
            (the same, or euler_maruyama at 50 for a stage that predicts eps), 20 steps for a named sampler; `options` a dict of sampler options.
        labels, w: class labels (an int or a (n,) tensor) given to every class-conditional model of the
            cascade, with classifier-free guidance weight `w` (None: unguided).
        generator: the source of every random draw.
        return_all: return the list of every model's output (base first) instead of the final images; with
            `truncated`, an intermediate output is the noisy x_s that the next stage was conditioned on.
    Returns:
        (n, *D) final samples, or the list of all outputs with `return_all`.
    """
    check_generator(generator)
    n = check_int("n", n)
    if not isinstance(stages, (list, tuple)) or not stages:
        found = f"an empty {type(stages).__name__}" if isinstance(stages, (list, tuple)) else type(stages).__name__
        raise ValueError(f"stages: expected a non-empty list of super-resolution models, found {found}")
    if not isinstance(truncated, bool):
        raise TypeError(f"truncated: expected a bool, found {type(truncated).__name__}")
    _check_chain(base, stages)
    models = [base, *stages]
    k = len(models)
    levels = [_check_level(f"aug_level[{i}]" if isinstance(aug_level, (list, tuple)) else "aug_level", s,
                           stage.sde)
              for i, (s, stage) in enumerate(zip(_per_model("aug_level", aug_level, len(stages), "level per stage"),
                                                 stages))]
    samplers = _per_model("sampler", sampler, k, "sampler")
    steps = _per_model("steps", steps, k, "number of steps")
    options = [dict(o or {}) for o in _per_model("options", options, k, "dict of options")]
    if truncated:
        for i, stage in enumerate(stages):
            prev = models[i]
            if levels[i] > 0 and not same_process(prev.sde, stage.sde):
                raise ValueError(f"truncated: stages[{i}]'s SDE {stage.sde!r} differs from the previous model's "
                                 f"{prev.sde!r}; the truncated cascade conditions on the previous chain stopped at "
                                 "s, which needs the same forward process (use truncated=False)")
            if levels[i] > 0 and getattr(prev, "autoencoder", None) is not None:
                raise ValueError(f"truncated: the model before stages[{i}] is a latent model, whose chain at s is "
                                 "noisy latents, not noisy images (use truncated=False)")
            if not levels[i] < float(prev.sde.T):
                raise ValueError(f"aug_level: a truncated chain stops at s < T={prev.sde.T}, found {levels[i]}")
    dev = torch.device(device) if device is not None else _device_of(base, generator)
    y = {i: _labels(m, labels, n, dev, "labels") for i, m in enumerate(models)
         if labels is not None and getattr(m, "num_classes", None) is not None}
    if labels is not None and not y:
        raise ValueError("labels: expected a class-conditional model in the cascade (built with num_classes), "
                         "found none")

    def plan(i: int, stop: float | None) -> dict:
        """sample() keywords of model i: its sampler and steps; stopped at time `stop` without denoising."""
        default, default_steps = (DEFAULT_SAMPLER, DEFAULT_STEPS) if i == 0 else sr_default(models[i])
        kw = {"sampler": samplers[i] or default, "generator": generator, "progress": progress, **options[i]}
        kw["steps"] = _steps(steps[i], options[i], samplers[i], default_steps)
        if stop:
            kw.update(eps=stop, denoise=False)
        return kw

    def stop_at(i: int) -> float | None:          # where model i's chain ends: the next stage's s if truncated
        return levels[i] if truncated and i < len(stages) and levels[i] > 0 else None

    cond = Cond(labels=y[0]) if 0 in y else None
    x = sample(base.sde, conditional_score(base, cond, w=w if 0 in y else None), (n, *base.data_shape),
               device=dev, dtype=dtype, **plan(0, stop_at(0)))
    outputs = [x if stop_at(0) else _decoded(base, x)]
    for i, stage in enumerate(stages, start=1):
        s, noisy = levels[i - 1], stop_at(i - 1) is not None
        cond = stage.image_cond(outputs[-1], s, generator=generator, noisy=noisy, labels=y.get(i))
        x = sample(stage.sde, conditional_score(stage, cond, w=w if i in y else None), (n, *stage.data_shape),
                   device=x.device, dtype=x.dtype, **plan(i, stop_at(i)))
        outputs.append(x if stop_at(i) else _decoded(stage, x))
    return outputs if return_all else outputs[-1]
