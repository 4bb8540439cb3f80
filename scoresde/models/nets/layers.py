"""Shared building blocks of the score networks: noise-level features, initialisation, resampling,
residual and attention blocks.

- Sinusoidal ("positional") features: Vaswani et al. (2017), arXiv:1706.03762, as used for the
  time step by DDPM, Ho et al. (2020), arXiv:2006.11239.
- Gaussian Fourier features (random Fourier features, Tancik et al. 2020, arXiv:2006.10739) with
  scale 16, used by NCSN++ for continuous noise levels, Song et al. (2021), arXiv:2011.13456 App. H.
- DDPM residual block and self-attention (Ho et al. 2020, App. B); BigGAN-type residual up/down
  blocks (Brock et al. 2018, arXiv:1809.11096) with skip connections rescaled by 1/sqrt(2)
  (Song et al. 2021, App. H); FIR [1, 3, 3, 1] anti-aliased resampling (Karras et al. 2020,
  arXiv:1912.04958).

Everything here is autocast- and channels_last-safe: no dtype-specific branches, no `.item()`,
no Python control flow on tensor values.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scoresde._common.tensors import append_dims
from scoresde.models.conditioning import Cond
from scoresde.models.nets.primitives import conv, group_norm, linear
from scoresde.models.nets.resample import fir_down, fir_up


__all__ = [
    "EMBEDDINGS", "sinusoidal_embedding", "SinusoidalEmbedding", "GaussianFourierProjection",
    "make_embedding", "LabelEmbedding", "cond_labels", "check_num_classes",
    "Downsample", "Upsample",
    "fir_resample", "ResBlockDDPM", "ResBlockBigGAN", "AttnBlock",
]

EMBEDDINGS = ("sinusoidal", "fourier")  # "positional" is accepted as an alias of "sinusoidal"


def sinusoidal_embedding(c: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) -> (B, dim): [sin(c w_k), cos(c w_k)], w_k = max_period^{-k/(dim/2 - 1)} (DDPM's get_timestep_embedding)."""
    half = dim // 2
    k = torch.arange(half, device=c.device, dtype=c.dtype)
    w = torch.exp(k * -(math.log(max_period) / max(half - 1, 1)))  # (half,), in DDPM's order of operations
    arg = c[:, None] * w[None, :]  # (B, half)
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
    return F.pad(emb, (0, dim % 2))  # zero column when dim is odd


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal features of a noise-conditioning value c of arbitrary scale (DDPM: c = t in [0, 999])."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        self.dim, self.max_period = dim, max_period
        self.out_dim = dim

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return sinusoidal_embedding(c, self.dim, self.max_period)


class GaussianFourierProjection(nn.Module):
    """[sin(2 pi W c), cos(2 pi W c)], W ~ N(0, scale^2) fixed (a buffer, not trained); (B,) -> (B, 2 dim).

    Meant for c = log sigma (NCSN++ cont., scale 16, Song et al. 2021 App. H). The draw of W
    comes from torch's global RNG at construction, so `torch.manual_seed` fixes it; it is
    saved in the state dict.
    """

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        self.register_buffer("W", torch.randn(dim) * scale)
        self.out_dim = 2 * dim

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        arg = c[:, None] * self.W[None, :].to(c.dtype) * 2 * math.pi  # (B, dim), score_sde's order of operations
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


def make_embedding(kind: str, dim: int, fourier_scale: float = 16.0) -> nn.Module:
    """The noise-level feature map selected by `embedding=`: "sinusoidal"/"positional" or "fourier"."""
    if kind in ("sinusoidal", "positional"):
        return SinusoidalEmbedding(dim)
    if kind == "fourier":
        return GaussianFourierProjection(dim, fourier_scale)
    raise ValueError(f"embedding: expected one of {list(EMBEDDINGS) + ['positional']}, found {kind!r}")


def check_num_classes(num_classes) -> int | None:
    """`num_classes` of a class-conditional network: None (unconditional) or an int >= 1."""
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: expected None or an int >= 1, found {num_classes!r}")
    return num_classes


_compiling = getattr(torch.compiler, "is_compiling", lambda: False)   # torch.compile traces: no value checks


def class_labels(y, batch: int, device, hi: int, what: str, null: int | None, name: str = "y") -> torch.Tensor:
    """`y` as (B,) long class labels in [0, hi] on `device`, checked: type, dtype, shape, and the range for
    CPU tensors (a check on a GPU would sync the host; `nn.Embedding` asserts there). None means all
    `null` (an error where the network has no null label). `what` describes the valid labels, `name`
    the argument they came in (`y`, or `cond.labels` of a `Cond`)."""
    if y is None:
        if null is None:
            raise ValueError(f"{name}: expected {what}, found None")
        return torch.full((batch,), null, dtype=torch.long, device=device)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name}: expected a (B,) integer tensor of class labels or None, found {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor of class labels, found dtype {y.dtype}")
    if y.shape != (batch,):
        raise ValueError(f"{name}: expected shape ({batch},) to match the batch of x, found {tuple(y.shape)}")
    if y.device.type == "cpu" and not _compiling() and bool(((y < 0) | (y > hi)).any()):
        raise ValueError(f"{name}: expected {what}, found min {int(y.min())}, max {int(y.max())}")
    return y.to(device=device, dtype=torch.long)


def cond_labels(net: nn.Module, cond) -> tuple[torch.Tensor | None, str]:
    """(class labels or None, the name they came in) of a network's condition: a `Cond` (its labels; a
    field the network cannot read is refused), a (B,) label tensor (the former `forward(x, c, y)` call,
    and DiT's official one) or None (unconditional / the null label)."""
    if isinstance(cond, Cond):
        read = ("labels", "context", "context_mask") if getattr(net, "context_dim", None) is not None else ("labels",)
        if getattr(net, "image_in", None) is not None:
            read = (*read, "image", "image_level")
        extra = [k for k in cond.keys() if k not in read]
        if extra:
            what = " and ".join(["class labels", *(["a context"] if "context" in read else []),
                                 *(["an image"] if "image" in read else [])])
            what = what if len(read) > 1 else "class labels only"
            hint = ("; build it with context_dim=D for cross-attention to a token sequence"
                    if "context" in extra and "context" not in read else
                    "; build it with image_shape=(C, h, w) for an image condition"
                    if "image" in extra and "image" not in read else "")
            raise ValueError(f"cond: this {type(net).__name__} reads {what}, found fields {extra}{hint}")
        return cond.labels, "cond.labels"
    return cond, "y"


class LabelEmbedding(nn.Module):
    """Class-label embedding with a learned null label (classifier-free guidance, Ho & Salimans 2022,
    arXiv:2207.12598): labels 0..K-1 are classes, label K = `num_classes` is "no label".

    forward(y, batch, device) -> (B, dim); y is a (B,) integer tensor in [0, K] or None (all null).
    The result is added to the noise-level embedding of the network. The label range is checked
    for CPU tensors only (a check on a GPU would sync the host; `nn.Embedding` asserts there).
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y, batch: int, device, name: str = "y") -> torch.Tensor:
        K = self.num_classes
        return self.table(class_labels(y, batch, device, K, f"labels in [0, {K}] ({K} = the null label)", null=K,
                                       name=name))


def check_unconditional(net: nn.Module, y, name: str = "y") -> None:
    """An unconditional network (num_classes None) refuses labels."""
    if y is not None:
        raise ValueError(f"{name}: this {type(net).__name__} is unconditional (num_classes=None); build it with "
                         f"num_classes=K to pass class labels, or pass {name.split('.')[0]}=None")


# ----------------------------------------------------------------------------------- initialisation


# ------------------------------------------------------------------------------------- resampling

def fir_resample(x: torch.Tensor, up: bool, kernel: Sequence[int] = (1, 3, 3, 1)) -> torch.Tensor:
    """Anti-aliased x2 up/down-sampling with the separable FIR filter k k^T / sum^2 (StyleGAN2's upfirdn2d).

    Down: depthwise blur + stride 2 (H -> H/2); up: depthwise transposed conv, gain 4 (H -> 2H).
    The 4-tap default kernel takes this fast path; other kernels go through `resample.upfirdn2d`.
    """
    if tuple(kernel) != (1, 3, 3, 1):
        return fir_up(x, kernel) if up else fir_down(x, kernel)
    k = torch.as_tensor(kernel, dtype=x.dtype, device=x.device)
    k2 = torch.outer(k, k)
    k2 = k2 / k2.sum()
    C = x.shape[1]
    w = k2.expand(C, 1, *k2.shape).contiguous()  # (C, 1, 4, 4)
    if up:
        return F.conv_transpose2d(x, w * 4, stride=2, padding=1, groups=C)
    return F.conv2d(x, w, stride=2, padding=1, groups=C)


def _naive_resample(x: torch.Tensor, up: bool) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest") if up else F.avg_pool2d(x, 2)


def resample(x: torch.Tensor, up: bool, fir: bool, kernel: Sequence[int] = (1, 3, 3, 1)) -> torch.Tensor:
    return fir_resample(x, up, kernel) if fir else _naive_resample(x, up)


class Downsample(nn.Module):
    """DDPM downsampling: 3x3 conv with stride 2 on the (0, 1, 0, 1)-padded input (TF 'SAME')."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = conv(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """DDPM upsampling: nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = conv(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# ------------------------------------------------------------------------------------------ blocks

class ResBlockDDPM(nn.Module):
    """DDPM residual block: h = conv(act(GN(x))) + dense(act(temb)); h = conv(drop(act(GN(h)))); x' + h.

    `skip_rescale` divides the sum by sqrt(2) (DDPM++'s block); `num_groups=None` takes min(C // 4, 32)
    groups (NCSN++'s rule); `temb=None` (a network without noise conditioning) skips the dense shift.
    """

    def __init__(self, cin: int, cout: int, temb_dim: int, dropout: float, num_groups: int | None = 32,
                 skip_rescale: bool = False, init_scale: float = 0.0):
        super().__init__()
        self.norm0, self.conv0 = group_norm(cin, num_groups), conv(cin, cout)
        self.dense = linear(temb_dim, cout)
        self.norm1, self.drop = group_norm(cout, num_groups), nn.Dropout(dropout)
        self.conv1 = conv(cout, cout, init_scale=init_scale)
        self.skip = conv(cin, cout, 1) if cin != cout else nn.Identity()  # NIN shortcut
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        if temb is not None:
            h = h + self.dense(F.silu(temb))[:, :, None, None]  # (B, C, 1, 1): per-channel shift
        h = self.conv1(self.drop(F.silu(self.norm1(h))))
        out = self.skip(x) + h
        return out / math.sqrt(2) if self.skip_rescale else out


class ResBlockBigGAN(nn.Module):
    """BigGAN-type residual block (optionally up/down-sampling both paths), NCSN++ / DDPM++.

    out = (skip(resample(x)) + h) / sqrt(2) with `skip_rescale` (Song et al. 2021, App. H, item 2).
    """

    def __init__(self, cin: int, cout: int, temb_dim: int, dropout: float, up: bool = False,
                 down: bool = False, fir: bool = False, skip_rescale: bool = True,
                 fir_kernel: Sequence[int] = (1, 3, 3, 1), init_scale: float = 0.0):
        super().__init__()
        self.up, self.down, self.fir, self.skip_rescale = up, down, fir, skip_rescale
        self.fir_kernel = tuple(fir_kernel)
        self.norm0, self.conv0 = group_norm(cin), conv(cin, cout)
        self.dense = linear(temb_dim, cout)
        self.norm1, self.drop = group_norm(cout), nn.Dropout(dropout)
        self.conv1 = conv(cout, cout, init_scale=init_scale)
        self.skip = conv(cin, cout, 1) if (cin != cout or up or down) else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        h = F.silu(self.norm0(x))
        if self.up or self.down:  # a construction-time flag, not a tensor value
            h, x = resample(h, self.up, self.fir, self.fir_kernel), resample(x, self.up, self.fir, self.fir_kernel)
        h = self.conv0(h)
        if temb is not None:  # None: a network without noise conditioning
            h = h + self.dense(F.silu(temb))[:, :, None, None]
        h = self.conv1(self.drop(F.silu(self.norm1(h))))
        out = self.skip(x) + h
        return out * (1 / math.sqrt(2)) if self.skip_rescale else out


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, residual (DDPM App. B); fused qkv + SDPA.

    Parameters match DDPM's four NIN layers (q, k, v, out: 4 C^2 + 4 C).
    """

    def __init__(self, ch: int, num_groups: int | None = None, skip_rescale: bool = False, init_scale: float = 0.0):
        super().__init__()
        self.norm = group_norm(ch, num_groups)
        self.qkv = linear(ch, 3 * ch)
        self.proj = linear(ch, ch, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(h).unsqueeze(1).chunk(3, dim=-1)  # 3 x (B, 1, HW, C)
        # softmax(q k^T / sqrt(C)) v
        h = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # (B, HW, C)
        h = self.proj(h).transpose(1, 2).reshape(B, C, H, W)
        out = x + h
        return out * (1 / math.sqrt(2)) if self.skip_rescale else out


# ---------------------------------------------------------------------------------- I/O helpers

def check_data_shape(data_shape, *, image: bool, levels: int = 1, name: str = "data_shape") -> tuple[int, ...]:
    """Validate `data_shape` (positive ints); for U-Nets it must be (C, H, W) with H, W divisible by 2^(levels-1)."""
    if isinstance(data_shape, int) and not isinstance(data_shape, bool):
        data_shape = (data_shape,)
    if not isinstance(data_shape, (tuple, list, torch.Size)) or not data_shape or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in data_shape):
        raise ValueError(f"{name}: expected a non-empty sequence of positive ints, found {data_shape!r}")
    data_shape = tuple(int(s) for s in data_shape)
    if image:
        if len(data_shape) != 3:
            raise ValueError(f"{name}: a U-Net expects images (C, H, W), found {data_shape!r}")
        f = 2 ** (levels - 1)
        if data_shape[1] % f or data_shape[2] % f:
            raise ValueError(f"{name}: with len(ch_mult) = {levels} the U-Net down-samples {levels - 1} times, so "
                             f"H and W must be divisible by {f}; found {data_shape[1]}x{data_shape[2]}")
    return data_shape


def check_sequence(name: str, value, minimum: int = 1) -> tuple[int, ...]:
    """A non-empty sequence of ints >= minimum, returned as a tuple (JSON-friendly via list())."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value):
        raise ValueError(f"{name}: expected a sequence of ints >= {minimum}, found {value!r}")
    return tuple(value)


def check_inputs(net: nn.Module, x: torch.Tensor, c: torch.Tensor, dtype: torch.dtype):
    """Shape checks (static, compile-friendly) and cast of x and c to the network's parameter dtype."""
    if x.shape[1:] != net.data_shape:
        raise ValueError(f"x: expected shape (B, {', '.join(map(str, net.data_shape))}), found {tuple(x.shape)}")
    if not isinstance(c, torch.Tensor):
        c = torch.as_tensor(c, device=x.device)
    if c.ndim == 0:
        c = c.expand(x.shape[0])
    if c.shape != (x.shape[0],):
        raise ValueError(f"c: expected a noise-conditioning tensor of shape ({x.shape[0]},), found {tuple(c.shape)}")
    return x.to(dtype), c.to(device=x.device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)


def embed_inputs(net: nn.Module, x: torch.Tensor, c: torch.Tensor, cond, dtype: torch.dtype):
    """Checked input and the conditioning embedding shared by every network's forward:
    (x cast to `dtype`, temb(embed(c)) + label(labels)), with the null label for cond=None; `cond` a
    `Cond`, a (B,) label tensor or None (see `cond_labels`).

    A network with `embed_log` embeds log(c) (score_sde's NCSN++ is fed sigma itself); one whose
    `temb` is None (no noise conditioning) gets None. A network with an image condition (`image_in`, an
    `ImageInput`: models/nets/image_input.py) gets cond.image upsampled and concatenated after x, and the
    embedding of cond.image_level (by the same features as c) added to its embedding."""
    h, c = check_inputs(net, x, c, dtype)
    y, name = cond_labels(net, cond)
    image_in, level = getattr(net, "image_in", None), None
    if image_in is not None:
        h, level = image_in(h, cond)

    def features(v: torch.Tensor) -> torch.Tensor:
        return net.embed(torch.log(v) if getattr(net, "embed_log", False) else v).to(dtype)
    if getattr(net, "temb", None) is None:
        check_unconditional(net, y, name)
        return h, None
    emb = net.temb(features(c))  # (B, E)
    if net.label is None:
        check_unconditional(net, y, name)
    else:
        emb = emb + net.label(y, x.shape[0], x.device, name).to(dtype)  # + class embedding
    if level is not None and image_in.level is not None:
        level = check_inputs(net, x, level, dtype)[1]                  # (B,) like c
        emb = emb + image_in.level(features(level))                    # + augmentation-level embedding
    return h, emb


def add_sigma_table(net: nn.Module, num_scales: int | None) -> None:
    """Register the float64 buffer `sigmas` (num_scales,) of a network that divides its output by a
    noise level looked up from integer labels (score_sde's discrete VE models); filled by a loader."""
    if num_scales is not None:
        if isinstance(num_scales, bool) or not isinstance(num_scales, int) or num_scales < 1:
            raise ValueError(f"num_scales: expected None or an int >= 1, found {num_scales!r}")
        net.register_buffer("sigmas", torch.zeros(num_scales, dtype=torch.float64))


def scale_by_sigma(net: nn.Module, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """h / sigma(c) for a network built with `scale_by_sigma`: sigma = sigmas[c] with a sigma table
    (c integer labels), c itself with `embed_log` (c = sigma), else exp(c) (c = log sigma)."""
    if getattr(net, "sigmas", None) is not None:
        sigma = net.sigmas[c.long()]                          # float64, like the reference
    else:
        sigma = c if getattr(net, "embed_log", False) else torch.exp(c)
    return h / append_dims(sigma, h.ndim)
