"""Training a super-resolution stage: the low-resolution condition of each batch (SR3, CDM, Imagen).

A score model whose network takes an image condition (`model.image_shape = [C, h, w]`, scoresde.models.nets)
is trained on p(x | x_low): the condition of a batch x0 (B, C, H, W) is its area downsample to (h, w)
(`scoresde.models.superres.downsample`), the low-resolution view of the same images, corrupted by
noise-conditioning augmentation (Cascaded Diffusion Models, Ho et al. 2021, arXiv:2106.15282; Imagen,
arXiv:2205.11487): z_s = alpha(s) x_low + sigma(s) eps by the model's own SDE, s ~ U(0, train.aug_max) per row,
and s given to the network (`ScoreModel.image_cond`). The one training procedure serves both of CDM's
sampling variants (truncated: the base chain stopped at s; non-truncated: run to 0 and re-noised to s).
CDM's blur augmentation (`train.blur`) blurs the low-resolution image, after the downsampling, with a Gaussian
of standard deviation b ~ U(0, train.blur) low-resolution pixels per row.

Random draws, all from the engine's noise generator, in this fixed order (so a resumed run is exact), before
the recipe's own (label dropout, times, noise):
    1. s (B,) ~ U(0, aug_max)           (train.aug = "noise"; "none": s = 0, nothing drawn)
    2. b (B,) ~ U(0, blur)              (train.blur > 0)
    3. eps ~ N(0, I) of the augmentation, for the whole batch (rows with s = 0 are left unchanged; "none": no draw)

Class labels ride along (the Cond carries labels and the image; label dropout nulls the labels only).
On latents (a latent run, scoresde.training.tasks.latent) the condition is the low-resolution PIXEL image of
the images whose latents are trained.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from scoresde.models.conditioning import Cond
from scoresde.models.superres import downsample, gaussian_blur, upsample


__all__ = ["SuperResolution", "AUG_CHOICES"]

AUG_CHOICES = ("noise", "none")       # train.aug


def _words(shape) -> str:
    return "[" + ", ".join(str(v) for v in shape) + "]"


class SuperResolution:
    """The low-resolution view of a run's images: checks `model.image_shape` against the data, draws a batch's
    condition, and gives the conditions, the plot and the consistency of the samples at the hooks.

    `image_shape` [C, h, w] (the config's model.image_shape), `data_shape` (C, H, W) of the images the condition
    is taken from (pixels, also for a latent run), `train` the [train] section (aug, aug_max, blur)."""

    def __init__(self, image_shape: Any, data_shape: Any, train: Mapping[str, Any], data_name: str = "data"):
        key = f"config model.image_shape = {image_shape!r}"
        shape = tuple(data_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"{key}: a super-resolution model needs images (C, H, W), found data {data_name!r} "
                             f"of example shape {shape}")
        ok = (isinstance(image_shape, (list, tuple)) and len(image_shape) == 3
              and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in image_shape))
        if not ok:
            raise ValueError(f"{key}: expected [C, h, w], three positive integers (the low-resolution image), "
                             f"e.g. [{shape[0]}, {shape[1] // 4 or 1}, {shape[2] // 4 or 1}]")
        C, h, w = image_shape
        if C != shape[0]:
            raise ValueError(f"{key}: expected C = {shape[0]}, the channels of data {data_name!r} {_words(shape)}, "
                             f"found C = {C}")
        if shape[1] % h or shape[2] % w:
            raise ValueError(f"{key}: expected h, w dividing the data's H, W = {shape[1]}, {shape[2]} (the low-res "
                             f"image is an area downsample of data {data_name!r}), found h, w = {h}, {w}")
        self.image_shape, self.data_shape = (C, h, w), shape
        self.size = (h, w)
        self.aug, self.aug_max, self.blur = train["aug"], float(train["aug_max"]), float(train["blur"])
        if self.aug not in AUG_CHOICES:
            raise ValueError(f"config train.aug: expected one of {', '.join(AUG_CHOICES)}, found {self.aug!r}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], data_shape: Any, data_name: str = "data") -> SuperResolution | None:
        """The view of a config whose [model] sets image_shape, else None."""
        image_shape = cfg["model"].get("image_shape")
        if image_shape is None:
            return None
        return cls(image_shape, data_shape, cfg["train"], data_name)

    def check_sde(self, sde: Any) -> None:
        """train.aug_max is a time of the model's SDE: within [0, T]."""
        if self.aug == "noise" and self.aug_max > sde.T:
            raise ValueError(f"config train.aug_max = {self.aug_max!r}: expected a time of the model's SDE in "
                             f"[0, T = {sde.T:g}], found more")

    def meta(self) -> dict[str, Any]:
        """What a checkpoint records of the training condition (the cascade reads the augmentation range)."""
        return {"image_shape": list(self.image_shape), "aug": self.aug, "aug_max": self.aug_max, "blur": self.blur,
                "downsample": "area", "blur_at": "low-res"}

    # --- training -------------------------------------------------------------------------------------
    def levels(self, batch: int, generator: torch.Generator | None, device: Any) -> torch.Tensor:
        """(B,) augmentation levels s: U(0, aug_max) drawn from `generator` ("noise"), or zeros ("none")."""
        if self.aug == "none" or self.aug_max == 0:
            return torch.zeros(batch, device=device)
        gen_device = generator.device if generator is not None else device
        return (self.aug_max * torch.rand(batch, generator=generator, device=gen_device)).to(device)

    def low(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The low-resolution view of images x (B, C, H, W): the area downsample to (h, w), then (train.blur > 0)
        blurred with a std ~ U(0, blur) per row, drawn from `generator`."""
        x_low = downsample(x, self.size)
        if self.blur > 0:
            gen_device = generator.device if generator is not None else x.device
            b = (self.blur * torch.rand(x.shape[0], generator=generator, device=gen_device)).to(x.device)
            x_low = gaussian_blur(x_low, b)
        return x_low

    def condition(self, model: Any, x: torch.Tensor, generator: torch.Generator | None,
                  labels: torch.Tensor | None = None) -> Cond:
        """The condition of the training batch whose images are x (pixels): levels s, the low-res view (blur),
        then `model.image_cond` (the augmentation noise), in that order from `generator`; labels ride along."""
        s = self.levels(x.shape[0], generator, x.device)
        x_low = self.low(x, generator)
        base = getattr(model, "module", model)            # a DDP wrapper: the ScoreModel it holds
        return base.image_cond(x_low.to(x.dtype), s.to(x.dtype), generator=generator, labels=labels,
                               noisy=self.aug == "none")   # "none": the clean image at s = 0, no noise drawn

    # --- hooks ----------------------------------------------------------------------------------------
    @staticmethod
    def shown(count: int, n: int) -> torch.Tensor:
        """The indices of the examples whose low-res views the hooks super-resolve: n evenly spaced over the data
        (in turn when n > count), so every hook, evaluation and the final draw use the same inputs."""
        return (torch.arange(n) * count // n) if n <= count else torch.arange(n) % count

    def sample_cond(self, model: Any, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[Cond, torch.Tensor]:
        """(Cond at level s = 0, the clean low-res images) for images x: what the hooks sample from."""
        x_low = downsample(x, self.size)
        return model.image_cond(x_low, 0.0, labels=labels), x_low

    def grid(self, x_low: torch.Tensor, samples: torch.Tensor, cols: int = 8, max_pairs: int = 32) -> torch.Tensor:
        """Images for a grid of `cols` columns: each row of low-res inputs (nearest-upsampled to H, W) above the row
        of their super-resolutions."""
        n = min(len(samples), len(x_low), max_pairs)
        up = upsample(x_low[:n].to(samples), tuple(samples.shape[-2:]), mode="nearest")
        rows = []
        for lo in range(0, n, cols):
            hi = min(lo + cols, n)
            pad = torch.ones((cols - (hi - lo), *samples.shape[1:]), dtype=samples.dtype)
            rows += [up[lo:hi].cpu(), pad, samples[lo:hi].cpu(), pad]
        return torch.cat(rows)

    def psnr(self, x_low: torch.Tensor, samples: torch.Tensor) -> float:
        """Consistency of super-resolutions (dB): PSNR of their area downsample against the low-res inputs, on the
        data range [-1, 1] (peak-to-peak 2)."""
        mse = (downsample(samples.float(), self.size) - x_low.float().to(samples.device)).square().mean()
        return float(10 * torch.log10(4.0 / mse.clamp_min(1e-12)))
