"""`scoresde sample`: samples of a trained or pretrained model to a file, optionally of one class or of
text prompts (classifier-free guidance, Ho & Salimans 2022, arXiv:2207.12598; a grid of prompts x samples)
or completing known data (inpainting,
Song et al. 2021, arXiv:2011.13456, App. I.2), or editing given images (SDEdit, `scoresde.cli.img2img`); a sequence run's texts (`scoresde.cli.tokens`).
"""
from __future__ import annotations

import math
import os

import click
import numpy as np
import torch

from scoresde._common.distributed import resolve_device
from scoresde._common.files import save_npy_chunks
from scoresde._common.limits import check_memory, sample_batch
from scoresde._common.threads import thread_policy
from scoresde.cli.common import (MODEL_FLAGS, ModelSource, allow_unverified_option, device_option, model_options, names,
                                 user_errors)
from scoresde.cli.cascade import sample_cascade, sample_low_res
from scoresde.cli.steps import fitted_from_file, stored_steps
from scoresde.cli.tokens import SEQUENCE_TASKS, sample_tokens
from scoresde.data.datasets import load_dataset
from scoresde.data.masks import load_mask, make_mask
from scoresde.cli.guidance import Guidance
from scoresde.cli.img2img import check_strength, sample_img2img
from scoresde.pretrained.score_sde_configs import describe_configs
from scoresde.runs.checkpoint import checkpoint_task
from scoresde.runs.plots import save_samples
from scoresde.samplers.core import SAMPLERS, check_sampler_options
from scoresde.samplers.inpainting import impute
from scoresde.samplers.predictors import PREDICTORS
from scoresde.samplers.masked import list_discrete_samplers
from scoresde.samplers.paths import path_schedules
from scoresde.training.config import parse_override


__all__ = ["sample"]


def _list_configs(ctx, _param, value):
    """--list-configs: the score_sde presets (and the refused official configs), then exit."""
    if not value or ctx.resilient_parsing:
        return
    click.echo("\n".join(describe_configs()))
    ctx.exit(0)


_PRETRAINED_DEFAULTS = {"sampler": "deis", "steps": 20}    # for models without a run config


def _sampler_help() -> str:
    """`sample --sampler`'s help: the samplers grouped by the kind their records declare (`SamplerInfo`)."""
    kinds: dict[str, list[str]] = {}
    for r in SAMPLERS.records():
        kinds.setdefault(r.kind, []).append(r.name)
    return ("; ".join(f"{kind}: {', '.join(members)}" for kind, members in kinds.items())
            + f"; sequence runs: {', '.join(list_discrete_samplers())}.")


def _options_help() -> str:
    """`sample --set`'s help: each sampler's options, from the samplers' records (`SamplerInfo.option_defaults`)."""
    listed = [f"{r.name}: {', '.join(r.option_defaults())}" for r in SAMPLERS.records() if r.option_defaults()]
    return ("A sampler option, e.g. --set sample.order=3 --set sample.corrector=true (VALUE in TOML syntax; "
            f"repeatable). The samplers' options: {'; '.join(listed)}. --list-samplers shows their defaults.")


def _list_samplers(ctx, _param, value):
    """--list-samplers: each sampler's kind, summary, NFE at 10 steps and options with defaults, then exit."""
    if not value or ctx.resilient_parsing:
        return
    for r in SAMPLERS.records():
        nfe = r.nfe(10)
        opts = ", ".join(f"{k}={'(set by the grid)' if v is None else v}" for k, v in r.option_defaults().items())
        grids = ", ".join(f"{k} {v}" for k, v in path_schedules(r.name).items())
        click.echo(f"{r.name} ({r.kind}): {r.summary}\n    NFE at --steps 10: "
                   f"{nfe if nfe is not None else 'chosen by the solver'}; options: {opts or 'none'}"
                   + (f"; time grid: {grids}" if grids else ""))
    ctx.exit(0)


def sampler_options(sets: tuple[str, ...]) -> dict:
    """`--set sample.KEY=VALUE` arguments as {KEY: VALUE} (their names and types are checked once the sampler is known)."""
    options = {}
    for text in sets:
        key, value = parse_override(text)
        section, _, name = key.partition(".")
        if section != "sample" or not name or "." in name:
            raise ValueError(f"--set {text!r}: expected sample.KEY=VALUE, a sampler option (e.g. sample.order=3)")
        if name in ("sampler", "steps", "n"):
            raise ValueError(f"--set {text!r}: use --{name}")
        options[name] = value
    return options


def _option_flags(options: dict) -> dict[str, str]:
    """The sampler's argument names of `options` (and steps) -> their flags, for `user_errors`."""
    return {"steps": "--steps", **{k: f"--set sample.{k}" for k in options}}


def steps_note(sampler: str, steps: int, options: dict) -> str | None:
    """One line when `sampler` does not take --steps as its number of steps (its NFE is not a function of them)."""
    info = SAMPLERS[sampler]
    if info.nfe(steps, **options) is not None:
        return None
    if info.kind == "ode":
        keys = ", ".join(f"sample.{k}" for k in info.option_defaults())
        return f"--steps {steps}: not used by {sampler}, an adaptive solver that chooses its own steps (options: {keys})"
    if "dt" in options:
        return f"--steps {steps}: not used, sample.dt = {options['dt']} sets the step of {sampler}"
    return f"--steps {steps}: the step size of {sampler}; the score evaluations per step are the solver's"


def _plan(sampler: str | None, steps: int | None, options: dict, steps_file: str | None, defaults: dict,
          model_name: str, run: tuple[str, str] | None = None) -> tuple[str, dict]:
    """(the sampler, the keywords of `sde.sample` besides it): --steps-file's fit, or the sampler (default
    `defaults`) at --steps with a grid stored in the `run` (its directory and checkpoint file), and the options."""
    if steps_file is not None:
        sampler, kw = fitted_from_file(steps_file, sampler, steps, model_name)
    else:
        sampler = sampler or defaults["sampler"]
        kw = None
    try:
        check_sampler_options(sampler, options)
    except TypeError as e:
        raise ValueError(f"--set: {e}") from None
    if kw is None:
        note = steps_note(sampler, steps, options) if steps is not None else None
        if note:
            click.echo(note)
        steps = steps or defaults["steps"]
        kw = stored_steps(*run, sampler, steps) if run is not None else {"steps": steps}
    return sampler, {**kw, **options}


@click.command()
@model_options
@click.option("--list-configs", is_flag=True, is_eager=True, expose_value=False, callback=_list_configs,
              help="List the score_sde presets and exit.")
@click.option("--sampler", type=click.Choice(names("sampler")), show_default="the run's sampler; deis (pretrained)",
              help=_sampler_help())
@click.option("--steps", type=click.IntRange(min=1), show_default="the run's sample.steps; 20 (pretrained)",
              help="Sampler steps.")
@click.option("--set", "sets", multiple=True, metavar="sample.KEY=VALUE", help=_options_help())
@click.option("--list-samplers", is_flag=True, is_eager=True, expose_value=False, callback=_list_samplers,
              help="List the samplers (kind, NFE, options and their defaults) and exit.")
@click.option("--steps-file", type=click.Path(dir_okay=False), metavar="FILE.json",
              help="A time grid fitted by optimize-steps --out: its sampler, steps and options.")
@click.option("--n", "n", type=click.IntRange(min=1), show_default="the run's sample.n (4000 for 2-D data, 64 for "
              "images); 64 for a pretrained model; 16 for a sequence run",
              help="Number of samples.")
@click.option("--out", type=click.Path(dir_okay=False), metavar="FILE",
              help="Output: .npy (the array; pretrained image models: in [0, 1]) or .png (2-D scatter or image "
                   "grid); a sequence run prints its samples, or writes .txt (one per line) or .npy (token ids).")
@click.option("--label", metavar="CLASS",
              help="Class to generate, an index or a class name (a model trained with model.num_classes).")
@click.option("--guidance", "w", type=click.FloatRange(min=0), show_default="1 (conditional) with --label or --prompt",
              help="Classifier-free guidance weight w: (1 - w) unconditional + w conditional score.")
@click.option("--negative-prompt", metavar="TEXT",
              help="Text models: the unconditional branch of guidance (default: the empty prompt).")
@click.option("--guidance-rescale", type=click.FloatRange(0, 1), show_default="0 (off)",
              help="Guidance rescale phi (Lin et al. 2024, arXiv:2305.08891): the guided prediction's std rescaled "
                   "to the conditional one's, mixed by phi (0.7 suggested).")
@click.option("--known", metavar="NAME|PATH",
              help="Inpainting: data whose known entries are kept (dataset name or path, as for train --data).")
@click.option("--mask", metavar="SPEC|FILE",
              help="Inpainting: known entries of --known: top, bottom, left, right, center (images), random:P, "
                   "dims:I,J (points), or a .npy of 0/1 (1 = known) broadcastable to the data.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@device_option
@click.option("--raw", is_flag=True, help="Use the raw weights instead of the EMA weights.")
@click.option("--prompt", "prompts", multiple=True, metavar="TEXT",
              help="Text models (trained on captions): the prompt to draw --n samples of; repeat it for a grid "
                   "of prompts (rows) x samples, guided by --guidance. Sequence runs: text the samples start "
                   "with (fixed; the rest is generated).")
@click.option("--mask-char", metavar="C", help="Sequence runs: positions of --prompt marked C are filled in.")
@click.option("--temperature", type=click.FloatRange(min=0), show_default="the run's discrete.temperature",
              help="Sequence runs: sampling temperature (0: argmax).")
@click.option("--remasking", type=click.Choice(["entropy", "low_confidence", "margin", "random"]),
              show_default="the run's", help="Sequence runs, llada sampler: which predictions are kept each step.")
@click.option("--order-temperature", type=click.FloatRange(min=0), show_default="the run's",
              help="Sequence runs, llada sampler: Gumbel noise on the reveal order (0: sorted).")
@click.option("--eta", type=click.FloatRange(min=0), show_default="the run's discrete.eta",
              help="Sequence runs, remdm sampler: remasking strength.")
@click.option("--remdm-schedule", type=click.Choice(["cap", "rescale", "conf"]), show_default="the run's",
              help="Sequence runs, remdm sampler: sigma_t = min(eta, sigma_max) | eta sigma_max | by confidence.")
@click.option("--block-length", type=click.IntRange(min=0), show_default="the run's",
              help="Sequence runs, llada sampler: semi-autoregressive block length (0: one block).")
@click.option("--cascade", "cascade_runs", multiple=True, metavar="SR_RUN",
              help="Cascade: super-resolve --checkpoint's samples by this super-resolution run (trained with "
                   "model.image_shape); repeat for more stages, in order. The .png shows each stage's output beside "
                   "the next. Stages sample with dpm_solver at 20 steps (euler_maruyama at 50 for a stage that predicts "
                   "eps) unless --sampler/--steps say otherwise.")
@click.option("--low-res", metavar="DIR|FILE|NAME",
              help="Super-resolve these images with --checkpoint (a super-resolution run): an image folder, an "
                   ".npy/.npz of (N, C, h, w) in the model's data range, or a dataset name; --n takes the first N.")
@click.option("--aug-level", "aug_levels", multiple=True, type=click.FloatRange(min=0), metavar="S",
              show_default="0.2 with --cascade, 0 with --low-res",
              help="Noise-conditioning augmentation level s of the low-resolution condition (a time of the SDE in "
                   "[0, T]; CDM, arXiv:2106.15282): one, or one per --cascade.")
@click.option("--truncated", is_flag=True,
              help="--cascade: stop each chain at s and condition the next stage on its x_s (CDM's truncated "
                   "augmentation; the stages must share the SDE) instead of re-noising its output.")
@click.option("--n-per", type=click.IntRange(min=1), show_default="1",
              help="--low-res: super-resolutions per input image.")
@click.option("--autoencoder", metavar="RUN|DIR", show_default="the one the run recorded",
              help="A latent model's autoencoder, if it moved (its weights must be the recorded ones).")
@click.option("--init-image", metavar="IMG|DIR|NPY",
              help="Image-to-image (SDEdit): guide images (a file, a folder, or a .npy/.npz in the model's data "
                   "range), perturbed to --strength and sampled back; --n cycles them.")
@click.option("--strength", type=float, show_default="0.5 with --init-image",
              help="SDEdit: in [0, 1], the time t0 = eps + strength (T - eps) the guides are perturbed to "
                   "(0 keeps them, 1 samples afresh); --steps default: strength x the run's steps.")
@allow_unverified_option
def sample(checkpoint, config, sampler, steps, sets, steps_file, n, out, label, w, negative_prompt, guidance_rescale,
           known, mask, seed, device, raw, prompts, mask_char, temperature, remasking, order_temperature, eta,
           remdm_schedule, block_length, cascade_runs, low_res, aug_levels, truncated, n_per, autoencoder,
           init_image, strength,
           allow_unverified):
    """Draw samples from a trained model, optionally of one class (guided) or completing known data;
    from a sequence run (task masked / autoregressive), texts, optionally after or around a --prompt.

    \b
    Examples:
      scoresde sample --checkpoint runs/moons --out moons.png
      scoresde sample --checkpoint runs/digits --sampler dpm_solver --steps 20 --n 64 --out digits.png
      scoresde sample --checkpoint runs/digits --sampler deis --steps 10 --set sample.order=3 \\
                      --set sample.corrector=true --n 64 --out deis.png
      scoresde sample --checkpoint runs/cond --label 3 --guidance 2 --out threes.png
      scoresde sample --checkpoint runs/captions --prompt "three left of eight" \\
                      --prompt "one left of two" --guidance 4 --n 8 --out grid.png
      scoresde sample --checkpoint runs/digits --known digits --mask top --n 16 --out fill.png
      scoresde sample --checkpoint runs/digits --init-image guides.npy --strength 0.5 --out edits.png
      scoresde sample --checkpoint checkpoint_26.pth --config ve/cifar10_ncsnpp_continuous \\
                      --sampler deis --steps 20 --n 64 --out grid.png
      scoresde sample --checkpoint runs/base8 --cascade runs/sr32 --aug-level 0.2 --n 16 --out grid.png
      scoresde sample --checkpoint runs/sr32 --low-res small.npy --n-per 4 --out big.png
      scoresde sample --list-configs
      scoresde sample --checkpoint runs/sums --sampler llada --steps 16 --prompt "12+34=" --n 4
    """
    with user_errors(MODEL_FLAGS):
        options = sampler_options(sets)
        if checkpoint_task(checkpoint) in SEQUENCE_TASKS:
            _refuse({"--label": label, "--guidance": w, "--known": known, "--mask": mask, "--set": sets or None,
                     "--steps-file": steps_file, "--negative-prompt": negative_prompt,
                     "--guidance-rescale": guidance_rescale, "--cascade": cascade_runs or None, "--low-res": low_res},
                    "an option of score models; this checkpoint is a sequence model")
            if len(prompts) > 1:
                raise ValueError(f"--prompt: a sequence run takes one prompt, found {len(prompts)}")
            prompt = prompts[0] if prompts else None
            for line in sample_tokens(checkpoint, sampler=sampler, steps=steps, n=n, out=out, seed=seed,
                                      device=device, raw=raw, prompt=prompt, mask_char=mask_char,
                                      temperature=temperature, remasking=remasking, block_length=block_length,
                                      verify=not allow_unverified, eta=eta, remdm_schedule=remdm_schedule,
                                      order_temperature=order_temperature):
                click.echo(line)
            return
        _refuse({"--mask-char": mask_char, "--temperature": temperature,
                 "--remasking": remasking, "--block-length": block_length, "--eta": eta,
                 "--remdm-schedule": remdm_schedule, "--order-temperature": order_temperature},
                "an option of sequence runs (task masked / autoregressive)")
        _check_out(out)
        if cascade_runs or low_res is not None:
            click.echo(_super_resolution(checkpoint, config, allow_unverified, cascade_runs, low_res, n, n_per, out,
                                         aug_levels, truncated, sampler, steps, options, label, w, seed, device, raw,
                                         autoencoder, list(prompts), negative_prompt,
                                         {"--known": known, "--mask": mask, "--steps-file": steps_file,
                                          "--guidance-rescale": guidance_rescale,
                                          "--init-image": init_image, "--strength": strength}))
            return
        _refuse({"--aug-level": aug_levels or None, "--truncated": truncated or None, "--n-per": n_per},
                "expected --cascade or --low-res too (super-resolution options)")
        guidance = Guidance(label, list(prompts), w, negative_prompt, guidance_rescale)
        if (known is None) != (mask is None):
            raise ValueError("--known/--mask: inpainting needs both (the data and which of its entries are known)")
        if known is not None:
            _refuse({"--set": sets or None, "--steps-file": steps_file, "--prompt": prompts or None},
                    "not available with --known (inpainting runs the predictor-corrector steps of scoresde.impute)")
        if init_image is None and strength is not None:
            raise ValueError("--strength: sets how far SDEdit perturbs --init-image; give --init-image too")
        source = ModelSource.parse(checkpoint, config, verify=not allow_unverified)
        if init_image is not None:
            strength = check_strength(strength)
            _refuse({"--known": known, "--steps-file": steps_file}, "not available with --init-image (SDEdit)")
            if source.pretrained:
                raise ValueError("--init-image: image-to-image on the command line takes a scoresde run; use "
                                 "scoresde.sdedit in Python for a pretrained model")
            n = sample_img2img(source, init_image, strength, n, out, sampler, steps, options, guidance, seed, device,
                               raw, autoencoder)
            click.echo(f"wrote {n} SDEdit samples (strength {strength:g}) to {out}")
            return
        if source.pretrained:
            if label is not None or known is not None:
                raise ValueError(f"--{'label' if label is not None else 'known'}: not available for a pretrained "
                                 "model on the command line (use scoresde.impute / guidance in Python)")
            n = _sample_pretrained(source, n, out, sampler, steps, options, steps_file, guidance, seed, device, raw)
            click.echo(f"wrote {n} samples in [0, 1] to {out}"
                       + (f" ({len(prompts)} prompts x {n // len(prompts)})" if prompts else ""))
            return
        n = _sample_run(source, n, out, sampler, steps, options, steps_file, guidance, known, mask, seed, device,
                        raw, autoencoder)
    click.echo(f"wrote {n} samples to {out}" + (f" ({len(prompts)} prompts x {n // len(prompts)})" if prompts else ""))


def _super_resolution(checkpoint, config, allow_unverified, cascade_runs, low_res, n, n_per, out, aug_levels, truncated,
                      sampler, steps, options, label, w, seed, device, raw, autoencoder, prompts, negative_prompt,
                      others) -> str:
    """--cascade (a base run and super-resolution stages) or --low-res (a user's images, with a prompt for a
    text-conditional upscaler): scoresde/cli/cascade.py."""
    _refuse(others, "not available with --cascade / --low-res")
    if cascade_runs and low_res is not None:
        raise ValueError("--low-res: super-resolves given images with --checkpoint; --cascade samples the images "
                         "first: expected one of them, found both")
    source = ModelSource.parse(checkpoint, config, verify=not allow_unverified)
    if low_res is not None:
        _refuse({"--truncated": truncated or None}, "a --cascade option (stopping the previous stage's chain)")
        return sample_low_res(source, low_res, n=n, n_per=n_per, out=out, aug_levels=aug_levels, sampler=sampler,
                              steps=steps, options=options, label=label, w=w, seed=seed, device=device, raw=raw,
                              autoencoder=autoencoder, prompts=prompts, negative_prompt=negative_prompt)
    _refuse({"--n-per": n_per, "--autoencoder": autoencoder, "--prompt": prompts or None,
             "--negative-prompt": negative_prompt}, "a --low-res option")
    return sample_cascade(source, list(cascade_runs), n=n, out=out, aug_levels=aug_levels, truncated=truncated,
                          sampler=sampler, steps=steps, options=options, label=label, w=w, seed=seed, device=device,
                          raw=raw)


def _refuse(flags: dict[str, object], why: str) -> None:
    """The first of `flags` that was given is an error: `<flag>: <why>`."""
    given = [flag for flag, v in flags.items() if v is not None]
    if given:
        raise ValueError(f"{given[0]}: {why}")


def _check_out(out: str | None) -> None:
    """--out of a score model: a .npy or .png file in an existing directory."""
    if out is None:
        raise ValueError("--out: expected a .npy or .png file name for the samples, found none")
    if os.path.splitext(out)[1].lower() not in (".npy", ".png"):
        raise ValueError(f"--out {out!r}: expected a .npy or .png file name")
    if os.path.dirname(os.path.abspath(out)) and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise FileNotFoundError(f"--out {out!r}: the directory does not exist")


def _sample_pretrained(source: ModelSource, n: int | None, out: str, sampler: str | None, steps: int | None,
                       options: dict, steps_file: str | None, guidance: Guidance, seed: int, device: str,
                       raw: bool) -> int:
    """n samples (default 64; with prompts n of each, default 8) of a pretrained model to `out`: .npy in [0, 1]
    (score_sde's inverse scaler; [-1, 1] data otherwise; a latent model's decoded images), or a figure.
    Returns the number of samples written."""
    dev = resolve_device(device)
    model, sde = source.open(dev, ema=not raw)[:2]
    sampler, kw = _plan(sampler, steps, options, steps_file, _PRETRAINED_DEFAULTS, source.path)
    g = torch.Generator(dev).manual_seed(seed)
    rows, per_prompt = len(guidance.prompts), n or 8
    n = rows * per_prompt if rows else n or 64
    score, guided = guidance.score(model, {}, per_prompt)
    ae = getattr(model, "autoencoder", None)                   # a latent model (Stable Diffusion): decode

    def draw(b: int) -> torch.Tensor:
        with torch.no_grad(), user_errors(_option_flags(options)):
            x = sde.sample(score(b), b, sampler=sampler, generator=g, device=dev, progress=True, **kw)
            if ae is not None:
                x = ae.decode_all(x)
        return model.to_unit(x.cpu()) if hasattr(model, "to_unit") else (x.cpu() + 1) / 2
    shape = tuple(model.data_shape) if ae is None else (
        ae.image_channels, *(d * ae.downsample for d in model.data_shape[1:]))
    x = write_chunked(out, n, shape, draw)
    if x is not None:
        steps = kw["steps"] if "steps" in kw else len(kw["times"]) - 1
        save_samples(x * 2 - 1, out, f"{n} samples{guided}, {sampler}, {steps} steps"
                     + (", latent, decoded" if ae is not None else ""), nrow=per_prompt if rows else None,
                     prompts=guidance.prompts if rows else None)
    return n


def _sample_run(source: ModelSource, n: int, out: str, sampler: str | None, steps: int | None, options: dict,
                steps_file: str | None, guidance: Guidance, known: str | None, mask: str | None,
                seed: int, device: str, raw: bool, autoencoder: str | None) -> int:
    """n samples (default: the run's sample.n) of a scoresde run to `out`: of one class or, n of each, of the
    prompts (`guidance`), completing `known` with `mask`. Returns the number of samples written."""
    dev = resolve_device(device)
    model, sde, file, meta = source.open(dev, ema=not raw, autoencoder=autoencoder)
    cfg = meta["config"]
    rows, per_prompt = len(guidance.prompts), n or 8           # with prompts: n of each (default 8), a row each
    n = rows * per_prompt if rows else n or cfg["sample"]["n"]  # the run's draw size (fitted to its data)
    ae = getattr(model, "autoencoder", None)                   # a latent model: sample latents, decode
    if ae is not None and known is not None:
        raise ValueError("--known/--mask: inpainting is not supported for a latent model (the mask is on "
                         "pixels, the model works on its autoencoder's latents); sample without them")
    g = torch.Generator(dev).manual_seed(seed)
    score, guided = guidance.score(model, meta, per_prompt)
    title = f"{n} samples{guided}"
    inputs = {}
    with thread_policy(model.data_shape, dev, cfg.get("threads", 0)):
        if known is None:         # with a grid of RUN/steps/<sampler>-<NFE>.json, when made, or of --steps-file
            sampler, kw = _plan(sampler, steps, options, steps_file, cfg["sample"], file, (source.path, file))

            def draw(b: int) -> torch.Tensor:
                with user_errors(_option_flags(options)):     # a bad value: "--set sample.order: expected ..."
                    x = sde.sample(score(b), b, sampler=sampler, generator=g, device=dev, progress=True, **kw)
                return (ae.decode_all(x) if ae is not None else x).cpu()
            shape = tuple(model.data_shape) if ae is None else (
                ae.image_channels, *(d * ae.downsample for d in model.data_shape[1:]))
            x = write_chunked(out, n, shape, draw)
            if x is None:                                        # streamed to the .npy file
                return n
            title += f", {sampler}" + (", latent, decoded" if ae is not None else "")
        else:
            run_sampler = cfg["sample"]["sampler"]         # inpainting steps a predictor: the run's, else Euler-Maruyama
            sampler = sampler or (run_sampler if run_sampler in ("pc", *PREDICTORS) else "euler_maruyama")
            steps = steps or cfg["sample"]["steps"]
            x_known, m = _inpainting_inputs(known, mask, n, model, cfg, seed)
            x = _impute(sde, score(n), x_known.to(dev), m.to(dev), sampler, steps, g).cpu()
            inputs = {"known": x_known, "mask": m}
            title += f", inpainted ({mask}), {sampler}"
    save_samples(x, out, title, nrow=n // rows if rows else None, prompts=guidance.prompts if rows else None,
                 **inputs)
    return n


def write_chunked(out: str, n: int, shape: tuple[int, ...], draw) -> torch.Tensor | None:
    """Draw `n` samples of `shape` with `draw(b)` in batches of at most `sample_batch(shape)` (the same
    generator runs on, so n up to one batch is one call): a .npy `out` is streamed chunk by chunk (memory
    bounded by one batch, None returned); for a figure the samples are returned, refused first when they
    would not fit the memory budget."""
    b = sample_batch(shape)
    if out.lower().endswith(".npy"):
        if b < n:
            click.echo(f"drawing {n} samples in {-(-n // b)} batches of {b}", err=True)
        save_npy_chunks(out, (n, *shape), np.float32, (draw(min(b, n - i)).float().numpy() for i in range(0, n, b)))
        return None
    check_memory(n * math.prod(shape) * 4, f"--n {n}: a figure of {n} samples of shape {shape} (a .npy --out is "
                 "streamed in batches)")
    return torch.cat([draw(min(b, n - i)) for i in range(0, n, b)])


def _inpainting_inputs(known: str, mask: str, n: int, model, cfg: dict, seed: int):
    """(x_known (n, *D), bool mask (n, *D)) from --known and --mask."""
    shape = tuple(model.data_shape)
    d = cfg["data"]
    ds = load_dataset(known, size=n, seed=seed + 1, normalize=d["normalize"], image_size=d.get("image_size", 0),
                      labels=False)
    if tuple(ds.shape) != shape:
        raise ValueError(f"--known {known!r}: examples of shape {tuple(ds.shape)}, the model was trained on {shape}")
    x_known = ds.x[torch.arange(n) % len(ds.x)].float()           # cycles when --known has fewer than n
    if mask.endswith(".npy"):
        m = load_mask(mask, x_known.shape, "--mask")     # header first: objects, shape, memory budget
    else:
        m = make_mask(mask, n, shape, generator=torch.Generator().manual_seed(seed + 2))
    return x_known, m


def _impute(sde, score, x_known, m, sampler: str, steps: int, g):
    """Imputation with the run's predictor: pc = reverse diffusion + Langevin, or one predictor alone."""
    if sampler not in ("pc", *PREDICTORS):
        raise ValueError(f"--sampler: inpainting runs predictor-corrector sampling; expected pc or one of "
                         f"{', '.join(PREDICTORS)}, found {sampler!r}")
    pred, corr = ("reverse_diffusion", "langevin") if sampler == "pc" else (sampler, "none")
    return impute(sde, score, x_known, m, predictor=pred, corrector=corr, steps=steps, generator=g, progress=True)
