"""Token-sequence transformers: bidirectional (masked diffusion) and causal (autoregressive baseline).

A pre-LayerNorm transformer encoder (Vaswani et al. 2017, arXiv:1706.03762; pre-LN as in GPT-2 and the
DiT backbone of MDLM, Sahoo et al. 2024, arXiv:2406.07524) over tokens (B, L) returning logits
(B, L, num_outputs). Positions are rotary (RoPE, Su et al. 2021, arXiv:2104.09864) or learned.
Attention is `F.scaled_dot_product_attention` (flash / memory-efficient kernels on CUDA), with no mask
for `seq_transformer` (every token sees every other: the masked-diffusion denoiser, as in LLaDA,
Nie et al. 2025, arXiv:2502.09992) and a causal mask for `causal_transformer` (the same network made
autoregressive, for equal-size comparisons). Time conditioning is optional (MDLM finds it unnecessary
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

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, L, C = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, L, d)
        if rope is not None:
            q, k = _rotary(q, *rope), _rotary(k, *rope)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        h = h + self.drop(self.proj(a.transpose(1, 2).reshape(B, L, C)))
        return h + self.drop(self.mlp(self.ln2(h)))


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
        dropout: dropout rate of attention and residual branches.
    """

    def __init__(self, vocab_size: int | None = None, seq_len: int | None = None, num_outputs: int | None = None, width: int = 128, depth: int = 4,
                 heads: int = 4, mlp_ratio: float = 4.0, positions: str = "rotary", time_conditioning: bool = False,
                 causal: bool = False, dropout: float = 0.0, data_shape=None):
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
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout: expected a rate in [0, 1), found {dropout!r}")
        self.config = dict(vocab_size=vocab_size, seq_len=seq_len, num_outputs=num_outputs, width=width, depth=depth,
                           heads=heads, mlp_ratio=float(mlp_ratio), positions=positions,
                           time_conditioning=bool(time_conditioning), causal=bool(causal), dropout=float(dropout))
        self.data_shape = (seq_len,)
        self.vocab_size, self.seq_len, self.num_outputs = vocab_size, seq_len, num_outputs
        self.time_conditioning, self.causal = bool(time_conditioning), bool(causal)
        self.embed = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.zeros(seq_len, width)) if positions == "learned" else None
        self.temb = (nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
                     if time_conditioning else None)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout, causal) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_outputs)
        d = width // heads                      # rotary angles: position p, frequency 10000^(-2j/d)
        inv = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
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

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] > self.seq_len:
            raise ValueError(f"x: expected token ids of shape (B, L) with L <= {self.seq_len}, found {tuple(x.shape)}")
        L = x.shape[1]
        h = self.embed(x)                                                                  # (B, L, C)
        if self.pos is not None:
            h = h + self.pos[:L]
        if self.temb is not None:
            if t is None:
                raise ValueError("t: this network is time-conditioned (time_conditioning=True); pass t of shape (B,)")
            h = h + self.temb(sinusoidal_embedding(1000 * t.float(), h.shape[-1]).to(h.dtype))[:, None]
        rope = (self.rope_cos[:L], self.rope_sin[:L]) if self.pos is None else None
        for blk in self.blocks:
            h = blk(h, rope)
        return self.head(self.ln_f(h)).float()


def causal_transformer(**config) -> SeqTransformer:
    """`SeqTransformer` with causal attention: logits at position i depend on tokens 0..i only."""
    if not config.get("causal", True):
        raise ValueError("causal: causal_transformer is causal; use seq_transformer for a bidirectional network")
    return SeqTransformer(**{**config, "causal": True})
