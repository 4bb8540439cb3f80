"""The bodies of `scoresde sample` and `scoresde likelihood` for sequence runs (tasks masked / autoregressive).

The commands dispatch here when the checkpoint's task is one of `SEQUENCE_TASKS`; these functions open the
model, check the options against it, call the library and return the lines to print.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any

import torch

from scoresde._common.distributed import resolve_device
from scoresde._common.files import atomic_write_bytes, save_npy
from scoresde.cli.common import ModelSource
from scoresde.data.tokenizer import OutOfVocabularyError
from scoresde.data.tokens import load_tokens
from scoresde.runs.plots import sample_metrics, metrics_summary

__all__ = ["SEQUENCE_TASKS", "sample_tokens", "likelihood_tokens"]


SEQUENCE_TASKS = ("masked", "autoregressive")
BYTE_HINT = ("; a model trained with --set discrete.tokenizer=byte reads any UTF-8 text (this one knows only the "
             "characters of its training text)")


def sample_tokens(checkpoint: str, *, sampler: str | None, steps: int | None, n: int | None, out: str | None,
                  prompt: str | None, mask_char: str | None, temperature: float | None, remasking: str | None,
                  block_length: int | None, seed: int, device: str, raw: bool, verify: bool = True,
                  eta: float | None = None, remdm_schedule: str | None = None,
                  order_temperature: float | None = None) -> list[str]:
    """Sample a sequence model; the texts (printed when `out` is None), or `out` written (.txt / .npy)."""
    if out is not None:
        ext = os.path.splitext(out)[1].lower()
        if ext not in (".txt", ".npy"):
            raise ValueError(f"--out {out!r}: a sequence model writes .txt (one sample per line) or .npy (token ids)")
        if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            raise FileNotFoundError(f"--out {out!r}: the directory does not exist")
    if mask_char is not None and (len(mask_char) != 1 or prompt is None):
        raise ValueError(f"--mask-char: expected one character marking positions of --prompt to fill, found "
                         f"{mask_char!r}{' without --prompt' if prompt is None else ''}")
    dev = resolve_device(device)
    model, process, _, meta = ModelSource(checkpoint, verify=verify).open(dev, ema=not raw)
    cfg = meta["config"]
    n = n or 16
    temperature = cfg["discrete"]["temperature"] if temperature is None else temperature
    g = torch.Generator(dev).manual_seed(seed)
    stats: dict[str, Any] = {}
    if process is None:                                           # autoregressive
        extra = {k: v for k, v in (("--sampler", sampler), ("--steps", steps), ("--remasking", remasking),
                                   ("--block-length", block_length), ("--mask-char", mask_char), ("--eta", eta),
                                   ("--remdm-schedule", remdm_schedule), ("--order-temperature", order_temperature))
                 if v is not None}
        if extra:
            raise ValueError(f"{', '.join(extra)}: an autoregressive model samples left to right; only --prompt, "
                             "--temperature, --n and --seed apply")
        with _vocabulary_hint(model):
            x = model.sample(n, prompt=prompt, temperature=temperature, generator=g, stats=stats, progress=True)
        how = "autoregressive"
    else:
        sampler = sampler or cfg["sample"]["sampler"]
        if sampler not in ("mdlm", "llada", "remdm"):
            raise ValueError(f"--sampler: a masked diffusion model samples with mdlm, llada or remdm, found {sampler!r}")
        D = cfg["discrete"]
        kw: dict[str, Any] = {}
        llada_opts = {"--remasking": remasking, "--block-length": block_length, "--order-temperature": order_temperature}
        remdm_opts = {"--eta": eta, "--remdm-schedule": remdm_schedule}
        for name, opts in (("llada", llada_opts), ("remdm", remdm_opts)):
            given = [k for k, v in opts.items() if v is not None]
            if given and sampler != name:
                raise ValueError(f"{'/'.join(given)}: options of the {name} sampler, found --sampler {sampler}")
        if sampler == "llada":
            kw = {"remasking": remasking or D["remasking"],
                  "block_length": D["block_length"] if block_length is None else block_length,
                  "order_temperature": D.get("order_temperature", 0.0) if order_temperature is None else order_temperature}
            if getattr(model, "block_size", 0) and not block_length:
                kw.pop("block_length")                           # a block diffusion model has its own blocks
        elif sampler == "remdm":
            kw = {"eta": D.get("eta", 0.1) if eta is None else eta,
                  "schedule": remdm_schedule or D.get("remdm_schedule", "cap")}
        steps = steps or cfg["sample"]["steps"]
        with _vocabulary_hint(model):
            x = model.sample(n, sampler=sampler, steps=steps, prompt=prompt, mask_char=mask_char,
                             temperature=temperature, generator=g, stats=stats, progress=True, **kw)
        how = f"{sampler}, {steps} steps" + (f", blocks of {model.block_size}" if getattr(model, "block_size", 0) else "")
    x = x.cpu()
    texts = model.decode(x)
    m = sample_metrics(model, x)
    summary = f"{n} samples ({how}, {stats.get('nfe', 0)} network calls, {stats.get('nfe_per_sequence', 0):.1f} per " \
              "sample)" + (
        f", {metrics_summary(m)}" if "valid_fraction" in m else "")
    if out is None:
        return [*texts, summary]
    if out.lower().endswith(".npy"):
        save_npy(out, x)
    else:
        atomic_write_bytes(out, "".join(t + "\n" for t in texts).encode())
    return [f"wrote {summary} to {out}"]


@contextlib.contextmanager
def _vocabulary_hint(model):
    """A character outside a character-level model's alphabet: the error says that a byte-level model reads any text,
    and names --prompt for the prompt."""
    try:
        yield
    except OutOfVocabularyError as e:
        msg = str(e).replace("prompt:", "--prompt:", 1) if str(e).startswith("prompt:") else str(e)
        byte = getattr(getattr(model, "tokenizer", None), "kind", None) == "byte"
        raise OutOfVocabularyError(msg + ("" if byte else BYTE_HINT)) from None


def likelihood_tokens(checkpoint: str, data: str, *, n: int, batch_size: int, draws: int, seed: int,
                      device: str, verify: bool = True) -> str:
    """The bound (masked) or the exact NLL (autoregressive) of held-out data, per token, as one line."""
    dev = resolve_device(device)
    model, process, _, meta = ModelSource(checkpoint, verify=verify).open(dev)
    D = meta["config"]["discrete"]
    tok = meta["tokens"]
    with _vocabulary_hint(model):
        ds = load_tokens(data, seq_len=model.seq_len, size=n, seed=seed + 1, tokenizer=D["tokenizer"],
                         text_mode=D["text_mode"], vocab_size=tok["vocab_size"], eos_id=D["eos_id"],
                         max_depth=D["max_depth"], digits=D["digits"], existing=model.tokenizer)
    if ds.vocab_size > model.vocab_size:
        raise ValueError(f"--data {data!r}: token ids up to {ds.vocab_size - 1}, the model knows {model.vocab_size}")
    x = ds.x[:n]
    t0 = time.perf_counter()
    if process is None:
        nats, kind = model.nll(x, batch_size=batch_size), "exact NLL"
    else:
        g = torch.Generator(dev).manual_seed(seed)
        nats = model.nelbo(x, draws=draws, batch_size=batch_size, generator=g)
        kind = f"NELBO bound, {draws} mask draws per sequence"
    nats = nats.double().cpu()
    mean, se = float(nats.mean()), float(nats.std() / math.sqrt(len(nats))) if len(nats) > 1 else 0.0
    return (f"{len(x)} sequences of {model.seq_len} tokens: {mean:.4f} +- {se:.4f} nats/token, "
            f"{mean / math.log(2):.4f} bits/token, perplexity {math.exp(mean):.3f} ({kind}, "
            f"{time.perf_counter() - t0:.1f} s)")
