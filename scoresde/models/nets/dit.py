"""Diffusion Transformer (DiT), Peebles & Xie (2023), "Scalable Diffusion Models with Transformers",
arXiv:2212.09748.

The image (or latent) x (B, C, H, W) is cut into p x p patches, each linearly embedded to a token of
width D (a stride-p convolution), plus a fixed 2-D sine-cosine position embedding (MAE, He et al.
2021, arXiv:2111.06377). The noise-conditioning value c (DiT's timestep 0..999; ScoreModel's
999 t for VP) passes through sinusoidal frequency features and a 2-layer MLP; a class embedding
(with a null label for classifier-free guidance, Ho & Salimans 2022, arXiv:2207.12598) is added.
The sum conditions every transformer block by adaLN-Zero: a linear map of SiLU(cond) gives the
shift, scale and gate of each residual branch, zero-initialised, so every block starts as the
identity; the adaLN final layer is zero-initialised too, so a new network outputs exactly zero.

With `context_dim=D` every block also attends to a token sequence (cond.context (B, L, D), its padding
mask cond.context_mask) by a cross-attention placed after the self-attention, as PixArt-alpha does
(Chen et al. 2023, arXiv:2310.00426, Sec. 2.3): x <- x + CrossAttn(x, context), no adaLN on that branch,
its output projection zero-initialised (a new network still outputs exactly zero). A condition without a
context (the null condition) skips it (`models/nets/attention.py` documents the choice).

Module and parameter names follow the official facebookresearch/DiT `models.py`, so its state
dicts (e.g. DiT-XL-2-256x256.pt) load with `strict=True`; `forward(x, c, y)` returns what the
official `forward(x, t, y)` returns: all output channels (2C with `learn_sigma`: [eps, v]).
Presets `DiT-S/2` ... `DiT-XL/8` (depth / width / heads: S 12/384/6, B 12/768/12, L 24/1024/16,
XL 28/1152/16; patch 2, 4, 8). Attention runs through `F.scaled_dot_product_attention` (flash /
memory-efficient kernels on CUDA, bf16 autocast); the forward pass has no host synchronisation
on GPUs and no data-dependent Python control flow, so it is torch.compile friendly.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scoresde._common.validation import check_int, check_positive
from scoresde.models.conditioning import Cond
from scoresde.models.nets.attention import CrossAttention, context_of, sincos_pos_embed_2d
from scoresde.models.nets.image_input import image_input
from scoresde.models.nets.layers import (GaussianFourierProjection, check_data_shape, check_inputs, check_num_classes,
                                         check_unconditional, class_labels, cond_labels)


__all__ = ["DiT", "DIT_PRESETS", "timestep_embedding", "sincos_pos_embed_2d"]


# name -> (depth, hidden_size, num_heads, patch_size)   (Peebles & Xie 2023, Table 1)
_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
DIT_PRESETS = {f"DiT-{s}/{p}": dict(depth=d, hidden_size=h, num_heads=n, patch_size=p)
               for s, (d, h, n) in _SIZES.items() for p in (2, 4, 8)}


def timestep_embedding(c: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) -> (B, dim) DiT / GLIDE frequency features [cos(c w_k), sin(c w_k)], w_k = max_period^(-k / (dim/2)).

    Note the order (cos first) and the denominator dim/2, unlike DDPM's features (layers.sinusoidal_embedding).
    """
    half = dim // 2
    w = torch.exp(-math.log(max_period) * torch.arange(half, device=c.device, dtype=c.dtype) / half)
    arg = c[:, None] * w[None]                                               # (B, half)
    emb = torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)
    return F.pad(emb, (0, dim % 2))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (B, N, D) * (1 + scale) + shift, with per-sample (B, D) shift and scale."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, N, D) tokens, N = (H/p)(W/p) row-major: a stride-p p x p convolution."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous tokens (a no-op for channels_last): the residual stream keeps this layout, and a
        # transposed one would cost a copy before every LayerNorm and linear map
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()


class TimestepEmbedder(nn.Module):
    """c (B,) -> (B, D): frequency features (sinusoidal, or Gaussian Fourier for c = log sigma) + MLP."""

    def __init__(self, hidden_size: int, freq_dim: int = 256, embedding: str = "sinusoidal",
                 fourier_scale: float = 16.0, context_dim: int | None = None):
        super().__init__()
        self.freq_dim = freq_dim
        self.fourier = GaussianFourierProjection(freq_dim // 2, fourier_scale) if embedding == "fourier" else None
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        feat = timestep_embedding(c, self.freq_dim) if self.fourier is None else self.fourier(c)
        return self.mlp(feat.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels (B,) in [0, K) -> (B, D); row K of the table is the null label (when `null_label`).

    Label dropout for classifier-free guidance is the loss's business (`conditional_dsm_loss`), not
    the network's: the forward pass never drops labels. The range check runs on CPU tensors only,
    outside torch.compile (on a GPU it would synchronise the host; the embedding lookup asserts there).
    """

    def __init__(self, num_classes: int, hidden_size: int, null_label: bool = True):
        super().__init__()
        self.num_classes, self.null_label = num_classes, null_label
        # initialised by DiT.reset_parameters (N(0, 0.02)); no default init here, so a meta-device build is fast
        self.embedding_table = nn.Embedding(num_classes + int(null_label), hidden_size,
                                            _weight=torch.empty(num_classes + int(null_label), hidden_size))

    def forward(self, y, batch: int, device, name: str = "y") -> torch.Tensor:
        K, hi = self.num_classes, self.num_classes - 1 + int(self.null_label)
        what = f"labels in [0, {hi}]" + (f" ({K} = the null label)" if self.null_label else
                                         " (this network has no null label: built with null_label=False)")
        return self.embedding_table(class_labels(y, batch, device, hi, what, null=K if self.null_label else None,
                                                 name=name))


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (output laid out (3, heads, head_dim))."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                                 # (B, heads, N, head_dim)
        # softmax(q k^T / sqrt(head_dim)) v   (Vaswani et al. 2017, eq. 1)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    """fc2(GELU_tanh(fc1(x)))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (Peebles & Xie 2023, Sec. 3.2, Fig. 3)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, context_dim: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        if context_dim is not None:       # only then a module: the official state dicts keep their keys
            self.cross_attn = CrossAttention(dim, num_heads, context_dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(cond).chunk(6, dim=1)
        # x <- x + gate * F(LN(x) (1 + scale) + shift), for F = attention, then F = MLP
        x = torch.addcmul(x, gate1.unsqueeze(1), self.attn(modulate(self.norm1(x), shift1, scale1)))
        if context is not None:
            x = x + self.cross_attn(x, context, mask)        # PixArt-alpha: x <- x + CrossAttn(x, context)
        return torch.addcmul(x, gate2.unsqueeze(1), self.mlp(modulate(self.norm2(x), shift2, scale2)))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear map of each token to its p x p x C_out patch."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(cond).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Diffusion Transformer: forward(x, c, cond=None) with x (B, C, H, W), c (B,) and labels cond.labels (B,).

    Args:
        data_shape: (C, H, W); H and W divisible by the patch size (pixels or a VAE latent).
        preset: one of `DIT_PRESETS` ("DiT-S/2" ... "DiT-XL/8"): sets depth, hidden_size, num_heads
            and patch_size; any of those four given explicitly overrides the preset's value.
        depth, hidden_size, num_heads, patch_size: the architecture (default: DiT-S/2's);
            hidden_size divisible by num_heads and by 4 (the 2-D position embedding).
        mlp_ratio: MLP hidden width / hidden_size.
        num_classes: None (unconditional) or K: labels in [0, K), K the null label.
        learn_sigma: also output C variance channels (improved DDPM, arXiv:2102.09672), as the
            official checkpoints do; the score uses only the first C (eps) channels.
        null_label: whether the class table has the null row K (the official DiT has it iff
            class_dropout_prob > 0); without it there is no unconditional score (no guidance).
        embedding: "sinusoidal" (DiT's, for c = 999 t or DiT's timesteps) or "fourier" (for c = log sigma).
        fourier_scale: std of the Fourier frequencies ("fourier" only).
        context_dim: the width D of context tokens cond.context (B, L, D) for a cross-attention in every
            block (PixArt-alpha), or None (none).
        image_shape, image_upsample: an image condition cond.image (C_i, h, w), upsampled to (H, W) and
            concatenated after x before the patch embedding (SR3), its augmentation level cond.image_level
            embedded by a second timestep embedder added to the time embedding (models/nets/image_input.py).
    """

    def __init__(self, data_shape: Sequence[int] = (4, 32, 32), preset: str | None = None, *,
                 depth: int | None = None, hidden_size: int | None = None, num_heads: int | None = None,
                 patch_size: int | None = None, mlp_ratio: float = 4.0, num_classes: int | None = None,
                 learn_sigma: bool = False, null_label: bool = True, embedding: str = "sinusoidal",
                 fourier_scale: float = 16.0, context_dim: int | None = None, image_shape: Sequence[int] | None = None,
                 image_upsample: str = "bicubic"):
        super().__init__()
        if preset is not None and preset not in DIT_PRESETS:
            raise ValueError(f"preset: expected one of {list(DIT_PRESETS)} or None, found {preset!r}")
        arch = dict(DIT_PRESETS[preset or "DiT-S/2"])
        for k, v in dict(depth=depth, hidden_size=hidden_size, num_heads=num_heads, patch_size=patch_size).items():
            arch[k] = arch[k] if v is None else check_int(k, v)
        D, heads, p = arch["hidden_size"], arch["num_heads"], arch["patch_size"]
        if D % heads:
            raise ValueError(f"hidden_size: expected a multiple of num_heads={heads}, found {D}")
        if D % 4:
            raise ValueError(f"hidden_size: expected a multiple of 4 (the 2-D sin-cos position embedding), found {D}")
        self.data_shape = check_data_shape(data_shape, image=False)
        if len(self.data_shape) != 3:
            raise ValueError(f"data_shape: a DiT expects images or latents (C, H, W), found {data_shape!r}")
        C, H, W = self.data_shape
        if H % p or W % p:
            raise ValueError(f"data_shape: expected H and W divisible by patch_size={p}, found {H}x{W} "
                             f"(data_shape={self.data_shape!r})")
        mlp_ratio = check_positive("mlp_ratio", mlp_ratio)
        for name, flag in (("learn_sigma", learn_sigma), ("null_label", null_label)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name}: expected a bool, found {type(flag).__name__} {flag!r}")
        if embedding not in ("sinusoidal", "positional", "fourier"):
            raise ValueError(f"embedding: expected 'sinusoidal' or 'fourier', found {embedding!r}")
        self.num_classes = check_num_classes(num_classes)
        self.learn_sigma, self.patch_size, self.grid = learn_sigma, p, (H // p, W // p)
        self.in_channels, self.out_channels = C, 2 * C if learn_sigma else C
        self.config = dict(data_shape=list(self.data_shape), **arch, mlp_ratio=mlp_ratio, learn_sigma=learn_sigma,
                           embedding=embedding, fourier_scale=float(fourier_scale))
        if self.num_classes is not None:  # only then in the config, as for the other networks
            self.config.update(num_classes=self.num_classes, null_label=null_label)
        self.context_dim = None if context_dim is None else check_int("context_dim", context_dim)
        if self.context_dim is not None:
            self.config["context_dim"] = self.context_dim

        level = TimestepEmbedder(D, embedding="fourier" if embedding == "fourier" else "sinusoidal",
                                 fourier_scale=fourier_scale) if image_shape is not None else None
        self.image_in = image_input(self, image_shape, image_upsample, 0, None)
        if self.image_in is not None:
            self.image_in.level = level         # its own timestep embedder: c_level -> (B, D)
        self.x_embedder = PatchEmbed(C + (self.image_in.channels if self.image_in is not None else 0), D, p)
        self.t_embedder = TimestepEmbedder(D, embedding="fourier" if embedding == "fourier" else "sinusoidal",
                                           fourier_scale=fourier_scale)
        self.y_embedder = LabelEmbedder(self.num_classes, D, null_label) if self.num_classes is not None else None
        # fixed sin-cos table (set in reset_parameters), in the state dict as the official nn.Parameter
        # with requires_grad=False
        self.pos_embed = nn.Parameter(torch.empty(1, self.grid[0] * self.grid[1], D), requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(D, heads, mlp_ratio, self.context_dim) for _ in range(arch["depth"]))
        self.final_layer = FinalLayer(D, p, self.out_channels)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation: the fixed sin-cos position table, Xavier-uniform linear maps (and
        patch embedding), N(0, 0.02) label table and timestep MLP, zero adaLN maps and a zero output
        layer (output exactly 0).
        Nothing to do on the meta device (shapes only)."""
        if self.pos_embed.is_meta or self.final_layer.linear.weight.is_meta:
            return
        self.pos_embed.copy_(sincos_pos_embed_2d(self.pos_embed.shape[-1], *self.grid).unsqueeze(0))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.image_in is not None:            # the level embedding starts at zero: no effect before training
            nn.init.normal_(self.image_in.level.mlp[0].weight, std=0.02)
            nn.init.zeros_(self.image_in.level.mlp[2].weight)
        zero = [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1]]
        zero += [b.cross_attn.to_out for b in self.blocks if hasattr(b, "cross_attn")]   # PixArt: zero cross-attn out
        for ada in zero:
            nn.init.zeros_(ada.weight)
            nn.init.zeros_(ada.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C_out), features ordered (p_row, p_col, channel) -> (B, C_out, H, W)."""
        (h, w), p, c = self.grid, self.patch_size, self.out_channels
        x = x.reshape(x.shape[0], h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)      # (B, C, h, p, w, p)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, c: torch.Tensor, cond: Cond | torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W), c (B,) noise-conditioning value (DiT timestep), cond a Cond (its labels), (B,)
        labels (the official `forward(x, t, y)`) or None (null).

        Returns (B, C_out, H, W) in x's dtype: eps, followed by the variance channels with learn_sigma.
        """
        h, c = check_inputs(self, x, c, self.pos_embed.dtype)
        y, name = cond_labels(self, cond)
        ctx, mask = context_of(self, cond, x.shape[0])
        level = None
        if self.image_in is not None:                                           # [x, upsampled image] on channels
            h, level = self.image_in(h, cond)
        h = self.x_embedder(h) + self.pos_embed                                 # (B, N, D)
        emb = self.t_embedder(c)                                                # (B, D)
        if level is not None:                                                   # + augmentation-level embedding
            emb = emb + self.image_in.level(check_inputs(self, x, level, self.pos_embed.dtype)[1])
        if self.y_embedder is not None:
            emb = emb + self.y_embedder(y, x.shape[0], x.device, name)          # t_emb + y_emb
        else:
            check_unconditional(self, y, name)
        for block in self.blocks:
            h = block(h, emb, ctx, mask)
        return self.unpatchify(self.final_layer(h, emb)).to(x.dtype)
