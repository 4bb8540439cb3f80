"""The DDPM U-Net, Ho et al. (2020), "Denoising Diffusion Probabilistic Models", arXiv:2006.11239, App. B.

A PixelCNN++-style U-Net on Wide-ResNet blocks with GroupNorm, a sinusoidal noise-level
embedding fed to every residual block, and single-head self-attention at chosen resolutions.
The CIFAR-10 configuration (ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn at 16x16,
dropout 0.1) has 35.7M parameters, the figure the paper reports. With `num_classes=K` a learned
class embedding (null label K; Ho & Salimans 2022, arXiv:2207.12598) is added to the time embedding.
With `context_dim=D` the network is conditioned on a token sequence (cond.context (B, L, D) with its
padding mask) by LDM's spatial transformers (Rombach et al. 2022, arXiv:2112.10752, Sec. 3.3;
`models/nets/attention.py`): one in the middle block in place of its self-attention, and one after every
residual block at the heights in `context_resolutions` (there it replaces the self-attention block, which
it contains). A condition without a context (the null condition) skips the cross-attention. The default
(the middle block alone, feed-forward x2) keeps a training step of the digits U-Net within 1.25x of the
same U-Net without a context (benchmarks/text2image_cost.py); LDM's placement (three resolutions,
feed-forward x4) is `context_resolutions=[...]`, `context_ff_mult=4`. `context_pool=True` adds, as Imagen
does (Saharia et al. 2022, arXiv:2205.11487, Sec. 2.2 and App. F: a pooled text embedding added to the
timestep embedding; GLIDE, Nichol et al. 2021, arXiv:2112.10741, Sec. 2.4, likewise puts a text token where
the class embedding goes), the masked mean of the context tokens, projected to the time embedding's width,
to the time embedding: every residual block then sees the prompt, as a class label is seen, while the
spatial transformers place it (a row without a token adds nothing: the null condition).

score_sde's PyTorch port of this network (Song et al. 2021, arXiv:2011.13456, `models/ddpm.py`) puts
one self-attention block per up-sampling level, after all of its residual blocks, where DDPM puts one
after every block: `attn_each_up_block=False` builds that variant (35,218,947 parameters for CIFAR-10,
two 16x16 attention blocks of 263,680 parameters fewer). `centered=False` (data in [0, 1], mapped to
2 x - 1 first), `scale_by_sigma` and `num_scales` are score_sde's input and output conventions.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scoresde._common.validation import check_int, check_positive
from scoresde.models.conditioning import Cond
from scoresde.models.nets.attention import SpatialTransformer, context_of
from scoresde.models.nets.image_input import image_input
from scoresde.models.nets.layers import (AttnBlock, Downsample, LabelEmbedding, ResBlockDDPM, Upsample, add_sigma_table,
                                         check_data_shape, check_inputs, check_num_classes, embed_inputs,
                                         scale_by_sigma, check_sequence, make_embedding)
from scoresde.models.nets.primitives import conv, group_norm, linear


__all__ = ["DDPMUNet"]


class DDPMUNet(nn.Module):
    """DDPM U-Net: forward(x, c) with x (B, C, H, W) and c (B,) a noise-conditioning value.

    Args:
        data_shape: (C, H, W); H and W divisible by 2^(len(ch_mult) - 1).
        ch: base width; level i has ch * ch_mult[i] channels.
        ch_mult: width multipliers, one per resolution level.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_resolutions: image heights (pixels) at which self-attention follows each block.
        dropout: dropout rate inside residual blocks.
        embedding: "sinusoidal" (DDPM; for c = 999 t) or "fourier" (for c = log sigma).
        fourier_scale: std of the Fourier frequencies.
        num_groups: GroupNorm groups (32 in DDPM); must divide every width.
        num_classes: None (unconditional) or K: forward(x, c, cond) reads cond.labels in [0, K], K = null.
    Keyword-only options (score_sde's DDPM; the defaults give the network above):
        attn_each_up_block: False puts one attention block per up level (score_sde's DDPM).
        centered: False for data in [0, 1]: the network computes 2 x - 1 first.
        scale_by_sigma: divide the output by sigmas[c] (with `num_scales`, integer labels c), else exp(c).
        num_scales: size of the float64 buffer `sigmas` (score_sde's discrete noise levels), or None.
    Cross-attention (keyword-only; none by default):
        context_dim: the width D of the context tokens cond.context (B, L, D), or None (no cross-attention).
        context_resolutions: heights at which a spatial transformer follows each residual block (the middle
            block always has one); default none besides it.
        transformer_depth: transformer blocks per spatial transformer.
        context_heads: attention heads of the spatial transformers (each width divisible by it).
        context_ff_mult: feed-forward (GEGLU) width / channels (LDM: 4).
        context_pool: add the projected masked mean of the context tokens to the time embedding (Imagen).
        context_pos: add fixed 2-D sine-cosine position embeddings to the spatial transformers' tokens, so
            cross-attention can place what a prompt says by where it goes (`SpatialTransformer(pos=True)`).
    Image condition (keyword-only; none by default; models/nets/image_input.py):
        image_shape: (C_i, h, w) of cond.image (e.g. the low-resolution image of a super-resolution stage),
            upsampled to (H, W) by `image_upsample` and concatenated after x (SR3); cond.image_level is embedded
            beside the time (noise-conditioning augmentation, CDM). None: no image condition.
        image_upsample: "bicubic", "bilinear" or "nearest".
    """

    def __init__(self, data_shape: Sequence[int] = (3, 32, 32), ch: int = 128, ch_mult: Sequence[int] = (1, 2, 2, 2),
                 num_res_blocks: int = 2, attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1,
                 embedding: str = "sinusoidal", fourier_scale: float = 16.0, num_groups: int = 32,
                 num_classes: int | None = None, *, attn_each_up_block: bool = True, centered: bool = True,
                 scale_by_sigma: bool = False, num_scales: int | None = None, context_dim: int | None = None,
                 context_resolutions: Sequence[int] = (), transformer_depth: int = 1,
                 context_heads: int = 4, context_ff_mult: float = 2.0, context_pool: bool = False,
                 context_pos: bool = False, image_shape: Sequence[int] | None = None, image_upsample: str = "bicubic"):
        super().__init__()
        for name, flag in (("attn_each_up_block", attn_each_up_block), ("centered", centered),
                           ("scale_by_sigma", scale_by_sigma), ("context_pool", context_pool),
                           ("context_pos", context_pos)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name}: expected a bool, found {flag!r}")
        ch_mult = check_sequence("ch_mult", ch_mult)
        self.data_shape = check_data_shape(data_shape, image=True, levels=len(ch_mult))
        ch, num_res_blocks, num_groups = check_int("ch", ch), check_int("num_res_blocks", num_res_blocks), \
            check_int("num_groups", num_groups)
        attn_resolutions = check_sequence("attn_resolutions", attn_resolutions) if attn_resolutions else ()
        dropout = check_positive("dropout", dropout, allow_zero=True)
        self.config = dict(data_shape=list(self.data_shape), ch=ch, ch_mult=list(ch_mult),
                           num_res_blocks=num_res_blocks, attn_resolutions=list(attn_resolutions),
                           dropout=dropout, embedding=embedding, fourier_scale=float(fourier_scale),
                           num_groups=num_groups)
        self.num_classes = check_num_classes(num_classes)
        if self.num_classes is not None:  # only then in the config: unconditional configs stay as they were
            self.config["num_classes"] = self.num_classes
        options = dict(attn_each_up_block=attn_each_up_block, centered=centered, scale_by_sigma=scale_by_sigma,
                       num_scales=num_scales)
        defaults = dict(attn_each_up_block=True, centered=True, scale_by_sigma=False, num_scales=None)
        self.config.update({k: v for k, v in options.items() if v != defaults[k]})  # old configs unchanged
        self.centered, self.scale_output = centered, scale_by_sigma
        add_sigma_table(self, num_scales)
        C, H = self.data_shape[0], self.data_shape[1]
        tdim = 4 * ch
        self.embed = make_embedding(embedding, ch, fourier_scale)
        self.image_in = image_input(self, image_shape, image_upsample, self.embed.out_dim, tdim)
        self.context_dim = None if context_dim is None else check_int("context_dim", context_dim)
        xres: tuple[int, ...] = ()
        if self.context_dim is not None:
            xres = check_sequence("context_resolutions", context_resolutions) if context_resolutions else ()
            self.config.update(context_dim=self.context_dim, context_resolutions=list(xres),
                               transformer_depth=check_int("transformer_depth", transformer_depth),
                               context_heads=check_int("context_heads", context_heads),
                               context_ff_mult=check_positive("context_ff_mult", context_ff_mult))
            for name, flag in (("context_pool", context_pool), ("context_pos", context_pos)):
                if flag:                 # only then in the config: earlier text models' configs stay as they were
                    self.config[name] = True
        else:
            for name, flag in (("context_pool", context_pool), ("context_pos", context_pos)):
                if flag:
                    raise ValueError(f"{name}: applies to the context tokens' attention, so it needs context_dim=D, "
                                     "found context_dim=None")
        xattn = lambda a: SpatialTransformer(a, self.context_dim, context_heads, transformer_depth,  # noqa: E731
                                             num_groups, context_ff_mult, pos=context_pos)
        self.temb = nn.Sequential(linear(self.embed.out_dim, tdim), nn.SiLU(), linear(tdim, tdim))
        self.label = LabelEmbedding(self.num_classes, tdim) if self.num_classes is not None else None
        self.pool = linear(self.context_dim, tdim) if context_pool else None
        block = lambda a, b: ResBlockDDPM(a, b, tdim, dropout, num_groups)  # noqa: E731
        attn = lambda a: AttnBlock(a, num_groups)  # noqa: E731

        self.conv_in = conv(C + (self.image_in.channels if self.image_in is not None else 0), ch)
        self.down = nn.ModuleList()
        widths, cur, res = [ch], ch, H  # widths: channels of every skip tensor
        for i, m in enumerate(ch_mult):
            level = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.append(block(cur, ch * m))
                cur = ch * m
                if res in xres:
                    level.append(xattn(cur))
                elif res in attn_resolutions:
                    level.append(attn(cur))
                widths.append(cur)
            if i != len(ch_mult) - 1:
                level.append(Downsample(cur))
                widths.append(cur)
                res //= 2
            self.down.append(level)
        self.mid = nn.ModuleList([block(cur, cur), attn(cur) if self.context_dim is None else xattn(cur),
                                  block(cur, cur)])
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(ch_mult))):
            level = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.append(block(cur + widths.pop(), ch * m))
                cur = ch * m
                if res in xres:
                    level.append(xattn(cur))
                elif res in attn_resolutions and attn_each_up_block:
                    level.append(attn(cur))
            if res in attn_resolutions and not attn_each_up_block and res not in xres:
                level.append(attn(cur))
            if i != 0:
                level.append(Upsample(cur))
                res *= 2
            self.up.append(level)
        self.norm_out = group_norm(cur, num_groups)
        self.conv_out = conv(cur, C, init_scale=0.0)

    def _pooled(self, ctx: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, tdim): W mean_{l: mask} ctx_l + b, zero for a row without a token (the null condition)."""
        m = torch.ones(ctx.shape[:2], dtype=torch.bool, device=ctx.device) if mask is None else mask
        w = m.to(ctx.dtype)[..., None]                                           # (B, L, 1)
        mean = (ctx * w).sum(1) / w.sum(1).clamp(min=1.0)                        # (B, D)
        return self.pool(mean.to(self.pool.weight.dtype)) * m.any(1).to(self.pool.weight.dtype)[:, None]

    def forward(self, x: torch.Tensor, c: torch.Tensor, cond: Cond | torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W), c (B,) noise-conditioning value, cond a Cond (its labels in [0, K]; with context_dim its
        context (B, L, context_dim) and context_mask (B, L)), (B,) labels or None (the null condition)."""
        h, temb = embed_inputs(self, x, c, cond, self.conv_in.weight.dtype)
        ctx, mask = context_of(self, cond, x.shape[0])
        if self.pool is not None and ctx is not None:
            temb = temb + self._pooled(ctx, mask).to(temb.dtype)

        def apply(layer, h):                                     # AttnBlock, SpatialTransformer, Up/Downsample
            return layer(h, ctx, mask) if isinstance(layer, SpatialTransformer) else layer(h)
        if not self.centered:
            h = 2 * h - 1.0                                      # data in [0, 1] -> [-1, 1]
        hs = [self.conv_in(h)]
        for level in self.down:
            for layer in level:
                if isinstance(layer, ResBlockDDPM):
                    hs.append(layer(hs[-1], temb))
                elif isinstance(layer, (AttnBlock, SpatialTransformer)):
                    hs[-1] = apply(layer, hs[-1])
                else:  # Downsample
                    hs.append(layer(hs[-1]))
        h = self.mid[2](apply(self.mid[1], self.mid[0](hs[-1], temb)), temb)
        for level in self.up:
            for layer in level:
                if isinstance(layer, ResBlockDDPM):
                    h = layer(torch.cat([h, hs.pop()], dim=1), temb)
                else:  # AttnBlock, SpatialTransformer or Upsample
                    h = apply(layer, h)
        h = self.conv_out(F.silu(self.norm_out(h)))
        if self.scale_output:
            h = scale_by_sigma(self, h, check_inputs(self, x, c, h.dtype)[1])
        return h.to(x.dtype)
