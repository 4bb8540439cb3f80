"""The absorbing-state (masking) process on token sequences and its continuous-time NELBO.

Masked diffusion: Austin et al. (2021, D3PM, arXiv:2107.03006), the absorbing state made continuous in
time by MDLM, Sahoo et al. (2024, arXiv:2406.07524), MD4, Shi et al. (2024, arXiv:2406.04329), and
trained at scale by LLaDA, Nie et al. (2025, arXiv:2502.09992).

Tokens take values 0 .. V-1; the mask token is `mask_id = V`. Given a schedule alpha_t, decreasing from
alpha_0 = 1 to alpha_1 = 0, the forward process masks each token independently:

    q(x_t^i | x_0^i) = alpha_t 1[x_t^i = x_0^i] + (1 - alpha_t) 1[x_t^i = M].

A denoiser `denoiser(x_t, t) -> logits (B, L, V)` predicts x_0 at every position (the SUBS
parameterisation of MDLM: no probability on the mask, unmasked tokens are copied through, so only
masked positions are read). The continuous-time negative ELBO (MDLM eq. 10, LLaDA eq. 3) is

    NELBO(x_0) = E_{t ~ U[0,1]} E_{x_t ~ q_t} [ w(t) sum_{i: x_t^i = M} -log p_theta(x_0^i | x_t) ],
    w(t) = -alpha'_t / (1 - alpha_t)          (= 1/t for the linear schedule alpha_t = 1 - t),

reported here divided by the length L (nats per token). It does not depend on the schedule: with
u = 1 - alpha_t the mask count l is Binomial(L, u) and int_0^1 (1/u) C(L,l) u^l (1-u)^(L-l) du = 1/l, so

    NELBO(x_0) = sum_{l=1}^{L} (1/l) E_{|S| = l} [ sum_{i in S} -log p_theta(x_0^i | x_0 masked on S) ]     (*)

the expected negative log-likelihood of any-order autoregression (Uria et al. 2014; LLaDA eq. 6 draws
l ~ U{1..L} and weights by L/l, the `count` estimator here, lower variance than sampling t). By
Jensen it bounds -log of the model's likelihood, and equals -log p(x_0) for the exact denoiser.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from scoresde._common.registry import Registry
from scoresde._common.validation import check_int


__all__ = ["SCHEDULES", "MaskingSchedule", "LinearSchedule", "CosineSchedule", "MaskedProcess", "get_schedule",
           "bits_per_token", "perplexity"]

SCHEDULES = Registry("masking schedule")
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class MaskingSchedule:
    """alpha_t: the probability that a token is still unmasked at time t in [0, 1] (alpha_0 = 1, alpha_1 = 0)."""

    name = ""

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        """d alpha_t / dt."""
        raise NotImplementedError

    def t_of_alpha(self, a: torch.Tensor) -> torch.Tensor:
        """The inverse: t with alpha_t = a."""
        raise NotImplementedError

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """w(t) = -alpha'_t / (1 - alpha_t), the NELBO weight of a masked token's cross-entropy."""
        return -self.dalpha(t) / (1 - self.alpha(t))

    def config(self) -> dict[str, Any]:
        return {"name": self.name}


@SCHEDULES.register("linear")
class LinearSchedule(MaskingSchedule):
    """alpha_t = 1 - t: w(t) = 1/t, an equal expected number of tokens revealed per step (LLaDA, MDLM)."""

    name = "linear"

    def alpha(self, t):
        return 1 - t

    def dalpha(self, t):
        return -torch.ones_like(t)

    def t_of_alpha(self, a):
        return 1 - a


@SCHEDULES.register("cosine")
class CosineSchedule(MaskingSchedule):
    """alpha_t = 1 - cos(pi/2 (1 - t)) (MD4, Shi et al. 2024): fewer tokens revealed near t = 1."""

    name = "cosine"

    def alpha(self, t):
        return 1 - torch.cos(0.5 * math.pi * (1 - t))

    def dalpha(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * (1 - t))

    def t_of_alpha(self, a):
        return 1 - torch.acos((1 - a).clamp(0, 1)) * (2 / math.pi)


def get_schedule(schedule: str | MaskingSchedule) -> MaskingSchedule:
    """A schedule by name (KeyError listing the known ones) or the schedule itself."""
    if isinstance(schedule, MaskingSchedule):
        return schedule
    if not isinstance(schedule, str):
        raise TypeError(f"schedule: expected a name ({', '.join(SCHEDULES)}) or a MaskingSchedule, found "
                        f"{type(schedule).__name__}")
    return SCHEDULES[schedule]()


def bits_per_token(nats: float | torch.Tensor):
    """Nats per token -> bits per token."""
    return nats / math.log(2)


def perplexity(nats: float | torch.Tensor):
    """Nats per token -> perplexity exp(nats)."""
    return math.exp(nats) if isinstance(nats, (int, float)) else torch.exp(nats)


class MaskedProcess:
    """The masking process over a vocabulary of `vocab_size` tokens (mask id = vocab_size).

    Args:
        vocab_size: V, the number of real tokens (0 .. V-1).
        schedule: "linear" (alpha_t = 1 - t, default), "cosine", or a `MaskingSchedule`.
        eps: the training loss draws t in [eps, 1] (LLaDA / MDLM: 1e-3), keeping the weight w(t) bounded.
    """

    def __init__(self, vocab_size: int, schedule: str | MaskingSchedule = "linear", eps: float = 1e-3):
        self.vocab_size = check_int("vocab_size", vocab_size)
        self.mask_id = self.vocab_size
        self.schedule = get_schedule(schedule)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
            raise ValueError(f"eps: expected a number in [0, 1), found {eps!r}")
        self.eps = float(eps)

    def config(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "schedule": self.schedule.name, "eps": self.eps}

    # --- validation ---------------------------------------------------------------------------------
    def check_tokens(self, x: torch.Tensor, name: str = "x", allow_mask: bool = False) -> torch.Tensor:
        """`x` is a (B, L) integer tensor of tokens in [0, V) (or the mask id with `allow_mask`)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a (B, L) tensor of token ids, found {type(x).__name__}")
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise TypeError(f"{name}: expected an integer tensor of token ids, found dtype {x.dtype}")
        if x.ndim != 2 or x.shape[1] == 0:
            raise ValueError(f"{name}: expected shape (B, L) with L >= 1, found {tuple(x.shape)}")
        hi = self.vocab_size + (1 if allow_mask else 0)
        bad = (x < 0) | (x >= hi)
        if bool(bad.any()):
            v = int(x[bad][0])
            raise ValueError(f"{name}: expected token ids in [0, {hi - 1}] (vocabulary of {self.vocab_size}"
                             f"{' plus the mask id ' + str(self.mask_id) if allow_mask else ''}), found {v} "
                             "(a token out of the vocabulary)")
        return x.long()

    # --- the forward process ------------------------------------------------------------------------
    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        """1 - alpha_t, the probability that a token is masked at time t."""
        return 1 - self.schedule.alpha(t)

    def sample_t(self, n: int, *, antithetic: bool = True, eps: float | None = None,
                 generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """(n,) times in [eps, 1]: t = eps + (1 - eps) u with u uniform, or stratified ("antithetic", MDLM's
        low-discrepancy sampler): u_k = (k + v_k) / n, v_k ~ U[0, 1), one time in each 1/n of [0, 1)."""
        eps = self.eps if eps is None else eps
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        if antithetic:
            u = (torch.arange(n, device=device, dtype=torch.float64) + u) / n
        return (eps + (1 - eps) * u).float()

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t ~ q(x_t | x_0): each token masked independently with probability 1 - alpha_t; t is (B,)."""
        p = self.mask_prob(t.to(torch.float64))[:, None]                     # (B, 1)
        u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)
        return torch.where(u < p, torch.full_like(x0, self.mask_id), x0)

    def mask_exactly(self, x0: torch.Tensor, counts: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """x0 with exactly counts[b] positions of row b masked, chosen uniformly at random."""
        u = torch.rand(x0.shape, generator=generator, device=x0.device)
        rank = u.argsort(dim=1).argsort(dim=1)                               # a uniform random permutation
        return torch.where(rank < counts[:, None], torch.full_like(x0, self.mask_id), x0)

    # --- the bound ----------------------------------------------------------------------------------
    def masked_nll(self, logits: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        """(B,) sum over masked positions of -log p_theta(x_0^i | x_t) (cross-entropy in float32)."""
        ce = F.cross_entropy(logits.float().transpose(1, 2), x0, reduction="none")   # (B, L)
        return (ce * (xt == self.mask_id)).sum(1)

    def loss(self, denoiser: Denoiser, x0: torch.Tensor, *, t: torch.Tensor | None = None, antithetic: bool = True,
             estimator: str = "time", generator: torch.Generator | None = None, reduce: bool = True,
             check: bool = True) -> torch.Tensor:
        """The training loss: a one-sample estimate of the NELBO in nats per token.

            time:   w(t) sum_{i masked} -log p_theta(x_0^i | x_t) / L,  t in [eps, 1]   (MDLM eq. 10; LLaDA eq. 3)
            count:  sum_{i masked} -log p_theta(x_0^i | x_t) / l,  exactly l ~ U{1..L} masked   (LLaDA eq. 6)

        "time" with eps > 0 estimates the integral over [eps, 1] / (1 - eps), as MDLM and LLaDA train;
        "count" is unbiased for the whole bound, with bounded weights (the mean cross-entropy of the masked
        tokens). Antithetic draws stratify t (or l) across the batch. `t` (B,) may be given for "time"; the
        draws come from `generator`. `check=False` skips the token-range check (a host synchronisation) for
        data validated when loaded.
        """
        if check:
            x0 = self.check_tokens(x0, "x0")
        if estimator not in ("time", "count"):
            raise ValueError(f"estimator: expected 'time' or 'count', found {estimator!r}")
        B, L = x0.shape
        if estimator == "count":
            u = self.sample_t(B, antithetic=antithetic, eps=0.0, generator=generator, device=x0.device)
            l = (u * L).long().clamp(max=L - 1) + 1                                  # (B,) uniform on 1..L
            xt = self.mask_exactly(x0, l, generator)
            t = self.schedule.t_of_alpha(1 - l.double() / L).float()
            out = self.masked_nll(denoiser(xt, t), x0, xt) / l
        else:
            if t is None:
                t = self.sample_t(B, antithetic=antithetic, generator=generator, device=x0.device)
            xt = self.corrupt(x0, t, generator)
            nll = self.masked_nll(denoiser(xt, t), x0, xt)
            out = self.schedule.weight(t.to(torch.float64)).float() * nll / L
        return out.mean() if reduce else out

    def nelbo(self, denoiser: Denoiser, x0: torch.Tensor, *, draws: int = 1, estimator: str = "count",
              generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) unbiased estimate of the continuous-time NELBO in nats per token, averaged over `draws`.

        estimator="count" (LLaDA eq. 6): l ~ U{1..L}, exactly l positions masked, weight L/l; the time
        fed to the denoiser is t with 1 - alpha_t = l/L. estimator="time": t ~ U(0, 1] stratified over
        the draws, weight w(t) (the training estimator with eps = 0; higher variance).
        """
        x0 = self.check_tokens(x0, "x0")
        check_int("draws", draws)
        if estimator not in ("count", "time"):
            raise ValueError(f"estimator: expected 'count' or 'time', found {estimator!r}")
        B, L = x0.shape
        total = torch.zeros(B, dtype=torch.float64, device=x0.device)
        for k in range(draws):
            if estimator == "count":
                u = torch.rand(B, generator=generator, device=x0.device)
                l = (u * L).long().clamp(max=L - 1) + 1                       # (B,) uniform on 1..L
                xt = self.mask_exactly(x0, l, generator)
                t = self.schedule.t_of_alpha(1 - l.double() / L).float()
                w = L / l.double()
            else:
                v = torch.rand(B, generator=generator, device=x0.device, dtype=torch.float64)
                t64 = 1 - (k + v) / draws                                       # stratified over the draws, in (0, 1]
                xt = self.corrupt(x0, t64, generator)
                t, w = t64.float(), self.schedule.weight(t64)
            total += w * self.masked_nll(denoiser(xt, t), x0, xt).double()
        return (total / (draws * L)).float()
