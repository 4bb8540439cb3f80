"""NCSN++ / DDPM++ U-Nets, Song et al. (2021), "Score-Based Generative Modeling through Stochastic
Differential Equations", arXiv:2011.13456, Appendix H.

Both start from the DDPM U-Net (Ho et al. 2020, arXiv:2006.11239) and add: BigGAN-type residual
blocks that also do the up/down-sampling, all skip connections rescaled by 1/sqrt(2), 4 residual
blocks per resolution (8 for the "deep" models), and continuous noise-level features.

- DDPM++ cont. (VP / sub-VP): sinusoidal features of c = 999 t, plain resampling, no progressive
  growing (`get_model("ddpmpp")`).
- NCSN++ cont. (VE): Gaussian Fourier features (scale 16) of c = log sigma, FIR [1, 3, 3, 1]
  resampling, and the "residual" progressive input: an image pyramid, FIR-downsampled and
  projected by a 3x3 conv, is added (skip-rescaled) to the features after every down-sampling
  (`get_model("ncsnpp")`).
The "output skip" progressive output and the input-skip variant of the paper's exploration are
not provided. With `num_classes=K` a learned class embedding (null label K; Ho & Salimans 2022,
arXiv:2207.12598) is added to the noise-level embedding.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import check_choice, check_int, check_positive
from .layers import (AttnBlock, LabelEmbedding, ResBlockBigGAN, check_data_shape, embed_inputs,
                     check_num_classes, check_sequence, conv,
                     fir_resample, group_norm, linear, make_embedding)

__all__ = ["NCSNpp", "ddpmpp"]


class _PyramidDown(nn.Module):
    """Progressive "residual" input: FIR-downsample the image pyramid, then a 3x3 conv to the feature width."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = conv(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(fir_resample(x, up=False))


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ U-Net: forward(x, c) with x (B, C, H, W) and c (B,) a noise-conditioning value.

    Args:
        data_shape: (C, H, W); H and W divisible by 2^(len(ch_mult) - 1).
        ch, ch_mult, num_res_blocks: widths ch * ch_mult[i]; residual blocks per level
            (4: "cont.", 8: "cont. (deep)").
        attn_resolutions: image heights (pixels) at which self-attention is used.
        dropout: dropout rate inside residual blocks.
        embedding: "fourier" (c = log sigma, NCSN++) or "sinusoidal"/"positional" (c = 999 t, DDPM++).
        fourier_scale: std of the Fourier frequencies (16 in the paper).
        fir: FIR [1, 3, 3, 1] anti-aliased resampling instead of nearest/average pooling.
        skip_rescale: multiply every residual sum by 1/sqrt(2).
        progressive_input: "residual" (NCSN++) or "none" (DDPM++).
        num_classes: None (unconditional) or K: forward(x, c, y) takes labels y in [0, K], K = null.
    GroupNorm uses min(C // 4, 32) groups, which must divide every width C.
    """

    def __init__(self, data_shape: Sequence[int] = (3, 32, 32), ch: int = 128, ch_mult: Sequence[int] = (1, 2, 2, 2),
                 num_res_blocks: int = 4, attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1,
                 embedding: str = "fourier", fourier_scale: float = 16.0, fir: bool = True,
                 skip_rescale: bool = True, progressive_input: str = "residual", num_classes: int | None = None):
        super().__init__()
        ch_mult = check_sequence("ch_mult", ch_mult)
        self.data_shape = check_data_shape(data_shape, image=True, levels=len(ch_mult))
        ch, num_res_blocks = check_int("ch", ch), check_int("num_res_blocks", num_res_blocks)
        attn_resolutions = check_sequence("attn_resolutions", attn_resolutions) if attn_resolutions else ()
        dropout = check_positive("dropout", dropout, allow_zero=True)
        check_choice("progressive_input", progressive_input, ("none", "residual"))
        self.config = dict(data_shape=list(self.data_shape), ch=ch, ch_mult=list(ch_mult),
                           num_res_blocks=num_res_blocks, attn_resolutions=list(attn_resolutions),
                           dropout=dropout, embedding=embedding, fourier_scale=float(fourier_scale),
                           fir=bool(fir), skip_rescale=bool(skip_rescale), progressive_input=progressive_input)
        self.num_classes = check_num_classes(num_classes)
        if self.num_classes is not None:  # only then in the config: unconditional configs stay as they were
            self.config["num_classes"] = self.num_classes
        self.skip_rescale, self.progressive = bool(skip_rescale), progressive_input == "residual"
        C, res = self.data_shape[0], self.data_shape[1]
        tdim = 4 * ch
        self.embed = make_embedding(embedding, ch, fourier_scale)
        self.temb = nn.Sequential(linear(self.embed.out_dim, tdim), nn.SiLU(), linear(tdim, tdim))
        self.label = LabelEmbedding(self.num_classes, tdim) if self.num_classes is not None else None
        block = lambda a, b, **kw: ResBlockBigGAN(a, b, tdim, dropout, fir=fir,  # noqa: E731
                                                  skip_rescale=skip_rescale, **kw)
        attn = lambda a: AttnBlock(a, skip_rescale=skip_rescale)  # noqa: E731

        self.conv_in = conv(C, ch)
        # Each down level: num_res_blocks (block[, attn]) pairs, then a down-sampling block (+ pyramid).
        self.down_blocks, self.down_attn = nn.ModuleList(), nn.ModuleList()
        self.downsamplers, self.pyramid = nn.ModuleList(), nn.ModuleList()
        widths, cur, pyr = [ch], ch, C
        for i, m in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down_blocks.append(block(cur, ch * m))
                cur = ch * m
                self.down_attn.append(attn(cur) if res in attn_resolutions else nn.Identity())
                widths.append(cur)
            if i != len(ch_mult) - 1:
                self.downsamplers.append(block(cur, cur, down=True))
                if self.progressive:
                    self.pyramid.append(_PyramidDown(pyr, cur))
                    pyr = cur
                widths.append(cur)
                res //= 2
        self.mid = nn.ModuleList([block(cur, cur), attn(cur), block(cur, cur)])
        # Each up level: num_res_blocks + 1 blocks on [h, skip], one attention, then an up-sampling block.
        self.up_blocks, self.up_attn, self.upsamplers = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i, m in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up_blocks.append(block(cur + widths.pop(), ch * m))
                cur = ch * m
            self.up_attn.append(attn(cur) if res in attn_resolutions else nn.Identity())
            if i != 0:
                self.upsamplers.append(block(cur, cur, up=True))
                res *= 2
        self.norm_out = group_norm(cur)
        self.conv_out = conv(cur, C, init_scale=0.0)
        self.levels, self.num_res_blocks = len(ch_mult), num_res_blocks

    def forward(self, x: torch.Tensor, c: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W), c (B,) noise-conditioning value, y (B,) long labels in [0, K] or None (null label)."""
        h, temb = embed_inputs(self, x, c, y, self.conv_in.weight.dtype)
        pyramid = h
        hs = [self.conv_in(h)]
        n = self.num_res_blocks
        for i in range(self.levels):
            for j in range(i * n, (i + 1) * n):
                hs.append(self.down_attn[j](self.down_blocks[j](hs[-1], temb)))
            if i != self.levels - 1:
                h = self.downsamplers[i](hs[-1], temb)
                if self.progressive:
                    # pyramid_{i+1} = (conv(FIR_down(pyramid_i)) + h) / sqrt(2)
                    pyramid = self.pyramid[i](pyramid) + h
                    pyramid = pyramid * (1 / math.sqrt(2)) if self.skip_rescale else pyramid
                    h = pyramid
                hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](hs[-1], temb)), temb)
        for k in range(self.levels):
            for j in range(k * (n + 1), (k + 1) * (n + 1)):
                h = self.up_blocks[j](torch.cat([h, hs.pop()], dim=1), temb)
            h = self.up_attn[k](h)
            if k != self.levels - 1:
                h = self.upsamplers[k](h, temb)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return h.to(x.dtype)


def ddpmpp(data_shape: Sequence[int] = (3, 32, 32), *, embedding: str = "sinusoidal", fir: bool = False,
           progressive_input: str = "none", **config) -> NCSNpp:
    """DDPM++ (cont.): the NCSN++ network with sinusoidal features, plain resampling, no progressive input."""
    return NCSNpp(data_shape, embedding=embedding, fir=fir, progressive_input=progressive_input, **config)


ddpmpp.forwards_to = NCSNpp          # where **config goes (nets.model_arguments)
