"""Block-by-block sampling of block diffusion models (BD3-LM, Arriola et al. 2025, arXiv:2503.09573).

Blocks of `block_size` positions are generated left to right; within a block any masked sampler that calls
the denoiser on every row (`llada`, `remdm`; `mdlm` runs as `remdm` with eta = 0, i.e. MDLM ancestral steps
without its row-skipping cache) denoises the block given the clean blocks before it. The state of the
prefix is kept by a `state` object:

    logits = state.denoise(x_block, t, lo, hi)   # (B, hi - lo, V): block lo..hi-1 given the committed prefix
    state.commit(x_block, lo, hi)                 # the finished block joins the prefix
    state.select(rows)                            # keep these rows only (finished sequences leave the batch)

`BlockCache` of `scoresde.models.token_model` keeps the keys and values of the prefix (a KV cache: a
finished block is run once, together with the first denoising call of the next block, so the calls are
the denoising steps only); `RecomputeState` here re-runs any denoiser on the whole prefix (exact denoisers
in tests, or a network without a cache). With an `eos_id`, a row leaves the batch once a finished block holds
an EOS, so sequences end at any length; `stats` receives `nfe` (batched calls) and `nfe_per_sequence` (rows
evaluated / B, the calls each sequence cost).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from scoresde._common.validation import check_int
from scoresde.sde.block_masked import block_ranges
from scoresde.sde.masked import MaskedProcess
from scoresde.samplers.masked import DISCRETE_SAMPLERS


__all__ = ["RecomputeState", "sample_blocks", "split_steps"]


class RecomputeState:
    """The prefix of block sampling for any denoiser(x, t) over whole sequences of `length` tokens: each call
    evaluates (prefix, block, masks after) and returns the block's logits (no cache)."""

    def __init__(self, denoiser: Callable, n: int, length: int, mask_id: int, device=None):
        self.denoiser, self.mask_id = denoiser, mask_id
        self.x = torch.full((n, length), mask_id, dtype=torch.long, device=device)

    def denoise(self, xb: torch.Tensor, t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        z = self.x.clone()
        z[:, lo:hi] = xb
        z[:, hi:] = self.mask_id
        return self.denoiser(z, t)[:, lo:hi]

    def commit(self, xb: torch.Tensor, lo: int, hi: int) -> None:
        self.x[:, lo:hi] = xb

    def select(self, rows: torch.Tensor) -> None:
        self.x = self.x[rows]


def split_steps(steps: int, blocks: list[tuple[int, int]]) -> list[int]:
    """Steps per block, proportional to the block lengths (rounded cumulatively), at least one each."""
    length, start = blocks[-1][1], blocks[0][0]
    span = length - start
    cut = [round(steps * (hi - start) / span) for _, hi in blocks]
    return [max(1, c - p) for c, p in zip(cut, [0] + cut[:-1])]


def sample_blocks(state: Any, x: torch.Tensor, process: MaskedProcess, *, block_size: int, steps: int,
                  sampler: str = "llada", temperature: float = 1.0, eos_id: int | None = None,
                  generator: torch.Generator | None = None, stats: dict | None = None, progress: bool = False,
                  **options: Any) -> torch.Tensor:
    """(B, length) tokens: the masked positions of x generated block by block, `steps` in all (split over the
    blocks by length), each block by `sampler` with `options`; rows stop after a block holding `eos_id`
    (their later positions stay masked: the caller fills them). Fixed tokens of x (a prompt) are kept."""
    x = process.check_tokens(x, "x", allow_mask=True).clone()
    check_int("block_size", block_size)
    check_int("steps", steps)
    if sampler not in ("llada", "remdm", "mdlm"):
        raise ValueError(f"sampler: block diffusion samples each block with llada, remdm or mdlm, found {sampler!r}")
    if sampler == "mdlm":                                   # MDLM steps = ReMDM without remasking
        if options:
            raise ValueError(f"sampler options {sorted(options)}: mdlm within blocks takes none")
        sampler, options = "remdm", {"eta": 0.0}
    if options.pop("block_length", 0):
        raise ValueError("block_length: a block diffusion model samples its own blocks (block_size); pass 0")
    inner = DISCRETE_SAMPLERS[sampler]
    B, length = x.shape
    M = process.mask_id
    blocks = block_ranges(length, block_size)
    per_block = split_steps(steps, blocks)
    rows = torch.arange(B, device=x.device)                 # the rows still generating
    calls = evaluated = 0

    def denoise(lo, hi):
        def den(xb, t):
            nonlocal calls, evaluated
            calls, evaluated = calls + 1, evaluated + len(xb)
            return state.denoise(xb, t, lo, hi)
        return den

    for (lo, hi), n_steps in zip(blocks, per_block):
        xb = x[rows, lo:hi]
        if bool((xb == M).any()):
            xb = inner(denoise(lo, hi), xb, process, steps=n_steps, temperature=temperature, generator=generator,
                       **options)
            x[rows, lo:hi] = xb
        state.commit(xb, lo, hi)
        if eos_id is not None and hi < length:
            going = ~(x[rows, :hi] == eos_id).any(1)
            if not bool(going.all()):
                rows = rows[going]
                if len(rows) == 0:
                    break
                state.select(going.nonzero()[:, 0])
    if stats is not None:
        stats.update(nfe=calls, nfe_per_sequence=evaluated / B)
    return x
