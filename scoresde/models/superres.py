"""Super-resolution helpers: the low-resolution view of an image, its upsampling, blur, and noise augmentation.

- SR3 (Saharia et al. 2021, arXiv:2104.07636): a super-resolution model sees the low-resolution image upsampled
  to the target size and concatenated with its noisy input (the networks do it: models/nets/image_input.py).
- Cascaded Diffusion Models (Ho et al. 2021, arXiv:2106.15282), "conditioning augmentation": the
  low-resolution condition is corrupted by the forward process to a level s, z_s = alpha(s) x + sigma(s) eps
  (for VP, sqrt(abar_s) x + sqrt(1 - abar_s) eps), and s is given to the network; s is random in training and
  chosen (swept) at sampling. Blur augmentation (a Gaussian blur of the condition) at the highest resolution.
  Imagen (arXiv:2205.11487) calls noise-conditioning augmentation critical.

Here the augmentation process is the model's own SDE, so s is a time in [0, T] of that SDE and a truncated
cascade (the base chain stopped at s) hands the next stage a condition with exactly that corruption.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from scoresde._common.tensors import append_dims
from scoresde.models.nets.image_input import UPSAMPLE_MODES, upsample_to


__all__ = ["downsample", "upsample", "gaussian_blur", "augment_by_sde", "check_level", "UPSAMPLE_MODES"]


def _check_images(x: Any, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4:
        found = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a (B, C, H, W) floating-point image batch, found {found}")
    return x


def _check_size(size: Any) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (not isinstance(size, (tuple, list, torch.Size)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise ValueError(f"size: expected (h, w), two positive ints (or one int), found {size!r}")
    return int(size[0]), int(size[1])


def downsample(x: torch.Tensor, size: Sequence[int] | int) -> torch.Tensor:
    """The low-resolution view of `x` (B, C, H, W) at `size` (h, w) by area averaging (each low-res pixel the mean
    of its H/h x W/w block); h and w must divide H and W."""
    x, (h, w) = _check_images(x, "x"), _check_size(size)
    H, W = x.shape[-2:]
    if H % h or W % w:
        raise ValueError(f"size: expected (h, w) dividing the image's {H}x{W} (area averaging over whole blocks), "
                         f"found {h}x{w}")
    return F.avg_pool2d(x, (H // h, W // w)) if (h, w) != (H, W) else x


def upsample(x: torch.Tensor, size: Sequence[int] | int, mode: str = "bicubic") -> torch.Tensor:
    """`x` (B, C, h, w) resized to `size` (H, W) by `mode` ("bicubic", "bilinear", "nearest"), as the networks do."""
    return upsample_to(_check_images(x, "x"), _check_size(size), mode)


def gaussian_blur(x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """`x` (B, C, H, W) blurred by a separable Gaussian of std `sigma` pixels (a number, or (B,) one per image;
    0 leaves an image as it is), reflect-padded, kernel radius ceil(3 sigma_max)."""
    x = _check_images(x, "x")
    B, C, H, W = x.shape
    s = torch.as_tensor(sigma, dtype=torch.float64)
    if s.ndim == 0:
        s = s.expand(B)
    if s.shape != (B,) or not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError(f"sigma: expected a number >= 0 or a ({B},) tensor of them, found {sigma!r}")
    r = math.ceil(3 * float(s.max())) if B else 0
    r = min(r, (min(H, W) - 1))                                 # reflect padding needs r < the image size
    if r <= 0:
        return x
    k = torch.arange(-r, r + 1, dtype=torch.float64)
    safe = s.clamp_min(1e-12)[:, None]
    kern = torch.exp(-0.5 * (k[None] / safe) ** 2)
    kern = torch.where(s[:, None] > 0, kern, (k[None] == 0).to(kern.dtype))          # sigma 0: the identity
    kern = (kern / kern.sum(1, keepdim=True)).to(x).repeat_interleave(C, 0)          # (B*C, 2r+1)
    h = F.pad(x.reshape(1, B * C, H, W), (r, r, r, r), mode="reflect")
    h = F.conv2d(h, kern[:, None, :, None], groups=B * C)                            # along H
    h = F.conv2d(h, kern[:, None, None, :], groups=B * C)                            # along W
    return h.reshape(B, C, H, W)


def check_level(level: Any, batch: int, sde: Any, like: torch.Tensor, name: str = "level") -> torch.Tensor:
    """A (B,) tensor of augmentation levels from a number or a (B,) tensor of times in [0, T] of `sde`."""
    T = float(getattr(sde, "T", 1.0))
    if isinstance(level, bool) or not isinstance(level, (int, float, torch.Tensor)):
        raise TypeError(f"{name}: expected a time s in [0, {T:g}] or a ({batch},) tensor of them, found "
                        f"{type(level).__name__}")
    s = torch.as_tensor(level, dtype=like.dtype, device=like.device)
    if s.ndim == 0:
        s = s.expand(batch)
    if s.shape != (batch,):
        raise ValueError(f"{name}: expected a number or a ({batch},) tensor, found shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()) or bool((s > T * (1 + 1e-6)).any()):
        raise ValueError(f"{name}: expected times s in [0, {T:g}] (the SDE's), found min {float(s.min()):g}, "
                         f"max {float(s.max()):g}")
    return s


def augment_by_sde(sde: Any, image: torch.Tensor, level: Any, generator: torch.Generator | None = None,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """Noise-conditioning augmentation: alpha(s) image + sigma(s) eps by `sde`'s marginal, per row; rows at
    s = 0 are returned unchanged (no noise drawn differs for them: eps is drawn for the whole batch)."""
    image = _check_images(image, "image")
    s = check_level(level, image.shape[0], sde, image)
    if noise is None:
        noise = torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)
    elif noise.shape != image.shape:
        raise ValueError(f"noise: expected shape {tuple(image.shape)} like image, found {tuple(noise.shape)}")
    alpha, sigma = sde.marginal_coefs(s)
    out = append_dims(alpha, image.ndim) * image + append_dims(sigma, image.ndim) * noise
    return torch.where(append_dims(s > 0, image.ndim), out, image)
