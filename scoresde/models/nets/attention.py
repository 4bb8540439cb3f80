"""Cross-attention to a token sequence: LDM's spatial transformer and the attention it is made of.

Latent Diffusion (Rombach et al. 2022, arXiv:2112.10752, Sec. 3.3) conditions a U-Net on a token
sequence tau(y) (M x d_tau, e.g. a text encoder's hidden states) by cross-attention,

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V,   Q = W_Q phi(z_t),  K = W_K tau(y),  V = W_V tau(y),

with phi(z_t) the flattened U-Net features. Its "spatial transformer" block is: GroupNorm, a linear
projection in, `depth` transformer blocks (LayerNorm + self-attention, LayerNorm + cross-attention to the
context, LayerNorm + GEGLU feed-forward, Shazeer 2020 arXiv:2002.05202, each residual), a zero-initialised
projection out, and a residual around the whole (so a new block is the identity). PixArt-alpha (Chen et
al. 2023, arXiv:2310.00426, Sec. 2.3) adds the same cross-attention after the self-attention of each
DiT block (`models/nets/dit.py`).

Padding: the context comes with a (B, L) bool mask (True = a token). Attention is
`F.scaled_dot_product_attention` with that boolean mask. A row whose mask has no token at all (the null
condition of `Cond.null_like`: zeros, no token) attends to nothing: its cross-attention output is zero,
so the block reduces to its self-attention and feed-forward path, exactly as when no context is given
(`context=None`). That is the documented choice for the null condition of these networks: "no token" is
"no cross-attention", never a softmax over padding (which would be an arbitrary average) and never NaN
(a softmax over an all-masked row is 0/0; here such rows attend to every position, finite, and are then
multiplied by zero). A text encoder that wants a learned null token encodes "" to a real token instead
(`models/text.py`: the BOS token).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scoresde._common.validation import check_int
from scoresde.models.nets.primitives import group_norm, linear


__all__ = ["masked_attention", "CrossAttention", "GEGLU", "FeedForward", "TransformerBlock", "SpatialTransformer",
           "check_context", "context_of", "sincos_pos_embed_2d"]


def sincos_pos_embed_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """(h*w, dim) fixed 2-D sine-cosine position embedding of a row-major h x w token grid, float64.

    Channels [0, dim/2) encode the column index and [dim/2, dim) the row index (MAE's layout); each
    half is [sin(pos omega_k), cos(pos omega_k)] with omega_k = 10000^(-k / (dim/4)), k < dim/4.
    """
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))          # (dim/4,)
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")

    def embed_1d(pos):                                                                 # (h*w,) -> (h*w, dim/2)
        arg = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(arg), np.cos(arg)], axis=1)

    return torch.from_numpy(np.concatenate([embed_1d(cols), embed_1d(rows)], axis=1))


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over the keys where `mask` is True; rows whose mask is all False give 0.

    q (B, heads, N, d), k and v (B, heads, L, d), mask (B, L) bool or None (every key). Returns (B, heads, N, d).
    """
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v)
    has = mask.any(dim=1)                                              # (B,): the row has a token
    safe = mask | ~has[:, None]                                        # an empty row attends everywhere (finite) ...
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe[:, None, None, :])
    return out * has.to(out.dtype)[:, None, None, None]                # ... and is zeroed: attends to nothing


def check_context(net: nn.Module, context: torch.Tensor | None, mask: torch.Tensor | None, batch: int) -> None:
    """A network's context (B, L, context_dim) and mask (B, L): the batch of x and the width it was built for."""
    if context is None:
        return
    D = net.context_dim
    if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != D:
        raise ValueError(f"cond.context: expected shape ({batch}, L, {D}) (the batch of x, this "
                         f"{type(net).__name__}'s context_dim {D}), found {tuple(context.shape)}")
    if mask is not None and mask.shape != context.shape[:2]:
        raise ValueError(f"cond.context_mask: expected shape {tuple(context.shape[:2])}, found {tuple(mask.shape)}")


def context_of(net: nn.Module, cond, batch: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(context, mask) a network built with `context_dim` reads from its condition (None, None when absent:
    the null condition). A network built without `context_dim` refuses a context."""
    context = getattr(cond, "context", None)
    mask = getattr(cond, "context_mask", None)
    if context is not None and getattr(net, "context_dim", None) is None:
        raise ValueError(f"cond.context: this {type(net).__name__} has no cross-attention (context_dim=None); build "
                         "it with context_dim=D to condition it on a token sequence")
    check_context(net, context, mask, batch)
    return context, mask


class CrossAttention(nn.Module):
    """Multi-head attention of queries x (B, N, dim) to a context (B, L, context_dim), or to x itself.

    q, k, v projections without bias (LDM's), the output projection with bias; `init_scale=0` zero-initialises
    the output (a new branch contributes nothing)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, init_scale: float = 1.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads: expected a divisor of the width {dim}, found {heads}")
        self.heads = heads
        kv = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv, dim, bias=False)
        self.to_v = nn.Linear(kv, dim, bias=False)
        self.to_out = linear(dim, dim, init_scale=init_scale)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        c = x if context is None else context.to(x.dtype)
        h, d = self.heads, D // self.heads
        q = self.to_q(x).view(B, N, h, d).transpose(1, 2)                        # (B, h, N, d)
        k = self.to_k(c).view(B, c.shape[1], h, d).transpose(1, 2)               # (B, h, L, d)
        v = self.to_v(c).view(B, c.shape[1], h, d).transpose(1, 2)
        out = masked_attention(q, k, v, mask)                                    # softmax(q k^T / sqrt(d)) v
        out = self.to_out(out.transpose(1, 2).reshape(B, N, D))
        if mask is not None:             # a row without a token attends to nothing: the branch adds 0 (bias too)
            out = out * mask.any(dim=1).to(out.dtype)[:, None, None]
        return out


class GEGLU(nn.Module):
    """x -> a * GELU(g), [a, g] = W x + b (Shazeer 2020, arXiv:2002.05202), dim -> inner."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU (or GELU) to `mult * dim`, then back to dim."""

    def __init__(self, dim: int, mult: float = 4.0, glu: bool = True):
        super().__init__()
        inner = max(1, int(round(mult * dim)))
        act = GEGLU(dim, inner) if glu else nn.Sequential(nn.Linear(dim, inner), nn.GELU())
        self.net = nn.Sequential(act, nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """LDM's BasicTransformerBlock: h += SelfAttn(LN(h)); h += CrossAttn(LN(h), context); h += FF(LN(h))."""

    def __init__(self, dim: int, heads: int, context_dim: int, ff_mult: float = 4.0, glu: bool = True):
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), CrossAttention(dim, heads)
        self.norm2, self.attn2 = nn.LayerNorm(dim), CrossAttention(dim, heads, context_dim)
        self.norm3, self.ff = nn.LayerNorm(dim), FeedForward(dim, ff_mult, glu)

    def forward(self, h: torch.Tensor, context: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        h = h + self.attn1(self.norm1(h))
        if context is not None:          # no context: the null condition, attention to nothing adds 0
            h = h + self.attn2(self.norm2(h), context, mask)
        return h + self.ff(self.norm3(h))


class SpatialTransformer(nn.Module):
    """LDM's spatial transformer on (B, C, H, W) features conditioned on a context (B, L, context_dim).

    x + proj_out(blocks(proj_in(GN(x)) as H*W tokens)); proj_out starts at zero (the block starts as the identity).
    `pos=True` adds the fixed 2-D sine-cosine embedding of each token's place (row, column; DiT's and
    PixArt-alpha's, `sincos_pos_embed_2d`) to the tokens after proj_in: LDM's block has none, so its queries
    know where they are only through the convolutions' zero padding, and a prompt that says where things go
    ("three left of eight") is then slow to learn; with it, a query's place is in its features from the start.
    """

    def __init__(self, channels: int, context_dim: int, heads: int = 4, depth: int = 1, num_groups: int | None = None,
                 ff_mult: float = 4.0, glu: bool = True, pos: bool = False):
        super().__init__()
        if not isinstance(pos, bool):
            raise TypeError(f"pos: expected a bool, found {pos!r}")
        self.pos = pos
        self.context_dim = check_int("context_dim", context_dim)
        self.norm = group_norm(channels, num_groups)
        self.proj_in = linear(channels, channels)
        self.blocks = nn.ModuleList(TransformerBlock(channels, heads, context_dim, ff_mult, glu)
                                    for _ in range(check_int("transformer_depth", depth)))
        self.proj_out = linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)                                     # LDM's zero_module(proj_out)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))                # (B, HW, C)
        if self.pos:
            h = h + self._pos_embed(H, W, h)
        for block in self.blocks:
            h = block(h, context, mask)
        return x + self.proj_out(h).transpose(1, 2).reshape(B, C, H, W)

    def _pos_embed(self, H: int, W: int, like: torch.Tensor) -> torch.Tensor:
        """(HW, C) the grid's embedding, cached per grid, device and dtype (no parameters: nothing to load)."""
        key = (H, W, like.device, like.dtype)
        if getattr(self, "_pos_key", None) != key:
            self._pos_key = key
            C = like.shape[-1]
            emb = F.pad(sincos_pos_embed_2d(C - C % 4, H, W), (0, C % 4))           # widths not of 4: zeros last
            self._pos_cache = emb.to(like.device, like.dtype)
        return self._pos_cache

