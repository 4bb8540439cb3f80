"""Samplers of masked diffusion models: MDLM ancestral sampling and LLaDA's confidence remasking.

Every sampler has one signature,

    x = sampler(denoiser, x, process, *, steps, temperature=1.0, generator=None, stats=None, progress=False, ...)

where x (B, L) holds the tokens to keep and `process.mask_id` at the positions to generate (all of them
for unconditional samples; after a prompt for conditional generation; anywhere for infilling). Tokens
that are not masked are never changed. `denoiser(x_t, t) -> logits (B, L, V)`. New tokens are drawn
from softmax(logits / temperature) by the Gumbel-max trick in float64 (LLaDA's `add_gumbel_noise`:
low-precision Gumbel noise lowers sample quality); temperature 0 takes the argmax. `stats`, a dict,
receives `nfe` (network calls) and `nfe_per_sequence` (rows evaluated / B).

- `mdlm` (Sahoo et al. 2024, arXiv:2406.07524, sec. 3.3 / `_ddpm_caching_update`): on the grid
  t_k = 1 - k/steps, each masked token is revealed with probability (alpha_s - alpha_t) / (1 - alpha_t)
  with a draw from p_theta(x_0 | x_t); the last step (s = 0) reveals all. Caching: a denoiser without time
  input gives the same prediction for an unchanged x_t, so rows in which nothing changed are not
  re-evaluated (`cache=True`; pass False for a time-conditioned network).
- `llada` (Nie et al. 2025, arXiv:2502.09992, Alg. 5 / `generate.py`): blocks of `block_length` positions,
  left to right from the first masked one (semi-autoregressive; 0: one block), share the steps; each
  step predicts every masked token and keeps the k most confident in the current block
  (`remasking="entropy"`, the default: the lowest entropy of the position's prediction first;
  `"low_confidence"`: the probability of the drawn token, LLaDA's; `"random"`: a uniform score),
  k splitting the block's masked count evenly over its steps. With one token per step and random or
  entropy remasking (any order that does not look at the drawn values) the exact denoiser gives exact
  samples. Ordering by the drawn token's probability does look at them, and collapses: the most
  confident reveal is an EOS next to one already revealed, so the sequences fill with EOS from the
  right and most samples are the shortest string (on brackets 100% valid, 3.5% distinct with the exact
  denoiser; `benchmarks/results/discrete.md`). Entropy ordering reveals the easy positions first, as
  confidence ordering does, but draws each from its full conditional, so the length law is kept.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from scoresde._common.registry import Registry
from scoresde._common.validation import check_int
from scoresde.sde.masked import MaskedProcess


__all__ = ["DISCRETE_SAMPLERS", "sample_mdlm", "sample_llada", "categorical", "list_discrete_samplers"]

DISCRETE_SAMPLERS = Registry("discrete sampler")
REMASKING = ("entropy", "low_confidence", "random")


def list_discrete_samplers() -> list[str]:
    return list(DISCRETE_SAMPLERS)


def _check_common(x: torch.Tensor, process: MaskedProcess, steps: Any, temperature: Any) -> torch.Tensor:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an int >= 1 (sampling steps), found {steps!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature: expected a number >= 0 (0: argmax), found {temperature!r}")
    return process.check_tokens(x, "x", allow_mask=True)


def categorical(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Draws from softmax(logits / temperature) over the last dim (Gumbel-max, float64); argmax at 0."""
    if temperature == 0:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    return (logits.double() / temperature + gumbel).argmax(-1)


def _bar(total: int, progress: bool, desc: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, disable=not progress, desc=desc, dynamic_ncols=True, leave=False)


@DISCRETE_SAMPLERS.register("mdlm")
def sample_mdlm(denoiser: Callable, x: torch.Tensor, process: MaskedProcess, *, steps: int, temperature: float = 1.0,
                cache: bool = True, generator: torch.Generator | None = None, stats: dict | None = None,
                progress: bool = False) -> torch.Tensor:
    """MDLM ancestral sampling with `steps` steps (and the caching trick when `cache`)."""
    x = _check_common(x, process, steps, temperature).clone()
    B, L = x.shape
    M, alpha = process.mask_id, process.schedule.alpha
    grid = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    a = alpha(grid).tolist()
    logits = None
    fresh = torch.zeros(B, dtype=torch.bool, device=x.device)      # cached prediction still valid for the row
    nfe = rows = 0
    with _bar(steps, progress, "mdlm") as bar:
        for k in range(steps):
            masked = x == M
            active = masked.any(1)
            if not bool(active.any()):
                break
            need = active & ~fresh if cache else active
            if bool(need.any()):
                idx = need.nonzero()[:, 0]
                t = torch.full((len(idx),), float(grid[k]), device=x.device)
                out = denoiser(x[idx], t).float()
                if logits is None:
                    logits = torch.zeros(B, L, out.shape[-1], device=x.device)
                logits[idx] = out
                fresh[idx] = True
                nfe, rows = nfe + 1, rows + len(idx)
            # reveal with probability (alpha_s - alpha_t) / (1 - alpha_t)   (MDLM eq. 7; 1 at s = 0)
            p = (a[k + 1] - a[k]) / (1 - a[k]) if a[k] < 1 else 1.0
            u = torch.rand(B, L, generator=generator, device=x.device, dtype=torch.float64)
            reveal = masked & (u < p)
            x = x.masked_scatter(reveal, categorical(logits[reveal], temperature, generator))   # draws where revealed
            fresh &= ~reveal.any(1)
            bar.update(1)
    if stats is not None:
        stats.update(nfe=nfe, nfe_per_sequence=rows / B)
    return x


def _even_split(n: torch.Tensor, parts: int) -> torch.Tensor:
    """(B, parts): n[b] split into `parts` integers differing by at most one, larger first (LLaDA)."""
    i = torch.arange(parts, device=n.device)
    return n[:, None] // parts + (i[None] < (n % parts)[:, None]).long()


@DISCRETE_SAMPLERS.register("llada")
def sample_llada(denoiser: Callable, x: torch.Tensor, process: MaskedProcess, *, steps: int, temperature: float = 1.0,
                 remasking: str = "entropy", block_length: int = 0, generator: torch.Generator | None = None,
                 stats: dict | None = None, progress: bool = False) -> torch.Tensor:
    """LLaDA sampling: reveal the most certain (or most confident, or random) predictions, block by block."""
    x = _check_common(x, process, steps, temperature).clone()
    if remasking not in REMASKING:
        raise ValueError(f"remasking: expected one of {', '.join(REMASKING)}, found {remasking!r}")
    check_int("block_length", block_length, minimum=0)
    B, L = x.shape
    M = process.mask_id
    masked_any = (x == M).any(0)
    if not bool(masked_any.any()):
        return x
    start = int(masked_any.nonzero()[0, 0])
    size = block_length or L - start
    blocks = [(lo, min(lo + size, L)) for lo in range(start, L, size)]
    if steps < len(blocks):
        raise ValueError(f"steps: expected at least one step per block, {len(blocks)} blocks of block_length "
                         f"{size} from position {start} of {L}, found steps = {steps}")
    per_block = _even_split(torch.tensor([steps]), len(blocks))[0].tolist()
    pos = torch.arange(L, device=x.device)
    nfe = 0
    with _bar(steps, progress, f"llada ({remasking})") as bar:
        for (lo, hi), n_steps in zip(blocks, per_block):
            in_block = (pos >= lo) & (pos < hi)
            k_all = _even_split(((x == M) & in_block).sum(1), n_steps)        # (B, n_steps)
            for i in range(n_steps):
                bar.update(1)
                k = k_all[:, i]
                if not bool((k > 0).any()):
                    continue                                                     # nothing to reveal: no call
                masked = x == M
                # time of the current masked fraction: 1 - alpha_t = (#masked) / L
                t = process.schedule.t_of_alpha(1 - masked.sum(1).double() / L).float()
                logits = denoiser(x, t).float()
                nfe += 1
                x0 = categorical(logits, temperature, generator)
                if remasking == "entropy":                 # minus the entropy: independent of the draw x0
                    p = torch.softmax(logits.double(), -1)
                    conf = torch.special.xlogy(p, p).sum(-1)
                elif remasking == "low_confidence":
                    conf = torch.softmax(logits.double(), -1).gather(-1, x0[..., None])[..., 0]
                else:
                    conf = torch.rand(B, L, generator=generator, device=x.device, dtype=torch.float64)
                conf = torch.where(masked & in_block, conf, -torch.inf)
                order = torch.sort(conf, dim=1, descending=True, stable=True).indices
                rank = order.argsort(dim=1)
                keep = (rank < k[:, None]) & masked & in_block
                x = torch.where(keep, x0, x)
    if stats is not None:
        stats.update(nfe=nfe, nfe_per_sequence=float(nfe))
    return x
