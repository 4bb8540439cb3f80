"""`scoresde sample --cascade` / `--low-res`: cascaded sampling (a base run, then super-resolution runs, each
conditioned on the previous output; Cascaded Diffusion Models, Ho et al. 2021, arXiv:2106.15282) and the
super-resolution of a user's images (SR3, Saharia et al. 2021, arXiv:2104.07636), by `scoresde.cascade` and
`scoresde.super_resolve` (scoresde/models/cascade.py)."""
from __future__ import annotations

import re
from typing import Any

import click
import torch

from scoresde._common.distributed import resolve_device
from scoresde._common.threads import thread_policy
from scoresde.cli.common import ModelSource, user_errors
from scoresde.cli.guidance import parse_label
from scoresde.cli.steps import stored_steps
from scoresde.data.datasets import load_dataset
from scoresde.models.cascade import cascade, output_shape, sr_default, super_resolve
from scoresde.models.superres import upsample
from scoresde.runs.plots import save_samples


__all__ = ["sample_cascade", "sample_low_res", "load_low_res", "FIGURE_MAX"]

FIGURE_MAX = 64                       # low-res inputs shown in a .png (a .npy takes them all)
_PRETRAINED = {"sampler": "deis", "steps": 20}
_FLAGS = {"low_res": "--low-res", "aug_level": "--aug-level", "model": "--checkpoint", "labels": "--label",
          "n_per": "--n-per", "truncated": "--truncated", "steps": "--steps"}


def _plan(opened, source: ModelSource, sampler: str | None, steps: int | None, options: dict) -> dict[str, Any]:
    """sample() keywords of one model: --sampler/--steps, else its run's sample.sampler/steps (a super-resolution
    stage: `sr_default(model)`, dpm_solver 20, or the reverse SDE at 50 steps for an eps stage; a stored optimised grid when the run has one), and the --set
    options."""
    defaults = opened.meta["config"]["sample"] if opened.meta is not None else _PRETRAINED
    if getattr(opened.model, "image_shape", None) is not None:
        default, default_steps = sr_default(opened.model)
        defaults = {"sampler": default, "steps": default_steps if sampler is None else defaults["steps"]}
    sampler = sampler or defaults["sampler"]
    steps = steps or defaults["steps"]
    kw = (stored_steps(source.path, opened.file, sampler, steps) if opened.file is not None
          else {"steps": steps})
    return {"sampler": sampler, **kw, **options}


def _labels(label: str | None, w: float | None, opened: list) -> tuple[int | None, float | None, str]:
    """(the class index, the guidance weight, words for the title) of --label / --guidance: the class is
    named by the first class-conditional model of the cascade."""
    if label is None:
        if w is not None:
            raise ValueError("--guidance: expected --label too (the class to guide towards), found none")
        return None, None, ""
    owner = next((o for o in opened if getattr(o.model, "num_classes", None) is not None), opened[0])
    y, name = parse_label(label, owner.model, owner.meta or {})
    return y, (1.0 if w is None else w), f", class {name}, w = {1.0 if w is None else w:g}"


def _levels(aug_levels: tuple[float, ...], k: int, default: float) -> float | list[float]:
    if not aug_levels:
        return default
    if len(aug_levels) not in (1, k):
        raise ValueError(f"--aug-level: expected one level or {k} (one per --cascade), found {len(aug_levels)}")
    return aug_levels[0] if len(aug_levels) == 1 else list(aug_levels)


def _stage_names(msg: str, base: str, stages: list[str]) -> str:
    """The library's `stages[k]` and `the base` in a message as the flags that named them."""
    msg = re.sub(r"stages\[(\d+)\]", lambda m: f"--cascade {stages[int(m.group(1))]!r}", msg)
    if msg.startswith("base:"):
        msg = f"--checkpoint {base!r}:" + msg[len("base:"):]
    return msg.replace("the base output", f"--checkpoint {base!r}'s output")


def side_by_side(rows: list[torch.Tensor]) -> torch.Tensor:
    """Images of each list entry (B, C, h_k, w_k), upsampled (nearest) to the last one's size and interleaved
    per sample: (B * len(rows), C, H, W), a grid row per sample."""
    H, W = rows[-1].shape[-2:]
    if len({r.shape[1] for r in rows}) > 1:                 # channels differ (e.g. a latent stage): final only
        return rows[-1]
    big = [r if r.shape[-2:] == (H, W) else upsample(r.float(), (H, W), "nearest") for r in rows]
    return torch.stack([b.float().cpu() for b in big], 1).flatten(0, 1)


def sample_cascade(source: ModelSource, stage_paths: list[str], *, n: int | None, out: str, aug_levels, truncated: bool,
                   sampler: str | None, steps: int | None, options: dict, label: str | None, w: float | None,
                   seed: int, device: str, raw: bool) -> str:
    """`--checkpoint BASE --cascade SR [--cascade SR2]`: n cascaded samples to `out` (.npy: the final images;
    .png: a row per sample, each stage's output beside the next). Returns the line to print."""
    dev = resolve_device(device)
    opened = [source.open(dev, ema=not raw)]
    sources = [source]
    for path in stage_paths:
        sources.append(ModelSource.parse(path, verify=source.verify))
        opened.append(sources[-1].open(dev, ema=not raw))
    models = [o.model for o in opened]
    y, w, words = _labels(label, w, opened)
    plans = [_plan(o, s, sampler, steps, options) for o, s in zip(opened, sources)]
    meta = opened[0].meta
    n = n or (min(meta["config"]["sample"]["n"], FIGURE_MAX) if meta is not None else 16)
    g = torch.Generator(dev).manual_seed(seed)
    with thread_policy(output_shape(models[-1]), dev), user_errors(_FLAGS):
        try:
            outs = cascade(models[0], models[1:], n, aug_level=_levels(aug_levels, len(stage_paths), 0.2),
                           truncated=truncated, sampler=[p.pop("sampler") for p in plans],
                           steps=[p.pop("steps", None) for p in plans], options=plans, labels=y, w=w, generator=g,
                           device=dev, progress=True, return_all=True)
        except ValueError as e:
            raise ValueError(_stage_names(str(e), source.path, stage_paths)) from None
    shapes = " -> ".join("x".join(map(str, o.shape[-2:])) for o in outs)
    title = f"{n} cascaded samples {shapes}{words}, s = {_levels(aug_levels, len(stage_paths), 0.2)}" + (
        ", truncated" if truncated else "")
    if out.lower().endswith(".npy"):
        save_samples(outs[-1].cpu(), out, title)
    else:
        save_samples(side_by_side(outs), out, title, nrow=len(outs))
    return f"wrote {n} cascaded samples ({shapes}) to {out}"


def load_low_res(path: str, model: Any, meta: dict | None, n: int | None) -> torch.Tensor:
    """--low-res: a folder of images, an .npy/.npz of (N, C, h, w) in the model's data range, or a built-in
    dataset name; the first `n` (default all) examples, their shape checked against `model.image_shape`."""
    shape = getattr(model, "image_shape", None)
    if shape is None:
        raise ValueError("--checkpoint: expected a super-resolution model (trained with model.image_shape) for "
                         "--low-res, found one without an image condition")
    normalize = (meta or {}).get("config", {}).get("data", {}).get("normalize", "auto")
    try:
        x = load_dataset(path, size=n or 64, normalize=normalize, labels=False).x
    except (ValueError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"--low-res {path!r}: {msg}") from None
    if tuple(x.shape[1:]) != tuple(shape):
        found = tuple(x.shape[1:])
        what = ("channels" if len(found) == 3 and found[1:] == tuple(shape)[1:] else
                "size" if len(found) == 3 and found[0] == shape[0] else "shape")
        raise ValueError(f"--low-res {path!r}: expected images of shape {tuple(shape)} (channels, height, width: "
                         f"the model's low-resolution input), found {found} (wrong {what})")
    return x[:n] if n else x


def sample_low_res(source: ModelSource, low_res: str, *, n: int | None, n_per: int | None, out: str, aug_levels,
                   sampler: str | None, steps: int | None, options: dict, label: str | None, w: float | None,
                   seed: int, device: str, raw: bool, autoencoder: str | None, prompts: list[str] | None = None,
                   negative_prompt: str | None = None) -> str:
    """`--checkpoint SR_RUN --low-res DIR|NPY`: the super-resolutions of the first n inputs (n_per of each) to
    `out` (.npy: (n * n_per, C, H, W) in the data range; .png: each input beside its super-resolutions)."""
    dev = resolve_device(device)
    opened = source.open(dev, ema=not raw, autoencoder=autoencoder)
    model = opened.model
    x = load_low_res(low_res, model, opened.meta, n)
    if out.lower().endswith(".png") and len(x) > FIGURE_MAX and n is None:
        click.echo(f"--low-res {low_res!r}: {len(x)} inputs, the figure shows the first {FIGURE_MAX} (--n)", err=True)
        x = x[:FIGURE_MAX]
    if prompts and label is None:            # a text-conditional model: --guidance weighs the prompt
        y, words = None, f", prompt {prompts[0]!r}" + ("" if w is None else f", w = {w:g}")
    else:
        y, w, words = _labels(label, w, [opened])
    if len(aug_levels) > 1:
        raise ValueError(f"--aug-level: expected one level for --low-res, found {len(aug_levels)}")
    s = aug_levels[0] if aug_levels else getattr(model, "default_image_level", 0.0)
    prompt = None
    if prompts:
        if len(prompts) not in (1, len(x)):
            raise ValueError(f"--prompt: expected one prompt or one per low-res input ({len(x)}), found {len(prompts)}")
        prompt = prompts[0] if len(prompts) == 1 else list(prompts)
    kw = _plan(opened, source, sampler, steps, options)
    n_per = n_per or 1
    g = torch.Generator(dev).manual_seed(seed)
    with thread_policy(output_shape(model), dev), user_errors(_FLAGS):
        high = super_resolve(model, x.to(dev), aug_level=s, n_per=n_per, labels=y, w=w, prompt=prompt,
                             negative_prompt=negative_prompt, generator=g, progress=True, **kw).cpu()
    title = f"{len(x)} inputs x {n_per} super-resolutions{words}, s = {s:g}, {kw['sampler']}"
    if out.lower().endswith(".npy"):
        save_samples(high, out, title)
    else:
        grid = side_by_side([x.repeat_interleave(n_per, 0).cpu(), high])            # (2 n n_per, ...)
        keep = torch.arange(len(grid)).reshape(len(x), n_per, 2)
        keep = torch.cat([keep[:, :1, 0], keep[:, :, 1]], 1).flatten()              # input, then its samples
        save_samples(grid[keep], out, title, nrow=1 + n_per)
    return f"wrote {len(high)} super-resolutions of {len(x)} inputs ({n_per} each) to {out}"
