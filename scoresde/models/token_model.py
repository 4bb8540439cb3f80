"""Trained sequence models: a masked diffusion language model and its autoregressive baseline.

`MaskedLM` (Sahoo et al. 2024, arXiv:2406.07524; Nie et al. 2025, arXiv:2502.09992) holds a
bidirectional network (`seq_transformer`), the masking process and the tokenizer: `model(x_t, t)` is the
denoiser's logits over the V real tokens (the mask is never predicted: SUBS), `model.sample` generates
with a registered sampler (from all-masked sequences, after a prompt, or filling masked positions),
`model.nelbo` bounds the negative log-likelihood. With a block-causal network (`block_size` b > 0) it is a
block diffusion model (BD3-LM, Arriola et al. 2025, arXiv:2503.09573): the process is a
`BlockMaskedProcess`, the bound the sum of the blocks' bounds, and `sample` generates block by block with
a KV cache (`BlockCache`), any length, stopping at EOS. `AutoregressiveLM` holds the same network made causal:
`model(x)` predicts token i from tokens < i (a begin token, the id V, in front), `model.nll` is exact.
`build_token_model(meta)` rebuilds either from checkpoint metadata (used by `scoresde.load`).
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from scoresde.sde.masked import MaskedProcess
from scoresde.sde.block_masked import BlockMaskedProcess
from scoresde.samplers.masked import DISCRETE_SAMPLERS, categorical
from scoresde.samplers.block import sample_blocks
from scoresde.data.tokenizer import CharTokenizer
from scoresde.models.nets import get_model
from scoresde.data.languages import get_language
from scoresde.models.prebuild import check_meta_sizes
from scoresde._common.validation import check_int


__all__ = ["MaskedLM", "AutoregressiveLM", "BlockCache", "build_token_model", "TOKEN_TASKS"]

TOKEN_TASKS = ("masked", "autoregressive")


class _TokenModel(nn.Module):
    def __init__(self, net: nn.Module, vocab_size: int, tokenizer: CharTokenizer | None = None,
                 eos_id: int | None = None, language=None):
        super().__init__()
        self.net, self.vocab_size, self.tokenizer, self.eos_id, self.language = net, vocab_size, tokenizer, eos_id, language
        self.seq_len = net.seq_len
        if net.num_outputs != vocab_size or net.vocab_size != vocab_size + 1:
            raise ValueError(f"net: expected vocab_size = {vocab_size + 1} inputs (V tokens + mask/begin) and "
                             f"num_outputs = {vocab_size}, found {net.vocab_size} and {net.num_outputs}")

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def decode(self, x: torch.Tensor) -> list[str]:
        """Texts of the rows of x (up to each first EOS); token ids joined by spaces without a tokenizer."""
        if self.tokenizer is not None:
            return [self.tokenizer.decode(r) for r in x.tolist()]
        out = []
        for r in x.tolist():
            if self.eos_id is not None and self.eos_id in r:
                r = r[:r.index(self.eos_id)]
            out.append(" ".join(map(str, r)))
        return out

    def is_valid(self, x: torch.Tensor) -> list[bool] | None:
        """Exact validity of each row for a model trained on a built-in language (None otherwise)."""
        if self.language is None:
            return None
        return [self.eos_id in r and self.language.is_valid(self.tokenizer.decode(r)) for r in x.tolist()]

    def initial(self, n: int, prompt: Any = None, x_init: torch.Tensor | None = None, mask_char: str | None = None,
                device=None) -> torch.Tensor:
        """(n, L) starting sequences: `x_init` as given (mask id = V at the positions to generate), or all
        masked with `prompt` (a string, a list of ids or a (P,) / (n, P) tensor) fixed at the start; in a
        string prompt, `mask_char` marks positions to fill (infilling)."""
        V, L = self.vocab_size, self.seq_len
        device = device or self._device()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected an int >= 1 (number of sequences), found {n!r}")
        if x_init is not None:
            if prompt is not None:
                raise ValueError("prompt, x_init: give one of them (x_init holds the fixed tokens itself)")
            x = torch.as_tensor(x_init)
            if x.ndim != 2 or x.shape[1] != L:
                raise ValueError(f"x_init: expected shape (n, {L}), found {tuple(x.shape)}")
            return x.to(device).long()
        x = torch.full((n, L), V, dtype=torch.long, device=device)
        if prompt is None:
            return x
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("prompt: a text prompt needs a model with a tokenizer; pass token ids instead")
            parts = prompt.split(mask_char) if mask_char else [prompt]
            ids: list[int] = []
            for i, part in enumerate(parts):
                ids += self.tokenizer.encode(part, "prompt") + ([V] if i < len(parts) - 1 else [])
            p = torch.tensor(ids, dtype=torch.long)
        else:
            p = torch.as_tensor(prompt).long()
        if p.ndim == 1:
            p = p[None].expand(n, -1)
        if p.ndim != 2 or p.shape[0] != n:
            raise ValueError(f"prompt: expected a (P,) or ({n}, P) tensor of token ids, found {tuple(p.shape)}")
        if p.shape[1] > L:
            raise ValueError(f"prompt: {p.shape[1]} tokens, longer than the model's sequence length {L}")
        if p.shape[1] == L and not bool((p == V).any()):
            raise ValueError(f"prompt: {L} tokens fill the whole sequence; nothing is left to generate")
        x[:, :p.shape[1]] = p.to(device)
        return x

    def _end_at_eos(self, x: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
        """Generated positions after the first EOS become EOS (variable-length output ends there)."""
        if self.eos_id is None:
            return x
        after = ((x == self.eos_id).long().cumsum(1) - (x == self.eos_id).long()) > 0
        return torch.where(after & free, torch.full_like(x, self.eos_id), x)


class BlockCache:
    """The clean prefix of block-by-block sampling as keys and values per layer (a KV cache) of a block-causal
    `SeqTransformer`. A committed block is pending until the next `denoise`, which runs it together with the new
    block in one call (the pending block attends to the cache and itself, the new block to both), so sampling
    costs one call per denoising step. The `state` protocol of `scoresde.samplers.block`."""

    def __init__(self, net: nn.Module):
        if not getattr(net, "block_size", 0):
            raise ValueError("net: a KV cache needs a block-causal network (block_size > 0)")
        self.net, self.past, self.cached, self.pending = net, None, 0, None

    def denoise(self, xb: torch.Tensor, t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        P = 0 if self.pending is None else self.pending.shape[1]
        if self.cached + P != lo:
            raise ValueError(f"lo: the cache holds positions 0..{self.cached + P - 1}, found a block at {lo}")
        x = xb if self.pending is None else torch.cat([self.pending, xb], 1)
        logits, kv = self.net.forward_cached(x, self.cached, self.past)
        if P:                                                  # the pending block's keys / values join the cache
            new = [(k[:, :, :P], v[:, :, :P]) for k, v in kv]
            self.past = new if self.past is None else [(torch.cat([pk, k], 2), torch.cat([pv, v], 2))
                                                        for (pk, pv), (k, v) in zip(self.past, new)]
            self.cached, self.pending = self.cached + P, None
        return logits[:, P:]

    def commit(self, xb: torch.Tensor, lo: int, hi: int) -> None:
        self.pending = xb if self.pending is None else torch.cat([self.pending, xb], 1)

    def select(self, rows: torch.Tensor) -> None:
        if self.past is not None:
            self.past = [(k[rows], v[rows]) for k, v in self.past]
        if self.pending is not None:
            self.pending = self.pending[rows]


class MaskedLM(_TokenModel):
    """A masked diffusion language model: network + `MaskedProcess` (+ tokenizer, EOS id, language); a block
    diffusion model with a block-causal network and a `BlockMaskedProcess` of the same block size."""

    def __init__(self, net: nn.Module, process: MaskedProcess, tokenizer: CharTokenizer | None = None,
                 eos_id: int | None = None, language=None):
        super().__init__(net, process.vocab_size, tokenizer, eos_id, language)
        if net.causal:
            raise ValueError("net: a masked diffusion model needs a bidirectional network (seq_transformer), "
                             "found a causal one")
        self.block_size = int(getattr(net, "block_size", 0))
        if self.block_size != int(getattr(process, "block_size", 0)):
            raise ValueError(f"process: expected a BlockMaskedProcess of block_size = {self.block_size} (the "
                             f"network's), found block_size = {getattr(process, 'block_size', 0)}")
        self.process = process
        self.time_conditioning = bool(net.time_conditioning)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, x0: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, L, V) of p_theta(x_0 | x_t); t is used only by a time-conditioned network; `x0` (block
        diffusion training) is the clean sequence, the prefix each block of x_t is denoised against."""
        if self.block_size:
            return self.net(x, None, x0)
        return self.net(x, t if self.time_conditioning else None)

    @torch.no_grad()
    def sample(self, n: int = 1, *, sampler: str = "mdlm", steps: int | None = None, prompt: Any = None,
               x_init: torch.Tensor | None = None, mask_char: str | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, stats: dict | None = None, progress: bool = False,
               length: int | None = None, **options: Any) -> torch.Tensor:
        """(n, L) token ids: `sampler` ("mdlm" | "llada" | "remdm", options e.g. remasking, block_length, cache,
        eta) with `steps` (default L); prompt / x_init / mask_char as in `initial`. A block diffusion model
        samples block by block with a KV cache, `steps` in all over `length` tokens (default L; longer with
        rotary positions), and stops each row after a block holding EOS (the rest of the row is EOS)."""
        fn = DISCRETE_SAMPLERS[sampler]
        x = self.initial(n, prompt, x_init, mask_char)
        if self.block_size:
            if length is not None:
                check_int("length", length)
                if length < self.seq_len:
                    raise ValueError(f"length: expected at least the model's sequence length {self.seq_len}, "
                                     f"found {length}")
                x = torch.cat([x, torch.full((n, length - self.seq_len), self.vocab_size, dtype=x.dtype,
                                             device=x.device)], 1)
            out = sample_blocks(BlockCache(self.net), x, self.process, block_size=self.block_size,
                                steps=x.shape[1] if steps is None else steps, sampler=sampler,
                                temperature=temperature, eos_id=self.eos_id, generator=generator, stats=stats,
                                progress=progress, **options)
            if self.eos_id is None:
                return out
            free = x == self.process.mask_id
            return self._end_at_eos(torch.where(out == self.process.mask_id, self.eos_id, out), free)
        if length is not None:
            raise ValueError("length: only block diffusion models (block_size > 0) generate other lengths")
        if sampler == "mdlm":
            options.setdefault("cache", not self.time_conditioning)
        out = fn(self, x, self.process, steps=self.seq_len if steps is None else steps, temperature=temperature,
                 generator=generator, stats=stats, progress=progress, **options)
        return self._end_at_eos(out, x == self.process.mask_id)

    @torch.no_grad()
    def nelbo(self, x: torch.Tensor, *, draws: int = 4, estimator: str = "count", batch_size: int = 256,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) the NELBO in nats per token (an upper bound on -log p_theta / L), `draws` mask draws each."""
        x = self.process.check_tokens(torch.as_tensor(x), "x")
        if x.shape[1] != self.seq_len:
            raise ValueError(f"x: expected sequences of {self.seq_len} tokens, found {x.shape[1]}")
        x = x.to(self._device())
        return torch.cat([self.process.nelbo(self, xb, draws=draws, estimator=estimator, generator=generator)
                          for xb in x.split(batch_size)])


class AutoregressiveLM(_TokenModel):
    """A left-to-right language model over the same tokens (the begin token is the id V)."""

    def __init__(self, net: nn.Module, vocab_size: int, tokenizer: CharTokenizer | None = None,
                 eos_id: int | None = None, language=None):
        super().__init__(net, vocab_size, tokenizer, eos_id, language)
        if not net.causal:
            raise ValueError("net: an autoregressive model needs a causal network (causal_transformer)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, L, V): position i is p(x_i | x_<i)."""
        bos = torch.full_like(x[:, :1], self.vocab_size)
        return self.net(torch.cat([bos, x[:, :-1]], 1))

    @torch.no_grad()
    def nll(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """(B,) exact -log p(x) in nats per token."""
        x = torch.as_tensor(x).long().to(self._device())
        out = []
        for xb in x.split(batch_size):
            logits = self(xb)
            out.append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), xb, reduction="none").mean(1))
        return torch.cat(out)

    @torch.no_grad()
    def sample(self, n: int = 1, *, prompt: Any = None, temperature: float = 1.0,
               generator: torch.Generator | None = None, stats: dict | None = None, progress: bool = False,
               **options: Any) -> torch.Tensor:
        """(n, L) token ids drawn left to right (L network calls, no cache); a prompt is a fixed prefix."""
        if options:
            raise ValueError(f"sampler options {sorted(options)}: an autoregressive model samples left to right "
                             "and takes only prompt and temperature")
        x = self.initial(n, prompt)
        V = self.vocab_size
        first = int((x == V).any(0).nonzero()[0, 0]) if bool((x == V).any()) else self.seq_len
        from tqdm.auto import trange
        for i in trange(first, self.seq_len, disable=not progress, desc="autoregressive", leave=False):
            draw = categorical(self(torch.where(x == V, 0, x))[:, i], temperature, generator)
            x[:, i] = torch.where(x[:, i] == V, draw, x[:, i])
        if stats is not None:
            stats.update(nfe=self.seq_len - first, nfe_per_sequence=float(self.seq_len - first))
        return self._end_at_eos(x, self.initial(n, prompt) == V)


def build_token_model(meta: dict[str, Any], device: Any = None, *, on_meta: bool = False):
    """(model, process) described by a token task's checkpoint metadata (process None for autoregressive),
    with freshly initialised weights (the network on the meta device, shapes only, with `on_meta`). The
    sizes are bounded first (`check_meta_sizes`: vocabulary, sequence length, depth, width, ...)."""
    check_meta_sizes(meta)
    tok = meta["tokens"]
    V = int(tok["vocab_size"])
    tokenizer = CharTokenizer.from_config(tok["tokenizer"]) if tok.get("tokenizer") else None
    language = get_language(**tok["language"]) if tok.get("language") else None
    with torch.device("meta") if on_meta else contextlib.nullcontext():
        net = get_model(meta["model"]["name"], **meta["model"]["config"])
    if meta.get("task") == "autoregressive":
        model, process = AutoregressiveLM(net, V, tokenizer, tok.get("eos_id"), language), None
    else:
        P = meta["process"]
        process = (BlockMaskedProcess(V, P["block_size"], P["schedule"], P["eps"]) if P.get("block_size") else
                   MaskedProcess(V, P["schedule"], P["eps"]))
        model = MaskedLM(net, process, tokenizer, tok.get("eos_id"), language)
    return (model.to(device) if device is not None else model), process
