"""Samplers of masked diffusion models: MDLM ancestral sampling, LLaDA's confidence remasking, ReMDM remasking.

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
  `"margin"`: the gap between the two most probable tokens of the position (Kim et al. 2025,
  arXiv:2502.06768; independent of the draw, like entropy). `order_temperature` tau > 0 draws the order
  instead of sorting: Gumbel-top-k over score / tau (a position is picked with probability proportional to
  exp(score / tau) among those left), from the sort (tau -> 0) to a uniform order (tau -> inf).
- `remdm` (ReMDM, Wang et al. 2025, arXiv:2503.00307, eq. 9 / sec. 4.1): MDLM's grid, but each step from t to
  s may also remask decoded tokens, each with probability sigma_t, and then reveals each masked one with
  probability (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t), so the marginal alpha_s of unmasked tokens
  is that of the forward process for any 0 <= sigma_t <= sigma_max = min(1, (1 - alpha_s) / alpha_t).
  `schedule`: "cap" sigma_t = min(eta, sigma_max); "rescale" sigma_t = eta sigma_max; "conf" eta sigma_max
  spread over the decoded tokens by softmax(-confidence) (the probability each had when drawn: the least
  confident are remasked first; the expected count is that of "rescale"). Remasking acts for t <= `t_on`
  (ReMDM's switch; 1: always). eta = 0 is MDLM without the caching trick. One network call per step: a
  decoded token can be corrected when the tokens around it change. sigma_t is a probability per step (at a
  fixed eta, more steps remask more), and sigma_max is of order one while alpha_t < 1/2: a large sigma_t
  remasks many tokens and reveals many at once, each from its own conditional, which loses their correlation
  even with the exact denoiser (brackets of depth <= 2, 64 steps: cap eta = 0.01 about 95% valid, rescale
  eta = 0.5 about 36%; `tests/samplers/test_remasking_samplers.py`). ReMDM uses small eta with many steps.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from scoresde._common.registry import Registry
from scoresde._common.validation import check_int
from scoresde.sde.masked import MaskedProcess


__all__ = ["DISCRETE_SAMPLERS", "sample_mdlm", "sample_llada", "sample_remdm", "categorical", "list_discrete_samplers",
           "REMASKING", "REMDM_SCHEDULES"]

DISCRETE_SAMPLERS = Registry("discrete sampler")
REMASKING = ("entropy", "low_confidence", "margin", "random")
REMDM_SCHEDULES = ("cap", "rescale", "conf")


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


def _number(name: str, v: Any, lo: float = 0.0, hi: float = float("inf")) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ValueError(f"{name}: expected a number in [{lo:g}, {hi:g}], found {v!r}")
    return float(v)


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


def _order_score(remasking: str, logits: torch.Tensor, x0: torch.Tensor, tau: float,
                 generator: torch.Generator | None) -> torch.Tensor:
    """(B, L) float64 scores, the highest revealed first: minus the entropy, the drawn token's probability, the
    top-2 margin or uniform; with tau > 0 plus Gumbel noise over score / tau (Gumbel-top-k: a random order)."""
    if remasking == "random":
        return torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)
    p = torch.softmax(logits.double(), -1)
    if remasking == "entropy":                     # minus the entropy: independent of the draw x0
        score = torch.special.xlogy(p, p).sum(-1)
    elif remasking == "low_confidence":
        score = p.gather(-1, x0[..., None])[..., 0]
    else:                                          # margin: p_(1) - p_(2), independent of the draw
        top = p.topk(2, dim=-1).values if p.shape[-1] > 1 else torch.cat([p, torch.zeros_like(p)], -1)
        score = top[..., 0] - top[..., 1]
    if tau > 0:
        u = torch.rand(score.shape, generator=generator, device=score.device, dtype=torch.float64)
        score = score / tau - torch.log(-torch.log(u.clamp_min(1e-300)))
    return score


def _even_split(n: torch.Tensor, parts: int) -> torch.Tensor:
    """(B, parts): n[b] split into `parts` integers differing by at most one, larger first (LLaDA)."""
    i = torch.arange(parts, device=n.device)
    return n[:, None] // parts + (i[None] < (n % parts)[:, None]).long()


@DISCRETE_SAMPLERS.register("llada")
def sample_llada(denoiser: Callable, x: torch.Tensor, process: MaskedProcess, *, steps: int, temperature: float = 1.0,
                 remasking: str = "entropy", block_length: int = 0, order_temperature: float = 0.0,
                 generator: torch.Generator | None = None, stats: dict | None = None,
                 progress: bool = False) -> torch.Tensor:
    """LLaDA sampling: reveal the most certain (or most confident, or random) predictions, block by block."""
    x = _check_common(x, process, steps, temperature).clone()
    if remasking not in REMASKING:
        raise ValueError(f"remasking: expected one of {', '.join(REMASKING)}, found {remasking!r}")
    tau = _number("order_temperature", order_temperature)
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
                conf = _order_score(remasking, logits, x0, tau, generator)
                conf = torch.where(masked & in_block, conf, -torch.inf)
                order = torch.sort(conf, dim=1, descending=True, stable=True).indices
                rank = order.argsort(dim=1)
                keep = (rank < k[:, None]) & masked & in_block
                x = torch.where(keep, x0, x)
    if stats is not None:
        stats.update(nfe=nfe, nfe_per_sequence=float(nfe))
    return x


@DISCRETE_SAMPLERS.register("remdm")
def sample_remdm(denoiser: Callable, x: torch.Tensor, process: MaskedProcess, *, steps: int, temperature: float = 1.0,
                 eta: float = 0.1, schedule: str = "cap", t_on: float = 1.0, generator: torch.Generator | None = None,
                 stats: dict | None = None, progress: bool = False) -> torch.Tensor:
    """ReMDM sampling: MDLM steps that also remask decoded tokens with probability sigma_t (cap / rescale / conf)."""
    x = _check_common(x, process, steps, temperature).clone()
    if schedule not in REMDM_SCHEDULES:
        raise ValueError(f"schedule: expected one of {', '.join(REMDM_SCHEDULES)}, found {schedule!r}")
    eta = _number("eta", eta, hi=1.0 if schedule == "cap" else float("inf"))
    t_on = _number("t_on", t_on, hi=1.0)
    if schedule != "cap" and eta > 1:
        raise ValueError(f"eta: expected a number in [0, 1] (sigma_t = eta sigma_max <= sigma_max), found {eta!r}")
    B, L = x.shape
    M, alpha = process.mask_id, process.schedule.alpha
    free = x == M                                                   # generated positions (others are never changed)
    if not bool(free.any()):
        return x
    grid = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    a = alpha(grid).tolist()
    conf = torch.zeros(B, L, dtype=torch.float64, device=x.device)   # probability of each decoded token when drawn
    nfe = 0
    with _bar(steps, progress, f"remdm ({schedule})") as bar:
        for k in range(steps):
            bar.update(1)
            masked = x == M
            decoded = free & ~masked
            a_t, a_s = a[k], a[k + 1]
            sigma_max = min(1.0, (1 - a_s) / a_t) if a_t > 0 else 1.0
            sigma = 0.0 if grid[k] > t_on else (min(eta, sigma_max) if schedule == "cap" else eta * sigma_max)
            if not bool(masked.any()) and sigma == 0:
                continue                                            # nothing to reveal or remask: no call
            t = torch.full((B,), float(grid[k]), device=x.device)
            logits = denoiser(x, t).float()
            nfe += 1
            # reveal: (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t)   (ReMDM eq. 9; sigma = 0: MDLM eq. 7)
            p_reveal = min(1.0, max(0.0, (a_s - (1 - sigma) * a_t) / (1 - a_t))) if a_t < 1 else 1.0
            u = torch.rand(B, L, generator=generator, device=x.device, dtype=torch.float64)
            reveal = masked & (u < p_reveal)
            # remask: each decoded token with probability sigma (conf: sigma n_decoded softmax(-confidence), <= 1)
            if schedule == "conf" and sigma > 0:
                w = torch.softmax(torch.where(decoded, -conf, -torch.inf), -1).nan_to_num(0.0)
                p_remask = (sigma * decoded.sum(1, keepdim=True) * w).clamp(max=1)
            else:
                p_remask = torch.full((B, L), sigma, dtype=torch.float64, device=x.device)
            v = torch.rand(B, L, generator=generator, device=x.device, dtype=torch.float64)
            remask = decoded & (v < p_remask)
            draw = categorical(logits, temperature, generator)
            prob = torch.softmax(logits.double(), -1).gather(-1, draw[..., None])[..., 0]
            x = torch.where(reveal, draw, torch.where(remask, torch.full_like(x, M), x))
            conf = torch.where(reveal, prob, conf)
    if stats is not None:
        stats.update(nfe=nfe, nfe_per_sequence=float(nfe))
    return x
