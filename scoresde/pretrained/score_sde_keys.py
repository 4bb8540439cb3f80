"""score_sde_pytorch state-dict keys <-> our NCSN++ / DDPM networks (Song et al. 2021, arXiv:2011.13456).

score_sde keeps every layer of a network in one flat `all_modules` list, in the order its forward
pass uses them (models/ncsnpp.py, models/ddpm.py), and its blocks name their layers `GroupNorm_0`,
`Conv_0`, `Dense_0`, ... Its attention and shortcut layers are `NIN`s, a weight W (in, out) applied
as x W + b, where ours are a fused q/k/v `nn.Linear` (weight (3C, C)) and 1x1 convolutions.
`official_entries(net)` walks one of our networks in score_sde's order and returns, for every
tensor of the official state dict (in its order), where it lives in ours:

    Entry(key, target, rows, nin, trainable)
      key:    the official key without DataParallel's "module." prefix ("all_modules.4.Conv_0.weight");
      target: our state-dict key ("" where ours keeps no copy);
      rows:   a row slice of the target (q, k, v of the fused qkv) or None;
      nin:    a NIN weight W (in, out), stored transposed as ours (out, in[, 1, 1]);
      trainable: in score_sde's `ema.shadow_params` (all parameters but the Fourier W; buffers never).
"""
from __future__ import annotations

from typing import NamedTuple

from torch import nn

from scoresde.models.nets.layers import AttnBlock, GaussianFourierProjection, ResBlockBigGAN, ResBlockDDPM
from scoresde.models.nets.ncsnpp import NCSNpp
from scoresde.models.nets.resample import Resample
from scoresde.models.nets.unet import DDPMUNet


__all__ = ["Entry", "official_entries"]


class Entry(NamedTuple):
    key: str
    target: str
    rows: slice | None = None
    nin: bool = False
    trainable: bool = True


def _wb(off: str, ours: str) -> list[Entry]:
    """A layer with `weight` and `bias` under the same names (Conv2d, Linear, GroupNorm)."""
    return [Entry(f"{off}.weight", f"{ours}.weight"), Entry(f"{off}.bias", f"{ours}.bias")]


def _block(off: str, ours: str, block: nn.Module) -> list[Entry]:
    """ResnetBlockBigGANpp / ResnetBlockDDPMpp / ResnetBlockDDPM (registration order of score_sde)."""
    out = []
    for a, b in (("GroupNorm_0", "norm0"), ("Conv_0", "conv0"), ("Dense_0", "dense"), ("GroupNorm_1", "norm1"),
                 ("Conv_1", "conv1")):
        out += _wb(f"{off}.{a}", f"{ours}.{b}")
    if isinstance(block.skip, nn.Conv2d):
        if isinstance(block, ResBlockBigGAN):      # conv1x1 shortcut
            out += _wb(f"{off}.Conv_2", f"{ours}.skip")
        else:                                      # NIN shortcut
            out += [Entry(f"{off}.NIN_0.W", f"{ours}.skip.weight", nin=True),
                    Entry(f"{off}.NIN_0.b", f"{ours}.skip.bias")]
    return out


def _attn(off: str, ours: str, attn: AttnBlock) -> list[Entry]:
    """AttnBlock(pp): GroupNorm_0, then NIN_0..2 = rows of our fused qkv, NIN_3 = our proj."""
    C = attn.proj.weight.shape[0]
    out = _wb(f"{off}.GroupNorm_0", f"{ours}.norm")
    for i in range(3):
        rows = slice(i * C, (i + 1) * C)
        out += [Entry(f"{off}.NIN_{i}.W", f"{ours}.qkv.weight", rows, nin=True),
                Entry(f"{off}.NIN_{i}.b", f"{ours}.qkv.bias", rows)]
    return out + [Entry(f"{off}.NIN_3.W", f"{ours}.proj.weight", nin=True),
                  Entry(f"{off}.NIN_3.b", f"{ours}.proj.bias")]


def _resample(off: str, ours: str, layer: Resample) -> list[Entry]:
    """layerspp.Upsample / Downsample: `Conv2d_0` (FIR, StyleGAN2 layer) or `Conv_0`, or no parameters."""
    if layer.conv is None:
        return []
    return _wb(f"{off}.{'Conv2d_0' if layer.fir else 'Conv_0'}", f"{ours}.conv")


def _layer(off: str, ours: str, module: nn.Module) -> list[Entry]:
    if isinstance(module, (ResBlockBigGAN, ResBlockDDPM)):
        return _block(off, ours, module)
    if isinstance(module, AttnBlock):
        return _attn(off, ours, module)
    if isinstance(module, Resample):
        return _resample(off, ours, module)
    if isinstance(getattr(module, "conv", None), nn.Conv2d):   # DDPM Down/Upsample, NCSN++ Combine
        return _wb(f"{off}.Conv_0", f"{ours}.conv")
    return _wb(off, ours)                                                # Conv2d, Linear, GroupNorm


def _ncsnpp_modules(net: NCSNpp) -> list[tuple[str, nn.Module]]:
    """(our path, module) of every `all_modules` entry of score_sde's NCSNpp, in its order."""
    paths = ["embed"] if isinstance(net.embed, GaussianFourierProjection) else []
    paths += (["temb.0", "temb.2"] if net.temb is not None else []) + ["conv_in"]
    n = net.num_res_blocks
    for i in range(net.levels):
        for j in range(i * n, (i + 1) * n):
            paths += [f"down_blocks.{j}"] + ([f"down_attn.{j}"] if isinstance(net.down_attn[j], AttnBlock) else [])
        if i != net.levels - 1:
            paths.append(f"downsamplers.{i}")
            if net.progressive_input == "residual":
                paths.append(f"pyramid.{i}")
            elif net.progressive_input == "input_skip":
                paths.append(f"combine.{i}")
    paths += ["mid.0", "mid.1", "mid.2"]
    for k in range(net.levels):
        paths += [f"up_blocks.{j}" for j in range(k * (n + 1), (k + 1) * (n + 1))]
        if isinstance(net.up_attn[k], AttnBlock):
            paths.append(f"up_attn.{k}")
        if net.progressive == "output_skip" or (net.progressive == "residual" and k == 0):
            paths += [f"out_norms.{k}", f"out_convs.{k}"]
        elif net.progressive == "residual":
            paths.append(f"pyramid_up.{k - 1}")
        if k != net.levels - 1:
            paths.append(f"upsamplers.{k}")
    if net.progressive != "output_skip":
        paths += ["norm_out", "conv_out"]
    return [(p, net.get_submodule(p)) for p in paths]


def _ddpm_modules(net: DDPMUNet) -> list[tuple[str, nn.Module]]:
    """(our path, module) of every `all_modules` entry of score_sde's DDPM, in its order."""
    mods = [("temb.0", net.temb[0]), ("temb.2", net.temb[2]), ("conv_in", net.conv_in)]
    for part in ("down", "up"):
        if part == "up":
            mods += [(f"mid.{i}", m) for i, m in enumerate(net.mid)]
        for i, level in enumerate(getattr(net, part)):
            mods += [(f"{part}.{i}.{j}", m) for j, m in enumerate(level)]
    return mods + [("norm_out", net.norm_out), ("conv_out", net.conv_out)]


def official_entries(net: nn.Module) -> list[Entry]:
    """Every tensor of score_sde's state dict for the network `net` stands for, in score_sde's order."""
    if isinstance(net, NCSNpp):
        mods = _ncsnpp_modules(net)
    elif isinstance(net, DDPMUNet):
        if net.label is not None or net.temb is None:
            raise ValueError("net: score_sde's DDPM is noise-conditional and has no class labels")
        mods = _ddpm_modules(net)
    else:
        raise TypeError(f"net: expected an NCSNpp or DDPMUNet, found {type(net).__name__}")
    # the noise-level table, a buffer: ours has one only where the forward pass reads it
    entries = [Entry("sigmas", "sigmas" if getattr(net, "sigmas", None) is not None else "", trainable=False)]
    for i, (path, module) in enumerate(mods):
        if path == "embed":                                           # the fixed Fourier frequencies
            entries.append(Entry(f"all_modules.{i}.W", "embed.W", trainable=False))
        else:
            entries += _layer(f"all_modules.{i}", path, module)
    return entries
