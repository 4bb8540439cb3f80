"""Exact references for masked diffusion on a tiny vocabulary and length, by enumeration.

For a distribution p over V^L given as a table (or, for longer sequences, as a list of the sequences of
non-zero probability: `SupportDenoiser`), the exact denoiser p(x_0^i = v | x_t) sums p over the
sequences consistent with the unmasked tokens of x_t. For any denoiser, the continuous-time NELBO
(Sahoo et al. 2024, arXiv:2406.07524; Nie et al. 2025, arXiv:2502.09992, eq. 6) is enumerated over the
2^L mask patterns, and the exact likelihood of the model's generative process (one token revealed at a
time in a uniformly random order, the continuous-time reverse process) by a recursion over the sets of
revealed positions:

    g(empty) = 1,   g(S) = sum_{i in S} g(S \\ {i}) p_theta(x^i | x on S \\ {i}) / (L - |S| + 1),   p_theta(x) = g(all).

Block diffusion (BD3-LM, Arriola et al. 2025, arXiv:2503.09573) applies both block by block: the denoiser
sees the clean blocks before the current one, the current block partly masked and everything after it masked
(a block-causal network ignores the positions after the block; an exact denoiser needs them masked), and the
bound and the likelihood are sums over the blocks.

The NELBO is the any-order average of -log prod p_theta (Jensen: NELBO >= -log p_theta(x) / L), with
equality for the exact denoiser of a distribution.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["all_sequences", "sequence_index", "ExactDenoiser", "SupportDenoiser", "subset_logprobs", "exact_nelbo",
           "model_nll", "exact_block_nelbo", "model_block_nll", "empirical_law", "total_variation"]


def all_sequences(vocab_size: int, length: int) -> torch.Tensor:
    """(V^L, L) every sequence, in the order of `sequence_index` (position 0 the most significant)."""
    idx = torch.arange(vocab_size ** length)
    powers = vocab_size ** torch.arange(length - 1, -1, -1)
    return (idx[:, None] // powers) % vocab_size


def sequence_index(x: torch.Tensor, base: int) -> torch.Tensor:
    """(B,) the index of each row of x (B, L) read as a number in `base`, position 0 the most significant."""
    powers = base ** torch.arange(x.shape[1] - 1, -1, -1, device=x.device)
    return (x.long() * powers).sum(1)


class ExactDenoiser:
    """The exact denoiser of a law `probs` over V^L (a (V^L,) table in `all_sequences` order).

    Called as `denoiser(x_t, t) -> logits (B, L, V)` with x_t in {0 .. V} (V = mask): the log of
    p(x_0^i = v | the unmasked tokens of x_t). States of probability zero get uniform logits.
    """

    def __init__(self, probs: torch.Tensor, vocab_size: int, length: int):
        probs = torch.as_tensor(probs, dtype=torch.float64).reshape(-1)
        if probs.numel() != vocab_size ** length or (probs < 0).any() or abs(float(probs.sum()) - 1) > 1e-6:
            raise ValueError(f"probs: expected {vocab_size ** length} non-negative numbers summing to 1")
        probs = probs / probs.sum()
        self.probs, self.vocab_size, self.length, self.mask_id = probs, vocab_size, length, vocab_size
        self.calls = 0
        seqs = all_sequences(vocab_size, length)                                   # (N, L)
        states = all_sequences(vocab_size + 1, length)                              # (S, L) with the mask
        consistent = ((states[:, None, :] == seqs[None]) | (states[:, None, :] == vocab_size)).all(-1)   # (S, N)
        w = consistent.double() * probs[None]                                       # (S, N)
        onehot = torch.nn.functional.one_hot(seqs, vocab_size).double()             # (N, L, V)
        table = torch.einsum("sn,nlv->slv", w, onehot)                              # (S, L, V)
        table = torch.where(table.sum(-1, keepdim=True) > 0, table, torch.ones_like(table))
        self.table = (table / table.sum(-1, keepdim=True)).log()

    def __call__(self, xt: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        return self.table.to(xt.device)[sequence_index(xt, self.vocab_size + 1)]


class SupportDenoiser:
    """The exact denoiser of a law given by its support: `seqs` (N, L) distinct token sequences of
    probabilities `probs` (N,) summing to 1. Same call as `ExactDenoiser` (log-conditionals, uniform logits
    on states of probability zero), computed per call against the support (`chunk` rows at a time), so L
    may be large as long as N is moderate (e.g. every string of a bounded language)."""

    def __init__(self, seqs: torch.Tensor, probs: torch.Tensor, vocab_size: int, chunk: int = 16):
        seqs, probs = torch.as_tensor(seqs).long(), torch.as_tensor(probs, dtype=torch.float64).reshape(-1)
        if seqs.ndim != 2 or len(seqs) != len(probs) or (probs < 0).any() or abs(float(probs.sum()) - 1) > 1e-6:
            raise ValueError(f"seqs, probs: expected (N, L) sequences and N non-negative numbers summing to 1, found "
                             f"{tuple(seqs.shape)} and {tuple(probs.shape)}")
        if int(seqs.min()) < 0 or int(seqs.max()) >= vocab_size:
            raise ValueError(f"seqs: expected token ids in [0, {vocab_size - 1}]")
        self.seqs, self.probs, self.vocab_size, self.mask_id, self.chunk = seqs, probs, vocab_size, vocab_size, chunk
        self.length, self.calls = seqs.shape[1], 0
        self.onehot = torch.nn.functional.one_hot(seqs, vocab_size).double().reshape(len(seqs), -1)   # (N, L V)

    def __call__(self, xt: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        states, inverse = xt.cpu().long().unique(dim=0, return_inverse=True)          # equal rows: computed once
        out = []
        for xb in states.split(self.chunk):
            ok = ((self.seqs[None] == xb[:, None]) | (xb[:, None] == self.mask_id)).all(-1)     # (b, N)
            rows, idx = ok.nonzero(as_tuple=True)
            if len(idx) <= min(ok.numel() // 4, 65536):        # few consistent sequences: add them up sparsely
                table = torch.zeros(len(xb), self.onehot.shape[1], dtype=torch.float64)
                table.index_add_(0, rows, self.probs[idx, None] * self.onehot[idx])
            else:
                table = (ok.double() * self.probs) @ self.onehot
            table = table.reshape(len(xb), self.length, self.vocab_size)
            table = torch.where(table.sum(-1, keepdim=True) > 0, table, torch.ones_like(table))
            out.append((table / table.sum(-1, keepdim=True)).log())
        return torch.cat(out)[inverse].to(xt.device)


def subset_logprobs(denoiser: Callable, x0: torch.Tensor, mask_id: int) -> torch.Tensor:
    """(B, 2^L, L): log p_theta(x_0^i | x_0 visible exactly on subset m), bit i of m set = position i visible;
    entries at visible positions are not used. t is passed as the masked fraction (linear schedule)."""
    B, L = x0.shape
    m = torch.arange(2 ** L, device=x0.device)
    visible = (m[:, None] >> torch.arange(L, device=x0.device)) & 1                # (2^L, L)
    xt = torch.where(visible.bool()[None], x0[:, None], mask_id).reshape(-1, L)     # (B 2^L, L)
    t = 1 - visible.sum(1).double().repeat(B) / L
    logits = denoiser(xt, t.float())
    lp = torch.log_softmax(logits.double(), -1).gather(-1, x0.repeat_interleave(2 ** L, 0)[..., None])[..., 0]
    return lp.reshape(B, 2 ** L, L)


def exact_nelbo(denoiser: Callable, x0: torch.Tensor, mask_id: int) -> torch.Tensor:
    """(B,) the continuous-time NELBO in nats per token, enumerated over all masks S (eq. (*) of `process`):
    sum_{S != empty} 1 / (|S| C(L, |S|)) sum_{i in S} -log p_theta(x_0^i | x_0 masked on S), divided by L."""
    B, L = x0.shape
    lp = subset_logprobs(denoiser, x0, mask_id)
    total = torch.zeros(B, dtype=torch.float64, device=x0.device)
    for m in range(2 ** L - 1):                       # m = the visible set; S = its complement, non-empty
        S = [i for i in range(L) if not m >> i & 1]
        total -= lp[:, m, S].sum(1) / (len(S) * math.comb(L, len(S)))
    return total / L


def model_nll(denoiser: Callable, x0: torch.Tensor, mask_id: int) -> torch.Tensor:
    """(B,) -log p_theta(x_0) / L of the model's generative process (one token at a time, uniform order)."""
    B, L = x0.shape
    lp = subset_logprobs(denoiser, x0, mask_id)
    g = torch.zeros(B, 2 ** L, dtype=torch.float64, device=x0.device)
    g[:, 0] = 1.0
    for m in range(1, 2 ** L):                        # subsets in increasing order: m \ {i} < m
        k = bin(m).count("1")
        for i in range(L):
            if m >> i & 1:
                prev = m & ~(1 << i)
                g[:, m] += g[:, prev] * lp[:, prev, i].exp() / (L - k + 1)
    return -g[:, -1].log() / L


def _block_logprobs(denoiser: Callable, x0: torch.Tensor, mask_id: int, lo: int, hi: int) -> torch.Tensor:
    """(B, 2^n, n): log p_theta(x_0^i | x_0 clean before lo, block lo..hi-1 visible on subset m, masked after),
    for the n = hi - lo positions i of the block (bit j of m set = position lo + j visible)."""
    B, L = x0.shape
    n = hi - lo
    m = torch.arange(2 ** n, device=x0.device)
    visible = ((m[:, None] >> torch.arange(n, device=x0.device)) & 1).bool()          # (2^n, n)
    xt = x0[:, None].repeat(1, 2 ** n, 1)                                              # (B, 2^n, L)
    xt[:, :, lo:hi] = torch.where(visible[None], x0[:, None, lo:hi], mask_id)
    xt[:, :, hi:] = mask_id
    xt = xt.reshape(-1, L)
    t = (xt == mask_id).double().mean(1)
    logits = denoiser(xt, t.float())[:, lo:hi]
    lp = torch.log_softmax(logits.double(), -1).gather(-1, x0[:, lo:hi].repeat_interleave(2 ** n, 0)[..., None])
    return lp[..., 0].reshape(B, 2 ** n, n)


def _blocks(L: int, block_size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + block_size, L)) for lo in range(0, L, block_size)]


def exact_block_nelbo(denoiser: Callable, x0: torch.Tensor, mask_id: int, block_size: int) -> torch.Tensor:
    """(B,) the block-diffusion NELBO in nats per token, enumerated: the sum over blocks k of
    sum_{S in block k, S != empty} 1 / (|S| C(n_k, |S|)) sum_{i in S} -log p_theta(x_0^i | x_0^{<k}, x_0^k masked on S),
    divided by L. `denoiser(x_t, t)` on single sequences (a block-causal network, or any exact denoiser)."""
    B, L = x0.shape
    total = torch.zeros(B, dtype=torch.float64, device=x0.device)
    for lo, hi in _blocks(L, block_size):
        n = hi - lo
        lp = _block_logprobs(denoiser, x0, mask_id, lo, hi)
        for m in range(2 ** n - 1):                      # m = the visible part of the block; S its complement
            S = [i for i in range(n) if not m >> i & 1]
            total -= lp[:, m, S].sum(1) / (len(S) * math.comb(n, len(S)))
    return total / L


def model_block_nll(denoiser: Callable, x0: torch.Tensor, mask_id: int, block_size: int) -> torch.Tensor:
    """(B,) -log p_theta(x_0) / L of the block model's generative process: blocks left to right, within each
    block one token at a time in a uniformly random order (the recursion of `model_nll`, per block)."""
    B, L = x0.shape
    total = torch.zeros(B, dtype=torch.float64, device=x0.device)
    for lo, hi in _blocks(L, block_size):
        n = hi - lo
        lp = _block_logprobs(denoiser, x0, mask_id, lo, hi)
        g = torch.zeros(B, 2 ** n, dtype=torch.float64, device=x0.device)
        g[:, 0] = 1.0
        for m in range(1, 2 ** n):
            k = bin(m).count("1")
            for i in range(n):
                if m >> i & 1:
                    prev = m & ~(1 << i)
                    g[:, m] += g[:, prev] * lp[:, prev, i].exp() / (n - k + 1)
        total -= g[:, -1].log()
    return total / L


def empirical_law(x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(V^L,) the fraction of rows of x (B, L) equal to each sequence (rows with out-of-range tokens dropped)."""
    ok = ((x >= 0) & (x < vocab_size)).all(1)
    idx = sequence_index(x[ok], vocab_size)
    return torch.bincount(idx, minlength=vocab_size ** x.shape[1]).double() / x.shape[0]


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    """1/2 sum |p - q|."""
    return 0.5 * float((p.double() - q.double()).abs().sum())
