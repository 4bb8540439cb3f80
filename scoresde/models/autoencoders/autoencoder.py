"""The first stage of latent diffusion as a frozen module: images <-> scaled latents.

Rombach et al. (2022), arXiv:2112.10752, Sec. 4.3.2 and App. D.1: a score model is trained on the
latents of a fixed autoencoder, rescaled to unit variance,

    z = (E(x) - shift) * scale,     scale = 1 / std(E(x) over the training data)   ("scale_by_std"),
    x = D(z / scale + shift),

with E(x) a draw from the encoder's posterior q(z | x). Stable Diffusion's VAE carries scale 0.18215;
SD3 / Flux add a shift. `load_autoencoder` reads either a scoresde autoencoder run (`scoresde
train-autoencoder`, whose checkpoints store the measured scale) or a diffusers `AutoencoderKL`
`save_pretrained` directory (its `scaling_factor`, `shift_factor`, or per-channel `latents_mean` /
`latents_std`). diffusers is imported only on that path.
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from scoresde._common.digests import tensor_digests

from scoresde.models.autoencoders.vae import DiagonalGaussian
from scoresde.models.prebuild import check_diffusers_model


__all__ = ["Autoencoder", "measure_scale_factor"]


def _channel_view(v: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """A per-channel (c,) vector shaped to broadcast over z (B, c, *spatial)."""
    return v.to(z.dtype).reshape(-1, *([1] * (z.ndim - 2)))


class _Diffusers(nn.Module):
    """diffusers' AutoencoderKL behind the encode -> DiagonalGaussian / decode interface of KLAutoencoder."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.vae.encode(x).latent_dist.parameters)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample


class Autoencoder(nn.Module):
    """A frozen autoencoder (`vae.encode(x) -> DiagonalGaussian`, `vae.decode(z)`) with its latent scaling.

    Args:
        vae: a `KLAutoencoder` or a wrapped diffusers `AutoencoderKL`.
        kind: "scoresde" or "diffusers"; `source`: the path it was read from (recorded by latent runs).
        image_channels, downsample (f), latent_channels (c): the geometry; `image_size` (H, W) when the
            autoencoder only accepts the size it was trained on, else None (any multiple of f).
        scale_factor, shift_factor: z = (E(x) - shift) * scale; `latents_mean` / `latents_std` (c,)
            make it per channel: z = (E(x) - mean) * scale / std (diffusers' convention).
    """

    def __init__(self, vae: nn.Module, *, kind: str, source: str | None, image_channels: int, downsample: int,
                 latent_channels: int, scale_factor: float, shift_factor: float = 0.0,
                 latents_mean=None, latents_std=None, image_size=None):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.kind, self.source = kind, source
        self.image_channels, self.downsample, self.latent_channels = image_channels, downsample, latent_channels
        self.image_size = None if image_size is None else tuple(image_size)
        self.scale_factor, self.shift_factor = float(scale_factor), float(shift_factor)
        self.latents_mean = None if latents_mean is None else [float(v) for v in latents_mean]
        self.latents_std = None if latents_std is None else [float(v) for v in latents_std]
        c = latent_channels
        for name, v in (("latents_mean", self.latents_mean), ("latents_std", self.latents_std)):
            if v is not None and len(v) != c:
                raise ValueError(f"{name}: expected {c} values (one per latent channel), found {len(v)}")
        mean = torch.tensor(self.latents_mean) if self.latents_mean else torch.full((c,), self.shift_factor)
        std = torch.tensor(self.latents_std) if self.latents_std else torch.ones(c)
        self.register_buffer("offset", mean.double(), persistent=False)        # z = (E(x) - offset) * gain
        self.register_buffer("gain", self.scale_factor / std.double(), persistent=False)
        self._digest: str | None = None

    # --- geometry ------------------------------------------------------------------------------------
    def latent_shape(self, image_shape) -> tuple[int, ...]:
        """(c, H / f, W / f) of images (C, H, W); checks that they fit (see `check_fits`)."""
        self.check_fits(image_shape)
        return (self.latent_channels, *(s // self.downsample for s in tuple(image_shape)[1:]))

    def check_fits(self, image_shape, what: str = "images") -> None:
        """ValueError naming `what` unless images of `image_shape` are what this autoencoder reads."""
        shape, src = tuple(image_shape), self.source or self.kind
        if len(shape) != 3:
            raise ValueError(f"{what}: the autoencoder {src!r} reads images (C, H, W), found examples of shape {shape}")
        if shape[0] != self.image_channels:
            raise ValueError(f"{what}: the autoencoder {src!r} reads {self.image_channels}-channel images, found "
                             f"{shape[0]} channels (shape {shape})")
        if self.image_size is not None and shape[1:] != self.image_size:
            raise ValueError(f"{what}: the autoencoder {src!r} was trained on {self.image_size[0]}x{self.image_size[1]} "
                             f"images, found {shape[1]}x{shape[2]}")
        if shape[1] % self.downsample or shape[2] % self.downsample:
            raise ValueError(f"{what}: the autoencoder {src!r} downsamples by f = {self.downsample}, so H and W must "
                             f"be multiples of {self.downsample}; found {shape[1]}x{shape[2]}")

    # --- encode / decode -----------------------------------------------------------------------------
    def scale(self, z: torch.Tensor) -> torch.Tensor:
        return (z - _channel_view(self.offset, z)) * _channel_view(self.gain, z)

    def unscale(self, z: torch.Tensor) -> torch.Tensor:
        return z / _channel_view(self.gain, z) + _channel_view(self.offset, z)

    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z | x) in the autoencoder's own (unscaled) latent space."""
        return self.vae.encode(x)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None):
        """Scaled latents of images x: the posterior mean, or a draw from q(z | x) with `sample`."""
        q = self.posterior(x)
        return self.scale(q.sample(generator) if sample else q.mode())

    @torch.no_grad()
    def encode_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the scaled posterior: scaled draws are mean + std * n, n ~ N(0, I)."""
        q = self.posterior(x)
        return self.scale(q.mean), q.std * _channel_view(self.gain, q.std).abs()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images D(z / scale + shift) of scaled latents z."""
        return self.vae.decode(self.unscale(z))

    def _device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def encode_all(self, x: torch.Tensor, batch_size: int = 256, progress: bool = False):
        """`encode_stats` of a whole data set (N, C, H, W), batch by batch on this module's device."""
        from tqdm.auto import tqdm
        dev, out = self._device(), ([], [])
        for i in tqdm(range(0, len(x), batch_size), desc="encoding", disable=not progress, leave=False):
            m, s = self.encode_stats(x[i:i + batch_size].to(dev))
            out[0].append(m)
            out[1].append(s)
        return torch.cat(out[0]), torch.cat(out[1])

    @torch.no_grad()
    def decode_all(self, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        dev = self._device()
        return torch.cat([self.decode(z[i:i + batch_size].to(dev)) for i in range(0, len(z), batch_size)])

    # --- provenance ----------------------------------------------------------------------------------
    @property
    def digest(self) -> str:
        """SHA-256 of the autoencoder's weights (names, shapes, dtypes, bytes)."""
        if self._digest is None:
            self._digest = tensor_digests({f"ae/{k}": v for k, v in self.vae.state_dict().items()})["ae"]
        return self._digest

    def meta(self) -> dict[str, Any]:
        """JSON description a latent run stores (and `load_autoencoder(..., expect=...)` checks)."""
        return {"kind": self.kind, "source": self.source, "digest": self.digest, "scale_factor": self.scale_factor,
                "shift_factor": self.shift_factor, "latents_mean": self.latents_mean,
                "latents_std": self.latents_std, "image_channels": self.image_channels,
                "downsample": self.downsample, "latent_channels": self.latent_channels,
                "image_size": None if self.image_size is None else list(self.image_size)}

    def _with_digest(self, digest: str) -> "Autoencoder":
        self._digest = digest
        return self

    def extra_repr(self) -> str:
        return (f"kind={self.kind!r}, f={self.downsample}, c={self.latent_channels}, "
                f"scale_factor={self.scale_factor:.6g}, shift_factor={self.shift_factor:g}")


@torch.no_grad()
def measure_scale_factor(vae: nn.Module, x: torch.Tensor, generator: torch.Generator | None = None,
                         batch_size: int = 256) -> float:
    """1 / std of posterior draws z ~ q(z | x) over all entries of the latents of `x` (LDM's scale_by_std)."""
    dev = next(vae.parameters()).device
    z = torch.cat([vae.encode(x[i:i + batch_size].to(dev)).sample(generator) for i in range(0, len(x), batch_size)])
    return float(1.0 / z.double().std())


# --- loading -------------------------------------------------------------------------------------------
def diffusers_dir(path: str) -> str | None:
    """The AutoencoderKL folder of a diffusers model directory (config.json with a `_class_name`), or of a
    pipeline directory (its vae/ sub-folder); None when `path` is neither."""
    for d in (path, os.path.join(path, "vae")):
        cfg = os.path.join(d, "config.json")
        if os.path.isfile(cfg):
            try:
                with open(cfg) as f:
                    if "_class_name" in json.load(f):
                        return d
            except (OSError, ValueError):
                pass
    return None


def from_diffusers(vae: nn.Module, source: str | None) -> Autoencoder:
    c = vae.config
    if c.get("out_channels", c["in_channels"]) != c["in_channels"]:
        raise ValueError(f"autoencoder {source!r}: an AutoencoderKL with {c['in_channels']} input and "
                         f"{c['out_channels']} output channels cannot reconstruct its input")
    return Autoencoder(_Diffusers(vae), kind="diffusers", source=source, image_channels=c["in_channels"],
                       downsample=2 ** (len(c["block_out_channels"]) - 1), latent_channels=c["latent_channels"],
                       scale_factor=c.get("scaling_factor", 0.18215), shift_factor=c.get("shift_factor") or 0.0,
                       latents_mean=c.get("latents_mean"), latents_std=c.get("latents_std"))


def load_diffusers(path: str, d: str) -> Autoencoder:
    with open(os.path.join(d, "config.json")) as f:
        name = json.load(f)["_class_name"]
    if name != "AutoencoderKL":
        raise ValueError(f"autoencoder {path!r}: expected a diffusers AutoencoderKL directory, found a {name}")
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise ModuleNotFoundError(f"autoencoder {path!r} is a diffusers AutoencoderKL directory; reading it needs the "
                                  "diffusers package (pip install diffusers, or scoresde[bench])") from None
    check_diffusers_model(AutoencoderKL, d, f"autoencoder {path!r}")    # bounded config, meta build vs header
    try:
        vae = AutoencoderKL.from_pretrained(d, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"autoencoder {path!r}: diffusers could not read it ({str(e).splitlines()[0]})") from None
    return from_diffusers(vae.float(), os.path.abspath(path))
