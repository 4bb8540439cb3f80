"""The image condition of a network: SR3's concatenation and the level of noise-conditioning augmentation.

SR3 (Saharia et al. 2021, arXiv:2104.07636) conditions a super-resolution model on the low-resolution image
by upsampling it to the target size and concatenating it with the noisy input on channels. Cascaded Diffusion
Models (Ho et al. 2021, arXiv:2106.15282) and Imagen (arXiv:2205.11487) corrupt that image by the forward
process to a level s during training and give s to the network ("noise-conditioning augmentation").

A network built with `image_shape=(C_i, h, w)` owns one `ImageInput`: it checks `cond.image` (B, C_i, h, w),
upsamples it to the data's (H, W) and concatenates it after x, so the network's first layer takes C + C_i
channels; `cond.image_level` (B,), already mapped by `ScoreModel` to the network's conditioning value as t is,
is embedded by the network's own time features into a second MLP (`ImageInput.level`, zero-initialised output:
an untrained level embedding changes nothing) whose output is added to the time embedding. A network called
directly with an image and no level gets no level embedding; `ScoreModel` always passes one (s = 0 unset).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scoresde._common.validation import check_choice
from scoresde.models.nets.primitives import linear


__all__ = ["UPSAMPLE_MODES", "ImageInput", "check_image_shape", "upsample_to", "level_mlp", "image_input"]

UPSAMPLE_MODES = ("bicubic", "bilinear", "nearest")


def check_image_shape(image_shape: Sequence[int] | None, data_shape: Sequence[int]) -> tuple[int, int, int] | None:
    """None, or (C_i, h, w) positive ints with h <= H, w <= W of the data (C, H, W) (the condition is upsampled)."""
    if image_shape is None:
        return None
    ok = (isinstance(image_shape, (tuple, list, torch.Size)) and len(image_shape) == 3
          and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in image_shape))
    if not ok:
        raise ValueError(f"image_shape: expected None or (C, h, w), three positive ints, found {image_shape!r}")
    image_shape = tuple(int(s) for s in image_shape)
    if len(data_shape) != 3:
        raise ValueError(f"image_shape: an image condition needs image data (C, H, W), found data_shape "
                         f"{tuple(data_shape)!r}")
    (_, h, w), (_, H, W) = image_shape, data_shape
    if h > H or w > W:
        raise ValueError(f"image_shape: expected a condition no larger than the data's {H}x{W} (it is upsampled "
                         f"to it), found {h}x{w}")
    return image_shape


def upsample_to(image: torch.Tensor, size: Sequence[int], mode: str = "bicubic") -> torch.Tensor:
    """`image` (B, C, h, w) resized to `size` (H, W) by `mode` (identity when the size is already right)."""
    size = tuple(int(s) for s in size)
    if tuple(image.shape[-2:]) == size:
        return image
    check_choice("mode", mode, UPSAMPLE_MODES)
    kw = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(image, size=size, mode=mode, **kw)


class ImageInput(nn.Module):
    """The image condition of a network with data (C, H, W): `forward(h, cond)` -> (h with the upsampled image
    concatenated on channels, the (B,) level or None). `level` (an nn.Module: features of the level -> the
    network's embedding width, or None without a time embedding) is the network's to apply."""

    def __init__(self, image_shape: Sequence[int], data_shape: Sequence[int], mode: str = "bicubic",
                 level: nn.Module | None = None):
        super().__init__()
        self.image_shape = check_image_shape(image_shape, data_shape)
        self.size = tuple(data_shape[1:])
        self.mode = check_choice("image_upsample", mode, UPSAMPLE_MODES)
        self.level = level

    @property
    def channels(self) -> int:
        return self.image_shape[0]

    def forward(self, h: torch.Tensor, cond) -> tuple[torch.Tensor, torch.Tensor | None]:
        image = getattr(cond, "image", None)
        B = h.shape[0]
        want = f"({B}, {', '.join(map(str, self.image_shape))})"
        if image is None:
            raise ValueError(f"cond.image: expected a {want} image condition for a network built with image_shape="
                             f"{list(self.image_shape)}, found None (pass a Cond(image=..., image_level=...), "
                             "e.g. model.image_cond(low_res, level))")
        if tuple(image.shape) != (B, *self.image_shape):
            raise ValueError(f"cond.image: expected shape {want}, found {tuple(image.shape)}")
        up = upsample_to(image.to(h.dtype), self.size, self.mode)
        return torch.cat([h, up], dim=1), cond.image_level


def level_mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    """features -> embedding: Linear, SiLU, Linear with a zero output layer (no effect before training)."""
    out = linear(out_dim, out_dim)
    nn.init.zeros_(out.weight)
    return nn.Sequential(linear(in_dim, out_dim), nn.SiLU(), out)


def image_input(net: nn.Module, image_shape: Sequence[int] | None, mode: str, feat_dim: int,
                emb_dim: int | None) -> ImageInput | None:
    """The `ImageInput` of `net` (whose `data_shape` and `config` are set) for `image_shape` (None: no image
    condition), its level embedded from `feat_dim` features to `emb_dim` (None: no level embedding); records
    image_shape and image_upsample in `net.config` when set (configs without them stay as they were)."""
    if image_shape is None:
        check_choice("image_upsample", mode, UPSAMPLE_MODES)
        return None
    out = ImageInput(image_shape, net.data_shape, mode, None if emb_dim is None else level_mlp(feat_dim, emb_dim))
    net.config.update(image_shape=list(out.image_shape), image_upsample=out.mode)
    return out
