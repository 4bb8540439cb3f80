"""A KL-regularised convolutional autoencoder in the style of the LDM / Stable Diffusion first stage.

Rombach et al. (2022), "High-Resolution Image Synthesis with Latent Diffusion Models",
arXiv:2112.10752, Sec. 3.1 and App. G: an encoder of ResNet blocks with GroupNorm and SiLU
downsamples an image (C, H, W) by f = 2^(len(ch_mult) - 1) to the mean and log-variance of a
diagonal Gaussian posterior q(z | x) over (c, H/f, W/f); a mirrored decoder maps z back. The
mid-block of both carries one self-attention layer. Training (the `autoencoder` task) minimises

    L = |x - D(z)|_1 (or squared)  +  kl_weight * KL(q(z | x) || N(0, I))  [+ adversarial]

with sums over pixels and latent entries and a mean over the batch, kl_weight ~ 1e-6, as LDM.
The optional patch discriminator is pix2pix's (Isola et al. 2017, arXiv:1611.07004) with
GroupNorm in place of BatchNorm (no running statistics to carry through the EMA and DDP).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scoresde.models.nets.layers import (AttnBlock, Downsample, Upsample, check_data_shape, check_sequence)
from scoresde.models.nets.primitives import conv, group_norm
from scoresde._common.validation import check_int, check_positive


__all__ = ["DiagonalGaussian", "KLAutoencoder", "PatchDiscriminator"]


class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))) from encoder output `parameters` (B, 2c, ...): mean and
    log-variance are its two halves along dim 1; the log-variance is clamped to [-30, 20] (LDM)."""

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """z = mean + std * n, n ~ N(0, I) drawn from `generator` (or the given `noise`)."""
        if noise is None:
            noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """(B,) KL(q || N(0, I)) = 1/2 sum(mean^2 + var - 1 - logvar), summed over all latent entries."""
        dims = tuple(range(1, self.mean.ndim))
        return 0.5 * (self.mean.square() + self.var - 1.0 - self.logvar).sum(dims)

    def nll(self, z: torch.Tensor) -> torch.Tensor:
        """(B,) -log q(z | x) = 1/2 sum(log 2 pi + logvar + (z - mean)^2 / var)."""
        dims = tuple(range(1, self.mean.ndim))
        return 0.5 * (math.log(2 * math.pi) + self.logvar + (z - self.mean).square() / self.var).sum(dims)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv, twice, with a 1x1 shortcut when the width changes (no time input)."""

    def __init__(self, cin: int, cout: int, num_groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin, num_groups), conv(cin, cout)
        self.norm2, self.conv2 = group_norm(cout, num_groups), conv(cout, cout, init_scale=1e-10)
        self.dropout = nn.Dropout(dropout)
        self.skip = conv(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


def _mid(ch: int, num_groups: int, dropout: float, attn: bool) -> nn.Sequential:
    """ResBlock, self-attention, ResBlock at the lowest resolution."""
    layers = [ResBlock(ch, ch, num_groups, dropout)]
    if attn:
        layers.append(AttnBlock(ch, num_groups))
    return nn.Sequential(*layers, ResBlock(ch, ch, num_groups, dropout))


class KLAutoencoder(nn.Module):
    """Encoder -> q(z | x) (a `DiagonalGaussian`), decoder z -> x.

    Args:
        data_shape: image shape (C, H, W); H and W divisible by f = 2^(len(ch_mult) - 1).
        ch: base width; level i of the encoder has ch * ch_mult[i] channels.
        ch_mult: width multipliers, one per level (LDM kl-f8: (1, 2, 4, 4), ch 128).
        num_res_blocks: ResNet blocks per level (the decoder has one more, as LDM).
        z_channels: latent channels c.
        mid_attn: self-attention in the mid-blocks.
        num_groups: GroupNorm groups (32 in LDM); must divide every width.
        dropout: dropout inside the ResNet blocks.
    """

    def __init__(self, data_shape: Sequence[int] = (1, 32, 32), ch: int = 32, ch_mult: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 1, z_channels: int = 4, mid_attn: bool = True, num_groups: int = 8,
                 dropout: float = 0.0):
        super().__init__()
        ch_mult = check_sequence("ch_mult", ch_mult)
        self.data_shape = check_data_shape(data_shape, image=True, levels=len(ch_mult))
        ch, num_res_blocks = check_int("ch", ch), check_int("num_res_blocks", num_res_blocks)
        z_channels, num_groups = check_int("z_channels", z_channels), check_int("num_groups", num_groups)
        if not isinstance(mid_attn, bool):
            raise TypeError(f"mid_attn: expected a bool, found {mid_attn!r}")
        dropout = check_positive("dropout", dropout, allow_zero=True)
        self.config = dict(data_shape=list(self.data_shape), ch=ch, ch_mult=list(ch_mult),
                           num_res_blocks=num_res_blocks, z_channels=z_channels, mid_attn=mid_attn,
                           num_groups=num_groups, dropout=dropout)
        C, H, W = self.data_shape
        self.downsample = 2 ** (len(ch_mult) - 1)                        # f
        self.latent_shape = (z_channels, H // self.downsample, W // self.downsample)
        widths = [ch * m for m in ch_mult]
        block = lambda a, b: ResBlock(a, b, num_groups, dropout)  # noqa: E731

        # encoder: (C, H, W) -> (2c, H/f, W/f)
        enc: list[nn.Module] = [conv(C, ch)]
        cur = ch
        for i, w in enumerate(widths):
            for _ in range(num_res_blocks):
                enc.append(block(cur, w))
                cur = w
            if i != len(widths) - 1:
                enc.append(Downsample(cur))
        enc += [_mid(cur, num_groups, dropout, mid_attn), group_norm(cur, num_groups), nn.SiLU(),
                conv(cur, 2 * z_channels), conv(2 * z_channels, 2 * z_channels, 1)]    # + LDM's quant_conv
        self.encoder = nn.Sequential(*enc)

        # decoder: (c, H/f, W/f) -> (C, H, W)
        cur = widths[-1]
        dec: list[nn.Module] = [conv(z_channels, z_channels, 1), conv(z_channels, cur),   # post_quant_conv, conv_in
                                _mid(cur, num_groups, dropout, mid_attn)]
        for i, w in reversed(list(enumerate(widths))):
            for _ in range(num_res_blocks + 1):
                dec.append(block(cur, w))
                cur = w
            if i != 0:
                dec.append(Upsample(cur))
        dec += [group_norm(cur, num_groups), nn.SiLU(), conv(cur, C)]
        self.decoder = nn.Sequential(*dec)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output convolution weight (LDM's adaptive GAN weight is measured on it)."""
        return self.decoder[-1].weight

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"x: expected images of shape (B, {', '.join(map(str, self.data_shape))}), "
                             f"found {tuple(x.shape)}")
        return DiagonalGaussian(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"z: expected latents of shape (B, {', '.join(map(str, self.latent_shape))}), "
                             f"found {tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        """(reconstruction D(z), posterior) with z = mean + std * noise (the mode when noise is None)."""
        q = self.encode(x)
        return self.decode(q.mode() if noise is None else q.sample(noise=noise)), q


class PatchDiscriminator(nn.Module):
    """pix2pix PatchGAN: 4x4 convolutions (stride 2 for the first `n_layers`), LeakyReLU 0.2, one logit
    per overlapping patch. Widths ch, 2ch, ... capped at 8ch; GroupNorm after every inner conv."""

    def __init__(self, in_channels: int, ch: int = 32, n_layers: int = 2, num_groups: int = 8):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        cur = ch
        for n in range(1, n_layers + 1):
            w = ch * min(2 ** n, 8)
            layers += [nn.Conv2d(cur, w, 4, 2 if n < n_layers else 1, 1, bias=False), group_norm(w, num_groups),
                       nn.LeakyReLU(0.2)]
            cur = w
        layers.append(nn.Conv2d(cur, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():                  # pix2pix init: N(0, 0.02) convolutions
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
