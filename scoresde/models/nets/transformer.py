"""Token-sequence transformers: bidirectional (masked diffusion) and causal (autoregressive baseline).

A pre-LayerNorm transformer encoder (Vaswani et al. 2017, arXiv:1706.03762; pre-LN as in GPT-2 and the
DiT backbone of MDLM, Sahoo et al. 2024, arXiv:2406.07524) over tokens (B, L) returning logits
(B, L, num_outputs). Positions are rotary (RoPE, Su et al. 2021, arXiv:2104.09864) or learned.
Attention is `F.scaled_dot_product_attention` (flash / memory-efficient kernels on CUDA), with no mask
for `seq_transformer` (every token sees every other: the masked-diffusion denoiser, as in LLaDA,
Nie et al. 2025, arXiv:2502.09992) and a causal mask for `causal_transformer` (the same network made
autoregressive, for equal-size comparisons). With `block_size` b > 0 the attention is block-causal (block
diffusion, BD3-LM, Arriola et al. 2025, arXiv:2503.09573): position i sees position j iff
floor(j / b) <= floor(i / b); `forward(x_t, x0=x_0)` is BD3-LM's vectorised training pass over x_t (+) x_0 (the
noisy block sees itself and the clean blocks before it), and `forward_cached` runs new blocks against the keys and
values of a clean prefix (the KV cache of block-by-block sampling). Time conditioning is optional (MDLM finds it unnecessary
for masked diffusion; without it the sampler's caching is valid): sinusoidal features of t, embedded
and added to the token embeddings.

Like the other networks: no host synchronisation in `forward`, bf16-autocast safe (logits returned in
float32), `config` rebuilds the module with `get_model(name, **config)`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scoresde._common.validation import check_int
from scoresde.models.nets.layers import sinusoidal_embedding


__all__ = ["SeqTransformer", "causal_transformer", "POSITIONS"]

POSITIONS = ("rotary", "learned")


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_1, x_2) of the head dims by the position angle: [x_1 cos - x_2 sin, x_2 cos + x_1 sin]."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(nn.Module):
    """h = h + Attn(LN(h));  h = h + MLP(LN(h))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float, causal: bool):
        super().__init__()
        self.heads, self.causal, self.dropout = heads, causal, dropout
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        hidden = int(round(mlp_ratio * width))
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                mask: torch.Tensor | None = None, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        """(h, (k, v) of these tokens); `mask` (L, L_past + L) boolean (True: attend), `past` cached (k, v)."""
        B, L, C = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, L, d)
        if rope is not None:
            q, k = _rotary(q, *rope), _rotary(k, *rope)
        kv = (k, v)
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal and mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        h = h + self.drop(self.proj(a.transpose(1, 2).reshape(B, L, C)))
        return h + self.drop(self.mlp(self.ln2(h))), kv


class SeqTransformer(nn.Module):
    """Transformer over token ids: forward(x (B, L) long, t (B,) or None) -> logits (B, L, num_outputs), float32.

    Args:
        vocab_size: input vocabulary (for masked diffusion: the V tokens plus the mask).
        seq_len: L, the sequence length (the rotary table / learned positions cover it).
        num_outputs: size of the output distribution (default vocab_size; masked diffusion: V).
        width, depth, heads: model width, number of blocks, attention heads (width % heads == 0).
        mlp_ratio: hidden width of the MLP / width.
        positions: "rotary" or "learned".
        time_conditioning: add an embedding of t (sinusoidal features of 1000 t) to the token embeddings.
        causal: causal attention (position i sees positions <= i).
        block_size: b > 0: block-causal attention (block diffusion); 0: none. Not with causal or time_conditioning.
        dropout: dropout rate of attention and residual branches.
    """

    def __init__(self, vocab_size: int | None = None, seq_len: int | None = None, num_outputs: int | None = None, width: int = 128, depth: int = 4,
                 heads: int = 4, mlp_ratio: float = 4.0, positions: str = "rotary", time_conditioning: bool = False,
                 causal: bool = False, dropout: float = 0.0, block_size: int = 0, data_shape=None):
        super().__init__()
        if vocab_size is None or seq_len is None:
            raise TypeError("vocab_size, seq_len: a sequence transformer models tokens and needs both; train it with "
                            "task = \"masked\" or \"autoregressive\" (--task masked), which sets them from the data")
        if data_shape is not None and list(data_shape) != [seq_len]:
            raise ValueError(f"data_shape: a sequence network takes (seq_len,) = ({seq_len},), found {data_shape!r}")
        vocab_size, seq_len = check_int("vocab_size", vocab_size, minimum=2), check_int("seq_len", seq_len)
        num_outputs = check_int("num_outputs", vocab_size if num_outputs is None else num_outputs)
        width, depth, heads = check_int("width", width), check_int("depth", depth), check_int("heads", heads)
        if width % heads or (width // heads) % 2:
            raise ValueError(f"width: expected a multiple of 2 heads = {2 * heads} (even head size), found {width}")
        if positions not in POSITIONS:
            raise ValueError(f"positions: expected one of {', '.join(POSITIONS)}, found {positions!r}")
        block_size = check_int("block_size", block_size, minimum=0)
        if block_size and (causal or time_conditioning):
            raise ValueError(f"block_size: block-causal attention (block_size = {block_size}) is its own mask and "
                             f"takes no time input; found causal = {causal}, time_conditioning = {time_conditioning}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout: expected a rate in [0, 1), found {dropout!r}")
        self.config = dict(vocab_size=vocab_size, seq_len=seq_len, num_outputs=num_outputs, width=width, depth=depth,
                           heads=heads, mlp_ratio=float(mlp_ratio), positions=positions,
                           time_conditioning=bool(time_conditioning), causal=bool(causal), dropout=float(dropout),
                           block_size=block_size)
        self.data_shape = (seq_len,)
        self.vocab_size, self.seq_len, self.num_outputs = vocab_size, seq_len, num_outputs
        self.time_conditioning, self.causal, self.block_size = bool(time_conditioning), bool(causal), block_size
        self.embed = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.zeros(seq_len, width)) if positions == "learned" else None
        self.temb = (nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
                     if time_conditioning else None)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout, causal) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_outputs)
        d = width // heads                      # rotary angles: position p, frequency 10000^(-2j/d)
        inv = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
        self.register_buffer("rope_inv", inv, persistent=False)
        ang = torch.arange(seq_len, dtype=torch.float32)[:, None] * inv[None]            # (L, d/2)
        self.register_buffer("rope_cos", ang.cos(), persistent=False)
        self.register_buffer("rope_sin", ang.sin(), persistent=False)
        self._init(depth)

    def _init(self, depth: int) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual projections / sqrt(2 depth); the head starts at zero
        (uniform predictions)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for b in self.blocks:
            for lin in (b.proj, b.mlp[2]):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * depth))
        if self.pos is not None:
            nn.init.normal_(self.pos, std=0.02)
        nn.init.zeros_(self.head.weight)

    def _embed(self, x: torch.Tensor, pos: torch.Tensor, last: int, t: torch.Tensor | None):
        """Token (+ learned position, + time) embeddings of x at positions `pos` (the largest: `last`, known on the
        host: no synchronisation), and the rotary table there."""
        h = self.embed(x)                                                                  # (B, L, C)
        if self.pos is not None:
            if last >= self.seq_len:
                raise ValueError(f"x: learned positions cover {self.seq_len} tokens, found position {last}")
            h = h + self.pos[pos]
        if self.temb is not None:
            if t is None:
                raise ValueError("t: this network is time-conditioned (time_conditioning=True); pass t of shape (B,)")
            h = h + self.temb(sinusoidal_embedding(1000 * t.float(), h.shape[-1]).to(h.dtype))[:, None]
        if self.pos is not None:
            return h, None
        if last < self.seq_len:
            return h, (self.rope_cos[pos], self.rope_sin[pos])
        ang = pos.float()[:, None] * self.rope_inv[None]                                  # beyond the table
        return h, (ang.cos(), ang.sin())

    def _block_mask(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """(Lq, Lk) block-causal: query i sees key j iff block(j) <= block(i)."""
        b = self.block_size
        return (k_pos[None] // b) <= (q_pos[:, None] // b)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, x0: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, L, num_outputs). With block_size and `x0` (the clean sequence), BD3-LM's vectorised pass:
        the input is x (+) x0 (2L tokens, both at positions 0..L-1) under the mask
            x_t block i -> x_t block i;  x_t block i -> x_0 blocks < i;  x_0 block i -> x_0 blocks <= i,
        so the logits of block i of x are those of the network on (x_0 blocks < i, x_t block i) alone."""
        if x.ndim != 2 or x.shape[1] > self.seq_len:
            raise ValueError(f"x: expected token ids of shape (B, L) with L <= {self.seq_len}, found {tuple(x.shape)}")
        L = x.shape[1]
        pos = torch.arange(L, device=x.device)
        mask = None
        if x0 is not None:
            if not self.block_size:
                raise ValueError("x0: the clean sequence is an input of block diffusion networks (block_size > 0)")
            if x0.shape != x.shape:
                raise ValueError(f"x0: expected the shape of x, {tuple(x.shape)}, found {tuple(x0.shape)}")
            blk = pos // self.block_size
            same, before = blk[:, None] == blk[None], blk[None] < blk[:, None]
            mask = torch.cat([torch.cat([same, before], 1),                               # queries of x_t
                              torch.cat([torch.zeros_like(same), same | before], 1)], 0)  # queries of x_0
            x, pos = torch.cat([x, x0], 1), torch.cat([pos, pos])
        elif self.block_size:
            mask = self._block_mask(pos, pos)
        h, rope = self._embed(x, pos, L - 1, t)
        for blk_ in self.blocks:
            h, _ = blk_(h, rope, mask)
        return self.head(self.ln_f(h[:, :L])).float()

    def forward_cached(self, x: torch.Tensor, start: int, past: list | None = None):
        """(logits (B, n, num_outputs), [(k, v)] per layer of the n new tokens): tokens x (B, n) at positions
        start .. start+n-1 attend to the cached keys / values `past` of positions 0 .. start-1 (a clean prefix)
        and to each other block-causally. The KV cache of block-by-block sampling (BD3-LM)."""
        if not self.block_size:
            raise ValueError("forward_cached: a KV cache needs block-causal attention (block_size > 0)")
        n = x.shape[1]
        pos = torch.arange(start, start + n, device=x.device)
        mask = self._block_mask(pos, torch.arange(start + n, device=x.device))
        h, rope = self._embed(x, pos, start + n - 1, None)
        new = []
        for i, blk_ in enumerate(self.blocks):
            h, kv = blk_(h, rope, mask, past[i] if past else None)
            new.append(kv)
        return self.head(self.ln_f(h)).float(), new


def causal_transformer(**config) -> SeqTransformer:
    """`SeqTransformer` with causal attention: logits at position i depend on tokens 0..i only."""
    if not config.get("causal", True):
        raise ValueError("causal: causal_transformer is causal; use seq_transformer for a bidirectional network")
    return SeqTransformer(**{**config, "causal": True})
