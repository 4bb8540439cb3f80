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
The options of the paper's architecture search (App. H, Table 4) and of score_sde's configs are
constructor options: `progressive` ("none", "output_skip", "residual": StyleGAN2-style progressive
output, Karras et al. 2020, arXiv:1912.04958), `progressive_input` ("none", "input_skip", "residual"),
`progressive_combine` ("sum", "cat"), `resblock` ("biggan", "ddpm"), `fir` / `fir_kernel`,
`skip_rescale`, `init_scale`, `conditional`, and score_sde's input and output conventions
(`centered`, `embed_log`, `scale_by_sigma`, `num_scales`), so that every NCSN++ / DDPM++ config of
score_sde_pytorch builds with the reference's parameters (`scoresde.pretrained.load_score_sde`).
With `num_classes=K` a learned class embedding (null label K; Ho & Salimans 2022, arXiv:2207.12598)
is added to the noise-level embedding.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scoresde._common.validation import check_choice, check_int, check_positive
from scoresde.models.conditioning import Cond
from scoresde.models.nets.layers import (AttnBlock, LabelEmbedding, ResBlockBigGAN, ResBlockDDPM, add_sigma_table,
                                         check_data_shape, check_inputs, check_num_classes, check_sequence,
                                         embed_inputs, fir_resample, make_embedding, scale_by_sigma)
from scoresde.models.nets.image_input import image_input
from scoresde.models.nets.primitives import conv, group_norm, linear
from scoresde.models.nets.resample import Resample, check_fir_kernel


__all__ = ["NCSNpp", "ddpmpp"]


class _PyramidDown(nn.Module):
    """Progressive "residual" input: FIR-downsample the image pyramid, then a 3x3 conv to the feature width."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = conv(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(fir_resample(x, up=False))


class _Combine(nn.Module):
    """Progressive "input_skip": a 1x1 conv of the image pyramid, summed with or concatenated before h."""

    def __init__(self, cin: int, cout: int, method: str):
        super().__init__()
        self.conv, self.method = conv(cin, cout, 1), method

    def forward(self, pyramid: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        p = self.conv(pyramid)
        return torch.cat([p, h], dim=1) if self.method == "cat" else p + h


# the options added for score_sde's configs, with the defaults that keep the original network
_OPTIONS = dict(progressive="none", progressive_combine="sum", resblock="biggan", fir_kernel=(1, 3, 3, 1),
                resample_with_conv=True, pyramid_conv="after_resample", init_scale=0.0, conditional=True,
                centered=True, embed_log=False, scale_by_sigma=False, num_scales=None)


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
        fir: FIR anti-aliased resampling instead of nearest/average pooling.
        skip_rescale: multiply every residual sum by 1/sqrt(2).
        progressive_input: "residual" (NCSN++), "input_skip" (a 1x1 conv of the FIR-downsampled image
            combined with the features after every down-sampling) or "none" (DDPM++).
        num_classes: None (unconditional) or K: forward(x, c, cond) reads cond.labels in [0, K], K = null.
    Keyword-only options (score_sde's `config.model` fields; the defaults give the network above):
        progressive: "none", "output_skip" (the output is a sum of up-sampled 3x3-conv read-outs of every
            level) or "residual" (a feature pyramid, up-sampled by a conv, added after every level).
        progressive_combine: "sum" or "cat" for the "input_skip" pyramid.
        resblock: "biggan" (BigGAN blocks that also resample) or "ddpm" (DDPM++ blocks with separate
            `Resample` layers, `resample_with_conv` deciding whether those have a 3x3 conv).
        fir_kernel: the 1-D FIR filter ([1, 3, 3, 1]).
        pyramid_conv: the conv of the "residual" input pyramid: "after_resample" (FIR-downsample, then a
            3x3 conv) or "strided" (score_sde: a stride-2 3x3 conv on the FIR-blurred input, StyleGAN2's
            fused conv_downsample_2d; on the (0, 1, 0, 1)-padded input without FIR).
        init_scale: initial scale of the last conv of every block, of the attention output and of the
            output convs (0: near zero).
        conditional: False builds no noise-level embedding; the blocks keep their (unused) dense layers.
        centered: False for data in [0, 1]: the network computes 2 x - 1 first (score_sde's data.centered).
        embed_log: embed log(c) (score_sde's NCSN++ with Fourier features is fed sigma itself).
        scale_by_sigma: divide the output by the noise level: sigmas[c] with a table (`num_scales`,
            integer labels c), c itself with `embed_log`, else exp(c).
        num_scales: size of the float64 buffer `sigmas` (score_sde's discrete noise levels), or None.
        image_shape, image_upsample: an image condition cond.image (C_i, h, w), upsampled and concatenated after
            x, with its augmentation level embedded (as `DDPMUNet`; models/nets/image_input.py). None: none.
    GroupNorm uses min(C // 4, 32) groups, which must divide every width C.
    """

    def __init__(self, data_shape: Sequence[int] = (3, 32, 32), ch: int = 128, ch_mult: Sequence[int] = (1, 2, 2, 2),
                 num_res_blocks: int = 4, attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1,
                 embedding: str = "fourier", fourier_scale: float = 16.0, fir: bool = True,
                 skip_rescale: bool = True, progressive_input: str = "residual", num_classes: int | None = None,
                 *, progressive: str = "none", progressive_combine: str = "sum", resblock: str = "biggan",
                 fir_kernel: Sequence[float] = (1, 3, 3, 1), resample_with_conv: bool = True,
                 pyramid_conv: str = "after_resample", init_scale: float = 0.0, conditional: bool = True,
                 centered: bool = True, embed_log: bool = False, scale_by_sigma: bool = False,
                 num_scales: int | None = None, image_shape: Sequence[int] | None = None,
                 image_upsample: str = "bicubic"):
        super().__init__()
        ch_mult = check_sequence("ch_mult", ch_mult)
        self.data_shape = check_data_shape(data_shape, image=True, levels=len(ch_mult))
        ch, num_res_blocks = check_int("ch", ch), check_int("num_res_blocks", num_res_blocks)
        attn_resolutions = check_sequence("attn_resolutions", attn_resolutions) if attn_resolutions else ()
        dropout = check_positive("dropout", dropout, allow_zero=True)
        check_choice("progressive_input", progressive_input, ("none", "residual", "input_skip"))
        check_choice("progressive", progressive, ("none", "output_skip", "residual"))
        check_choice("progressive_combine", progressive_combine, ("sum", "cat"))
        check_choice("resblock", resblock, ("biggan", "ddpm"))
        check_choice("pyramid_conv", pyramid_conv, ("after_resample", "strided"))
        fir_kernel = check_fir_kernel(fir_kernel)
        init_scale = check_positive("init_scale", init_scale, allow_zero=True)
        for name, flag in (("fir", fir), ("skip_rescale", skip_rescale), ("resample_with_conv", resample_with_conv),
                           ("conditional", conditional), ("centered", centered), ("embed_log", embed_log),
                           ("scale_by_sigma", scale_by_sigma)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name}: expected a bool, found {flag!r}")
        self.config = dict(data_shape=list(self.data_shape), ch=ch, ch_mult=list(ch_mult),
                           num_res_blocks=num_res_blocks, attn_resolutions=list(attn_resolutions),
                           dropout=dropout, embedding=embedding, fourier_scale=float(fourier_scale),
                           fir=bool(fir), skip_rescale=bool(skip_rescale), progressive_input=progressive_input)
        self.num_classes = check_num_classes(num_classes)
        if self.num_classes is not None:  # only then in the config: unconditional configs stay as they were
            if not conditional:
                raise ValueError("num_classes: class labels need the noise-level embedding (conditional=True), "
                                 "found conditional=False")
            self.config["num_classes"] = self.num_classes
        options = dict(progressive=progressive, progressive_combine=progressive_combine, resblock=resblock,
                       fir_kernel=fir_kernel, resample_with_conv=resample_with_conv, pyramid_conv=pyramid_conv,
                       init_scale=float(init_scale), conditional=conditional, centered=centered,
                       embed_log=embed_log, scale_by_sigma=scale_by_sigma, num_scales=num_scales)
        self.config.update({k: list(v) if isinstance(v, tuple) else v for k, v in options.items()
                            if v != _OPTIONS[k]})             # only non-default options: old configs unchanged
        self.skip_rescale, self.progressive_input, self.progressive = bool(skip_rescale), progressive_input, progressive
        self.biggan, self.centered = resblock == "biggan", centered
        self.embed_log, self.scale_output = embed_log, scale_by_sigma
        C, res = self.data_shape[0], self.data_shape[1]
        tdim = 4 * ch
        self.embed = make_embedding(embedding, ch, fourier_scale)
        self.temb = nn.Sequential(linear(self.embed.out_dim, tdim), nn.SiLU(), linear(tdim, tdim)) \
            if conditional else None
        self.label = LabelEmbedding(self.num_classes, tdim) if self.num_classes is not None else None
        add_sigma_table(self, num_scales)
        self.image_in = image_input(self, image_shape, image_upsample, self.embed.out_dim,
                                    tdim if conditional else None)
        Cin = C + (self.image_in.channels if self.image_in is not None else 0)   # x and the image condition
        if self.biggan:
            def block(a, b, **kw):
                return ResBlockBigGAN(a, b, tdim, dropout, fir=fir, skip_rescale=skip_rescale,
                                      fir_kernel=fir_kernel, init_scale=init_scale, **kw)
        else:
            def block(a, b):
                return ResBlockDDPM(a, b, tdim, dropout, num_groups=None, skip_rescale=skip_rescale,
                                    init_scale=init_scale)
        attn = lambda a: AttnBlock(a, skip_rescale=skip_rescale, init_scale=init_scale)  # noqa: E731
        resampler = lambda a, up: (block(a, a, up=up, down=not up) if self.biggan else  # noqa: E731
                                   Resample(a, up=up, with_conv=resample_with_conv, fir=fir, fir_kernel=fir_kernel))
        # parameter-free pyramid resampling of the progressive "input_skip" / "output_skip" paths
        if progressive_input == "input_skip":
            self.input_resample = Resample(Cin, up=False, with_conv=False, fir=fir, fir_kernel=fir_kernel)
        if progressive == "output_skip":
            self.output_resample = Resample(C, up=True, with_conv=False, fir=fir, fir_kernel=fir_kernel)

        self.conv_in = conv(Cin, ch)
        # Each down level: num_res_blocks (block[, attn]) pairs, then a down-sampling block (+ pyramid).
        self.down_blocks, self.down_attn = nn.ModuleList(), nn.ModuleList()
        self.downsamplers, self.pyramid, self.combine = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        widths, cur, pyr = [ch], ch, Cin
        for i, m in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.down_blocks.append(block(cur, ch * m))
                cur = ch * m
                self.down_attn.append(attn(cur) if res in attn_resolutions else nn.Identity())
                widths.append(cur)
            if i != len(ch_mult) - 1:
                self.downsamplers.append(resampler(cur, False))
                if progressive_input == "residual":
                    self.pyramid.append(_PyramidDown(pyr, cur) if pyramid_conv == "after_resample" else
                                        Resample(pyr, cur, up=False, with_conv=True, fir=fir, fir_kernel=fir_kernel))
                    pyr = cur
                elif progressive_input == "input_skip":
                    self.combine.append(_Combine(Cin, cur, progressive_combine))
                    cur = 2 * cur if progressive_combine == "cat" else cur
                widths.append(cur)
                res //= 2
        self.mid = nn.ModuleList([block(cur, cur), attn(cur), block(cur, cur)])
        # Each up level: num_res_blocks + 1 blocks on [h, skip], one attention, the progressive output
        # layers, then an up-sampling block.
        self.up_blocks, self.up_attn, self.upsamplers = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        self.out_norms, self.out_convs, self.pyramid_up = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        pyr = 0
        for i, m in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.up_blocks.append(block(cur + widths.pop(), ch * m))
                cur = ch * m
            self.up_attn.append(attn(cur) if res in attn_resolutions else nn.Identity())
            if progressive == "output_skip" or (progressive == "residual" and i == len(ch_mult) - 1):
                self.out_norms.append(group_norm(cur))
                if progressive == "output_skip":   # read-out of this level, added to the up-sampled pyramid
                    self.out_convs.append(conv(cur, C, init_scale=init_scale))
                else:
                    self.out_convs.append(conv(cur, cur))
                pyr = C if progressive == "output_skip" else cur
            elif progressive == "residual":
                self.pyramid_up.append(Resample(pyr, cur, up=True, with_conv=True, fir=fir, fir_kernel=fir_kernel))
                pyr = cur
            if i != 0:
                self.upsamplers.append(resampler(cur, True))
                res *= 2
        if progressive != "output_skip":
            self.norm_out = group_norm(cur)
            self.conv_out = conv(cur, C, init_scale=init_scale)
        self.levels, self.num_res_blocks = len(ch_mult), num_res_blocks

    def _resample(self, layer: nn.Module, h: torch.Tensor, temb) -> torch.Tensor:
        return layer(h, temb) if self.biggan else layer(h)

    def forward(self, x: torch.Tensor, c: torch.Tensor, cond: Cond | torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W), c (B,) noise-conditioning value, cond a Cond (its labels in [0, K]), (B,) labels or
        None (the null label)."""
        h, temb = embed_inputs(self, x, c, cond, self.conv_in.weight.dtype)
        if not self.centered:
            h = 2 * h - 1.0                                      # data in [0, 1] -> [-1, 1]
        pyramid = h
        hs = [self.conv_in(h)]
        n, r = self.num_res_blocks, (1 / math.sqrt(2)) if self.skip_rescale else 1.0
        for i in range(self.levels):
            for j in range(i * n, (i + 1) * n):
                hs.append(self.down_attn[j](self.down_blocks[j](hs[-1], temb)))
            if i != self.levels - 1:
                h = self._resample(self.downsamplers[i], hs[-1], temb)
                if self.progressive_input == "residual":
                    # pyramid_{i+1} = (conv(FIR_down(pyramid_i)) + h) / sqrt(2)
                    pyramid = self.pyramid[i](pyramid) + h
                    pyramid = pyramid * r if self.skip_rescale else pyramid
                    h = pyramid
                elif self.progressive_input == "input_skip":
                    # h = conv1x1(FIR_down(image pyramid)) (+ or concat) h
                    pyramid = self.input_resample(pyramid)
                    h = self.combine[i](pyramid, h)
                hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](hs[-1], temb)), temb)
        for k in range(self.levels):
            for j in range(k * (n + 1), (k + 1) * (n + 1)):
                h = self.up_blocks[j](torch.cat([h, hs.pop()], dim=1), temb)
            h = self.up_attn[k](h)
            if self.progressive == "output_skip":
                # out_k = up(out_{k-1}) + conv(act(GN(h_k)))
                out = self.out_convs[k](F.silu(self.out_norms[k](h)))
                pyramid = out if k == 0 else self.output_resample(pyramid) + out
            elif self.progressive == "residual":
                if k == 0:
                    pyramid = self.out_convs[0](F.silu(self.out_norms[0](h)))
                else:   # pyramid_k = (up_conv(pyramid_{k-1}) + h_k) / sqrt(2)
                    pyramid = self.pyramid_up[k - 1](pyramid) + h
                    pyramid = pyramid / math.sqrt(2) if self.skip_rescale else pyramid
                    h = pyramid
            if k != self.levels - 1:
                h = self._resample(self.upsamplers[k], h, temb)
        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = self.conv_out(F.silu(self.norm_out(h)))
        if self.scale_output:
            h = scale_by_sigma(self, h, check_inputs(self, x, c, h.dtype)[1])
        return h.to(x.dtype)


def ddpmpp(data_shape: Sequence[int] = (3, 32, 32), *, embedding: str = "sinusoidal", fir: bool = False,
           progressive_input: str = "none", **config) -> NCSNpp:
    """DDPM++ (cont.): the NCSN++ network with sinusoidal features, plain resampling, no progressive input."""
    return NCSNpp(data_shape, embedding=embedding, fir=fir, progressive_input=progressive_input, **config)


ddpmpp.forwards_to = NCSNpp          # where **config goes (nets.model_arguments)
