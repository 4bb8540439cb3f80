"""The `scoresde` command line: train, sample, likelihood, evaluate.

Each command only builds a config (defaults <- TOML file <- flags) and calls the library
(`scoresde.train`, `scoresde.load`, `sde.sample`, `likelihood.dataset_likelihood`). User errors
(bad flags, paths, data, configs, checkpoints) print one `Error: ...` line and exit 1.
"""
from __future__ import annotations

import io
import os
import sys
from typing import Any

import click

from scoresde.training.config import DEFAULTS, parse_override
from scoresde._common.toml import to_toml
from scoresde.cli.latent import train_autoencoder
from scoresde.cli.measure import evaluate, likelihood
from scoresde.cli.steps import optimize_steps_command
from scoresde.cli.common import ALLOW_UNVERIFIED_HELP, _CONFIG_HELP, _pretrained_config, _user_errors


__all__ = ["cli", "main"]




class _Group(click.Group):
    """A click group whose errors are one line on stderr (no usage block, never a traceback)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            click.echo(f"Error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


def _names(kind: str) -> list[str]:
    if kind == "sde":
        from scoresde.sde.base import SDES
        return list(SDES)
    if kind == "model":
        from scoresde.models.nets import list_models
        return list_models()
    from scoresde.samplers.masked import list_discrete_samplers
    from scoresde.samplers.core import list_samplers
    return list_samplers() + list_discrete_samplers()       # the discrete ones: task masked


def _sampler_help() -> str:
    """`sample --sampler`'s help: the samplers grouped by the kind their records declare (`SamplerInfo`)."""
    from scoresde.samplers.masked import list_discrete_samplers
    from scoresde.samplers.core import SAMPLERS
    kinds: dict[str, list[str]] = {}
    for r in SAMPLERS.records():
        kinds.setdefault(r.kind, []).append(r.name)
    return ("; ".join(f"{kind}: {', '.join(names)}" for kind, names in kinds.items())
            + f"; sequence runs: {', '.join(list_discrete_samplers())}.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="scoresde", message="%(prog)s %(version)s")
def cli():
    """Score-based generative modelling through SDEs (Song et al. 2021, arXiv:2011.13456).

    \b
    Examples:
      scoresde train                                  # the default 2-D job, about 2 minutes on 2 cores
      scoresde train --data moons --steps 4000 --out runs/moons
      scoresde train --config configs/digits.toml
      scoresde sample --checkpoint runs/moons --sampler ode --out moons.png
      scoresde train --data mixture --set model.num_classes=auto --out runs/cond
      scoresde sample --checkpoint runs/cond --label 3 --guidance 2 --out class3.png
      scoresde likelihood --checkpoint runs/moons --data moons
      scoresde evaluate runs/digits --json quality.json
      scoresde train --task masked --data brackets --out runs/brackets    # masked diffusion on tokens
      scoresde sample --checkpoint runs/brackets --sampler llada --steps 64 --n 8
      scoresde train-autoencoder --data digits32 --out runs/ae     # latent diffusion: the autoencoder,
      scoresde train --autoencoder runs/ae --data digits32 --model ddpm_unet --out runs/latent   # then its latents
    """


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="TOML config; flags override it.")
@click.option("--task", type=click.Choice(["score", "masked", "autoregressive"]), show_default=DEFAULTS["task"],
              help="What is trained: a score model, a masked diffusion language model, or its autoregressive "
                   "baseline (both on tokens, options in [discrete]).")
@click.option("--data", metavar="NAME|PATH", show_default=DEFAULTS["data"]["name"],
              help="Built-in dataset (mixture, moons, swissroll, checkerboard, rings, digits, digits32), a .npy/.npz "
                   "array (N, *D) or an image folder; for --task masked: a language (brackets, sums), a text "
                   "file or a .npy array of token ids (N, L).")
@click.option("--sde", type=click.Choice(_names("sde")), show_default=DEFAULTS["sde"]["name"], help="Forward SDE.")
@click.option("--model", type=click.Choice(_names("model")), show_default=DEFAULTS["model"]["name"],
              help="Score network.")
@click.option("--steps", type=click.IntRange(min=1), show_default=str(DEFAULTS["train"]["steps"]),
              help="Training steps (the total, also when resuming).")
@click.option("--batch-size", type=click.IntRange(min=1), show_default=str(DEFAULTS["train"]["batch_size"]),
              help="Batch size per process.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), show_default=str(DEFAULTS["train"]["lr"]),
              help="Adam learning rate (after warm-up).")
@click.option("--sampler", type=click.Choice(_names("sampler")), show_default=DEFAULTS["sample"]["sampler"],
              help="Sampler for the sample plots.")
@click.option("--seed", type=click.IntRange(min=0), show_default="0", help="Seed of weights, data order and noise.")
@click.option("--out", type=click.Path(file_okay=False), metavar="DIR", show_default="runs/<name or timestamp>",
              help="Run directory.")
@click.option("--name", help="Run name (run directory runs/NAME).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), show_default="auto")
@click.option("--autoencoder", metavar="RUN|DIR", show_default="none (pixel space)",
              help="Latent diffusion: train on the scaled latents of this autoencoder (a train-autoencoder run "
                   "or a diffusers AutoencoderKL directory); samples are decoded to images.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any config value, e.g. --set train.ema_decay=0.9999 --set model.width=256 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@click.option("--allow-unverified", is_flag=True, help=ALLOW_UNVERIFIED_HELP)
@click.option("--progress/--no-progress", default=None, help="Progress bar with the loss.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")
@click.option("--debug-dump-weights", is_flag=True, hidden=True)
def train(config_file, task, data, sde, model, steps, batch_size, lr, sampler, seed, out, name, device, autoencoder,
          sets, resume, allow_unverified, progress, dry_run, debug_dump_weights):
    """Train a model (a score model; --task masked: a masked diffusion LM); writes config.toml, checkpoints,
    log.csv, loss.png and samples.png.

    \b
    Examples:
      scoresde train --data digits --model ddpm_unet --steps 1500 --out runs/digits
      scoresde train --data points.npy --sde subvp --set model.width=256
      scoresde train --out runs/digits --resume --steps 6000     # continue to 6000 steps
      torchrun --nproc-per-node=2 -m scoresde train --data moons  # data-parallel
      scoresde train --task masked --data brackets --out runs/brackets
      scoresde train --task masked --data poems.txt --set model.width=256 --out runs/poems
    """
    from scoresde._common.toml import load_toml
    from scoresde.training.config import set_dotted
    from scoresde.training.api import resolve_config, train as run
    flags = {"task": task, "data.name": data, "sde.name": sde, "model.name": model, "train.steps": steps,
             "train.batch_size": batch_size, "train.lr": lr, "sample.sampler": sampler, "seed": seed,
             "name": name, "device": device, "train.progress": progress, "autoencoder": autoencoder}
    with _user_errors():
        cfg: dict[str, Any] = load_toml(config_file) if config_file else {}
        for key, value in [*((k, v) for k, v in flags.items() if v is not None), *map(parse_override, sets)]:
            set_dotted(cfg, key, value)
        if dry_run:
            resolved = resolve_config(cfg, out=out, resume=resume, verify=not allow_unverified)  # checks the data
            click.echo(to_toml(resolved), nl=False)
            return 0
        result = run(cfg, out=out, resume=resume, dump_weights=debug_dump_weights, verify=not allow_unverified)
    if result.interrupted:
        click.echo(f"interrupted by {result.interrupted} at step {result.step}; checkpoint {result.checkpoint}\n"
                   f"resume with: scoresde train --out {result.run_dir} --resume", err=True)
        return 130 if result.interrupted == "SIGINT" else 0
    if result.rank != 0:           # the other ranks of a torchrun job stay quiet
        return 0
    m = result.metrics
    extra = f", mode-weight TV {m['mode_weight_tv']:.3f}" if "mode_weight_tv" in m else ""
    extra += f", {100 * m['valid_fraction']:.1f}% valid samples" if "valid_fraction" in m else ""
    loss = f"{result.loss:.4f}" if result.loss is not None else "n/a"
    click.echo(f"trained {result.step} steps in {result.seconds:.1f} s, final loss {loss}, "
               f"{result.skipped} skipped{extra}\nrun directory: {result.run_dir}\n"
               f"checkpoint:    {result.checkpoint}\nsamples plot:  {result.samples_path}")
    return 0


def _write_array(path: str, x) -> None:
    import numpy as np
    from scoresde._common.files import atomic_write_bytes
    buf = io.BytesIO()
    np.save(buf, x.numpy())
    atomic_write_bytes(path, buf.getvalue())


def _list_configs(ctx, _param, value):
    """--list-configs: the score_sde presets (and the refused official configs), then exit."""
    if not value or ctx.resilient_parsing:
        return
    from scoresde.pretrained.score_sde import describe_configs
    click.echo("\n".join(describe_configs()))
    ctx.exit(0)


_PRETRAINED_DEFAULTS = {"sampler": "deis", "steps": 20}    # for models without a run config


def _to_unit(model, x):
    """Samples of a pretrained model in [0, 1] (score_sde's inverse scaler; [-1, 1] data otherwise)."""
    return model.to_unit(x) if hasattr(model, "to_unit") else (x + 1) / 2


@cli.command()
@click.option("--checkpoint", required=True, type=click.Path(), metavar="DIR|FILE",
              help="Run directory (its latest checkpoint) or checkpoint file; a score_sde checkpoint_N.pth "
                   "(with --config) or a diffusers save_pretrained directory.")
@click.option("--config", metavar="PRESET|FILE", help=_CONFIG_HELP)
@click.option("--list-configs", is_flag=True, is_eager=True, expose_value=False, callback=_list_configs,
              help="List the score_sde presets and exit.")
@click.option("--sampler", type=click.Choice(_names("sampler")), show_default="the run's sampler; deis (pretrained)",
              help=_sampler_help())
@click.option("--steps", type=click.IntRange(min=1), show_default="the run's sample.steps; 20 (pretrained)",
              help="Sampler steps.")
@click.option("--n", "n", type=click.IntRange(min=1), show_default="1000; 16 for a sequence run",
              help="Number of samples.")
@click.option("--out", type=click.Path(dir_okay=False), metavar="FILE",
              help="Output: .npy (the array; pretrained image models: in [0, 1]) or .png (2-D scatter or image "
                   "grid); a sequence run prints its samples, or writes .txt (one per line) or .npy (token ids).")
@click.option("--label", metavar="CLASS",
              help="Class to generate, an index or a class name (a model trained with model.num_classes).")
@click.option("--guidance", "w", type=click.FloatRange(min=0), show_default="1 (conditional) with --label",
              help="Classifier-free guidance weight w: (1 - w) unconditional + w conditional score.")
@click.option("--known", metavar="NAME|PATH",
              help="Inpainting: data whose known entries are kept (dataset name or path, as for train --data).")
@click.option("--mask", metavar="SPEC|FILE",
              help="Inpainting: known entries of --known: top, bottom, left, right, center (images), random:P, "
                   "dims:I,J (points), or a .npy of 0/1 (1 = known) broadcastable to the data.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--raw", is_flag=True, help="Use the raw weights instead of the EMA weights.")
@click.option("--prompt", help="Sequence runs: text the samples start with (fixed; the rest is generated).")
@click.option("--mask-char", metavar="C", help="Sequence runs: positions of --prompt marked C are filled in.")
@click.option("--temperature", type=click.FloatRange(min=0), show_default="the run's discrete.temperature",
              help="Sequence runs: sampling temperature (0: argmax).")
@click.option("--remasking", type=click.Choice(["low_confidence", "random"]), show_default="the run's",
              help="Sequence runs, llada sampler: which predictions are kept each step.")
@click.option("--block-length", type=click.IntRange(min=0), show_default="the run's",
              help="Sequence runs, llada sampler: semi-autoregressive block length (0: one block).")
@click.option("--autoencoder", metavar="RUN|DIR", show_default="the one the run recorded",
              help="A latent model's autoencoder, if it moved (its weights must be the recorded ones).")
@click.option("--allow-unverified", is_flag=True, help=ALLOW_UNVERIFIED_HELP)
def sample(checkpoint, config, sampler, steps, n, out, label, w, known, mask, seed, device, raw, prompt, mask_char,
           temperature, remasking, block_length, autoencoder, allow_unverified):
    """Draw samples from a trained model, optionally of one class (guided) or completing known data;
    from a sequence run (task masked / autoregressive), texts, optionally after or around a --prompt.

    \b
    Examples:
      scoresde sample --checkpoint runs/moons --out moons.png
      scoresde sample --checkpoint runs/digits --sampler dpm_solver --steps 20 --n 64 --out digits.png
      scoresde sample --checkpoint runs/cond --label 3 --guidance 2 --out threes.png
      scoresde sample --checkpoint runs/digits --known digits --mask top --n 16 --out fill.png
      scoresde sample --checkpoint checkpoint_26.pth --config ve/cifar10_ncsnpp_continuous \\
                      --sampler deis --steps 20 --n 64 --out grid.png
      scoresde sample --list-configs
      scoresde sample --checkpoint runs/sums --sampler llada --steps 16 --prompt "12+34=" --n 4
    """
    import torch
    from scoresde.runs.checkpoint import find_checkpoint, read_checkpoint
    from scoresde.runs.load import load
    from scoresde._common.distributed import resolve_device
    from scoresde.models.guidance import classifier_free_score
    from scoresde.runs.plots import inpainting_grid, is_image_shape, plot_samples
    from scoresde._common.threads import thread_policy
    from scoresde.cli.tokens import sample_tokens, task_of
    seq = {"--prompt": prompt, "--mask-char": mask_char, "--temperature": temperature, "--remasking": remasking,
           "--block-length": block_length}
    with _user_errors():
        if task_of(checkpoint) in ("masked", "autoregressive"):
            for flag, v in (("--label", label), ("--guidance", w), ("--known", known), ("--mask", mask)):
                if v is not None:
                    raise ValueError(f"{flag}: an option of score models; this checkpoint is a sequence model")
            for line in sample_tokens(checkpoint, sampler=sampler, steps=steps, n=n, out=out, seed=seed,
                                      device=device, raw=raw, prompt=prompt, mask_char=mask_char,
                                      temperature=temperature, remasking=remasking, block_length=block_length,
                                      verify=not allow_unverified):
                click.echo(line)
            return
        given = [k for k, v in seq.items() if v is not None]
        if given:
            raise ValueError(f"{given[0]}: an option of sequence runs (task masked / autoregressive)")
        n = n or 1000
        if out is None:
            raise ValueError("--out: expected a .npy or .png file name for the samples, found none")
        ext = os.path.splitext(out)[1].lower()
        if ext not in (".npy", ".png"):
            raise ValueError(f"--out {out!r}: expected a .npy or .png file name")
        if os.path.dirname(os.path.abspath(out)) and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            raise FileNotFoundError(f"--out {out!r}: the directory does not exist")
        if w is not None and label is None:
            raise ValueError("--guidance: expected --label too (the class to guide towards), found none")
        if (known is None) != (mask is None):
            raise ValueError("--known/--mask: inpainting needs both (the data and which of its entries are known)")
        pretrained, config = _pretrained_config(checkpoint, config)
        if pretrained:
            if label is not None or known is not None:
                raise ValueError(f"--{'label' if label is not None else 'known'}: not available for a pretrained "
                                 "model on the command line (use scoresde.impute / guidance in Python)")
            from scoresde.pretrained import load_any
            dev = resolve_device(device)
            model, sde = load_any(checkpoint, config=config, ema=not raw, device=dev)
            sampler = sampler or _PRETRAINED_DEFAULTS["sampler"]
            steps = steps or _PRETRAINED_DEFAULTS["steps"]
            g = torch.Generator(dev).manual_seed(seed)
            with torch.no_grad():
                x = sde.sample(model, n, sampler=sampler, steps=steps, generator=g, device=dev, progress=True)
            x = _to_unit(model, x.cpu())
            if ext == ".npy":
                _write_array(out, x)
            else:
                plot_samples(x * 2 - 1, out, title=f"{n} samples, {sampler}, {steps} steps")
            click.echo(f"wrote {n} samples in [0, 1] to {out}")
            return
        file = find_checkpoint(checkpoint)
        meta = read_checkpoint(file, verify=not allow_unverified)[1]
        cfg = meta["config"]
        dev = resolve_device(device)
        model, sde = load(file, ema=not raw, device=dev, autoencoder=autoencoder, verify=not allow_unverified)
        ae = getattr(model, "autoencoder", None)                   # a latent model: sample latents, decode
        if ae is not None and known is not None:
            raise ValueError("--known/--mask: inpainting is not supported for a latent model (the mask is on "
                             "pixels, the model works on its autoencoder's latents); sample without them")
        g = torch.Generator(dev).manual_seed(seed)
        score, title = model, f"{n} samples"
        if label is not None:
            y, name = _parse_label(label, model, meta)
            w = 1.0 if w is None else w                            # default: the plain conditional score
            score = classifier_free_score(model, y, w)
            title += f", class {name}, w = {w:g}"
        sampler = sampler or cfg["sample"]["sampler"]
        steps = steps or cfg["sample"]["steps"]
        with thread_policy(model.data_shape, dev, cfg.get("threads", 0)):
            if known is None:
                from scoresde.cli.steps import stored_steps  # RUN/steps/<sampler>-<NFE>.json, when made
                kw = stored_steps(checkpoint, file, sampler, steps)
                x = sde.sample(score, n, sampler=sampler, generator=g, device=dev, progress=True, **kw)
                x = (ae.decode_all(x) if ae is not None else x).cpu()
                title += f", {sampler}" + (", latent, decoded" if ae is not None else "")
            else:
                x_known, m = _inpainting_inputs(known, mask, n, model, cfg, seed)
                x = _impute(sde, score, x_known.to(dev), m.to(dev), sampler, steps, g).cpu()
                title += f", inpainted ({mask}), {sampler}"
        if ext == ".npy":
            _write_array(out, x)
        elif known is not None and is_image_shape(x.shape[1:]):   # images: each known row above its fills
            inpainting_grid(x_known, m, x, out, title=title + "; rows: known, filled")
        else:
            plot_samples(x, out, title=title)
    click.echo(f"wrote {n} samples to {out}")


def _parse_label(label: str, model, meta: dict) -> tuple[int, str]:
    """--label as a class index (or a class name of the training data) of a class-conditional model."""
    K = model.num_classes
    if K is None:
        raise ValueError("--label: expected a class-conditional model, found an unconditional one (train it with "
                         "--set model.num_classes=auto on labelled data)")
    classes = list(meta.get("data", {}).get("classes") or [])
    if label in classes:
        return classes.index(label), label
    if label.lstrip("-").isdigit() and 0 <= int(label) < K:
        return int(label), classes[int(label)] if int(label) < len(classes) else label
    names = f" or a class name ({', '.join(classes[:12])}{', ...' if len(classes) > 12 else ''})" if classes else ""
    raise ValueError(f"--label: expected a class index in [0, {K}){names}, found {label!r}")


def _inpainting_inputs(known: str, mask: str, n: int, model, cfg: dict, seed: int):
    """(x_known (n, *D), bool mask (n, *D)) from --known and --mask."""
    import numpy as np
    import torch
    from scoresde.data.datasets import load_dataset
    from scoresde.data.masks import make_mask
    shape = tuple(model.data_shape)
    d = cfg["data"]
    ds = load_dataset(known, size=n, seed=seed + 1, normalize=d["normalize"], image_size=d.get("image_size", 0),
                      labels=False)
    if tuple(ds.shape) != shape:
        raise ValueError(f"--known {known!r}: examples of shape {tuple(ds.shape)}, the model was trained on {shape}")
    x_known = ds.x[torch.arange(n) % len(ds.x)].float()           # cycles when --known has fewer than n
    if mask.endswith(".npy"):
        if not os.path.isfile(mask):
            raise FileNotFoundError(f"--mask {mask!r}: no such file")
        arr = np.load(mask, allow_pickle=False)
        if arr.dtype.kind not in "biuf" or not np.isin(arr, (0, 1)).all():
            raise ValueError(f"--mask {mask!r}: expected an array of 0/1 (1 = known), found other values")
        try:
            m = torch.from_numpy(arr != 0).expand(x_known.shape).clone()
        except RuntimeError:
            raise ValueError(f"--mask {mask!r}: expected a shape broadcastable to {tuple(x_known.shape)}, "
                             f"found {arr.shape}") from None
    else:
        m = make_mask(mask, n, shape, generator=torch.Generator().manual_seed(seed + 2))
    return x_known, m


def _impute(sde, score, x_known, m, sampler: str, steps: int, g):
    """Imputation with the run's predictor: pc = reverse diffusion + Langevin, or one predictor alone."""
    from scoresde.samplers.inpainting import impute
    predictors = ("euler_maruyama", "reverse_diffusion", "ancestral")
    if sampler not in ("pc", *predictors):
        raise ValueError(f"--sampler: inpainting runs predictor-corrector sampling; expected pc or one of "
                         f"{', '.join(predictors)}, found {sampler!r}")
    pred, corr = ("reverse_diffusion", "langevin") if sampler == "pc" else (sampler, "none")
    return impute(sde, score, x_known, m, predictor=pred, corrector=corr, steps=steps, generator=g, progress=True)


for _command in (likelihood, evaluate, train_autoencoder, optimize_steps_command):
    cli.add_command(_command)


def main(args: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=args, prog_name="scoresde")


if __name__ == "__main__":
    main()
