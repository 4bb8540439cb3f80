"""Resampling layers of score_sde's NCSN++ (Song et al. 2021, arXiv:2011.13456, App. H), exact to the
reference implementation.

- `upfirdn2d`: upsample by zero insertion, pad, FIR-filter, downsample, channel by channel: the
  resampling primitive of StyleGAN2 (Karras et al. 2020, arXiv:1912.04958), which score_sde uses
  for its FIR filters ([1, 3, 3, 1] in every config).
- `fir_up` / `fir_down`: x2 resampling with the separable filter k k^T / sum(k)^2 (gain 4 when up).
- `Resample`: score_sde's stand-alone `Upsample` / `Downsample` layers, used by the progressive
  growing paths and by DDPM-type residual blocks. With FIR and a convolution, down-sampling is
  StyleGAN2's fused "FIR then stride-2 3x3 convolution" (`conv_downsample_2d`), which is not the same
  map as "FIR-downsample then a 3x3 convolution".
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from scoresde.models.nets.primitives import conv

__all__ = ["upfirdn2d", "fir_filter", "fir_up", "fir_down", "Resample", "check_fir_kernel"]


def check_fir_kernel(kernel) -> tuple[int, ...]:
    """A 1-D FIR kernel: a sequence of at least 2 non-negative numbers with a positive sum."""
    if not isinstance(kernel, (tuple, list)) or len(kernel) < 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in kernel) or sum(kernel) <= 0:
        raise ValueError(f"fir_kernel: expected a sequence of >= 2 non-negative numbers with a positive sum, "
                         f"found {kernel!r}")
    return tuple(kernel)


def fir_filter(kernel: Sequence[float], gain: float, dtype: torch.dtype, device) -> torch.Tensor:
    """The 2-D filter gain * k k^T / sum(k k^T), (n, n)."""
    k = torch.as_tensor(kernel, dtype=torch.float32, device=device)
    k2 = torch.outer(k, k)
    return (k2 / k2.sum() * gain).to(dtype)


def upfirdn2d(x: torch.Tensor, k2: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)):
    """Per channel: insert up-1 zeros after every sample, pad (pad0 before, pad1 after) on both axes,
    convolve with k2 (a true convolution: the flipped filter is correlated), keep every `down`-th sample.

    x (B, C, H, W) -> (B, C, (H up + pad0 + pad1 - n) // down + 1, ...), n = k2.shape[0].
    """
    B, C, H, W = x.shape
    h = x.reshape(B * C, 1, H, 1, W, 1)
    if up > 1:   # (H, 1) -> (H, up): each sample followed by up - 1 zeros
        h = F.pad(h, (0, up - 1, 0, 0, 0, up - 1))
    h = h.reshape(B * C, 1, H * up, W * up)
    h = F.pad(h, (pad[0], pad[1], pad[0], pad[1]))
    h = F.conv2d(h, torch.flip(k2, (0, 1))[None, None].to(h.dtype), stride=down)
    return h.reshape(B, C, h.shape[-2], h.shape[-1])


def fir_up(x: torch.Tensor, kernel: Sequence[float] = (1, 3, 3, 1)) -> torch.Tensor:
    """x2 FIR upsampling (H -> 2H), StyleGAN2's upsample_2d: gain 4 keeps constants constant."""
    p = len(kernel) - 2
    return upfirdn2d(x, fir_filter(kernel, 4.0, x.dtype, x.device), up=2, pad=((p + 1) // 2 + 1, p // 2))


def fir_down(x: torch.Tensor, kernel: Sequence[float] = (1, 3, 3, 1)) -> torch.Tensor:
    """x2 FIR downsampling (H -> H/2), StyleGAN2's downsample_2d."""
    p = len(kernel) - 2
    return upfirdn2d(x, fir_filter(kernel, 1.0, x.dtype, x.device), down=2, pad=((p + 1) // 2, p // 2))


class Resample(nn.Module):
    """score_sde's x2 `Upsample` / `Downsample` layer, with an optional 3x3 convolution `conv`.

    | fir | with_conv | down                                        | up                         |
    |-----|-----------|---------------------------------------------|----------------------------|
    | no  | no        | 2x2 average pooling                         | nearest neighbour          |
    | no  | yes       | 3x3 conv, stride 2, on the (0,1,0,1)-padded x | nearest, then 3x3 conv    |
    | yes | no        | `fir_down`                                  | `fir_up`                   |
    | yes | yes       | fused: FIR (pad (p+1)//2, p//2; p = n), then 3x3 conv stride 2 | refused |

    The fused FIR up-sampling convolution (StyleGAN2's `upsample_conv_2d`) is refused: score_sde's
    PyTorch port slices a tensor with a negative step there and fails, so no checkpoint uses it.
    """

    def __init__(self, cin: int, cout: int | None = None, *, up: bool, with_conv: bool, fir: bool,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        cout = cin if cout is None else cout
        if fir and with_conv and up:
            raise ValueError("Resample: a fused FIR up-sampling convolution (fir=True, with_conv=True, up=True) "
                             "fails in score_sde's own code and is not supported; use fir=False or with_conv=False")
        if not with_conv and cout != cin:
            raise ValueError(f"Resample: without a convolution the width cannot change, found {cin} -> {cout}")
        self.up, self.with_conv, self.fir = bool(up), bool(with_conv), bool(fir)
        self.fir_kernel = check_fir_kernel(fir_kernel)
        self.conv = conv(cin, cout, 3, stride=2 if (not up and not fir) else 1) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            if self.fir:
                return fir_up(x, self.fir_kernel)
            h = F.interpolate(x, scale_factor=2.0, mode="nearest")
            return self.conv(h) if self.conv is not None else h
        if self.conv is None:
            return fir_down(x, self.fir_kernel) if self.fir else F.avg_pool2d(x, 2, stride=2)
        if not self.fir:
            return self.conv(F.pad(x, (0, 1, 0, 1)))                   # TF 'SAME' stride-2 conv
        # fused: blur at full resolution, then the 3x3 conv with stride 2 (StyleGAN2 conv_downsample_2d)
        p = len(self.fir_kernel) - 2 + 2
        h = upfirdn2d(x, fir_filter(self.fir_kernel, 1.0, x.dtype, x.device), pad=((p + 1) // 2, p // 2))
        w, b = self.conv.weight, self.conv.bias   # bias added after the conv, as the reference does
        return F.conv2d(h, w, stride=2) + b.reshape(1, -1, 1, 1)
