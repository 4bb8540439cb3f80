"""Latent diffusion: the score task on the scaled latents of a frozen autoencoder.

Rombach et al. (2022), "High-Resolution Image Synthesis with Latent Diffusion Models",
arXiv:2112.10752, eq. 2: denoising score matching (Song et al. 2021, arXiv:2011.13456, eq. 7) of
z = (E(x) - shift) * scale, z ~ q(z | x), instead of x. The data are encoded once when the model is
built (posterior mean and std of every image, kept on the device) and every batch draws fresh
latents z = mean + std * n from them with the engine's noise generator, as LDM's on-the-fly
`encode(x).sample()`. Samples are decoded to images; checkpoints record the autoencoder (path, digest
of its weights and the scaling used), so `ss.load` and `scoresde sample` rebuild the pipeline.

A run is latent when its config names an `autoencoder` (`scoresde train --autoencoder RUN_OR_DIR`).
A latent super-resolution stage (`model.image_shape = [C, h, w]`) is conditioned on the low-resolution PIXEL
image, the area downsample of the images whose latents it learns (scoresde.training.superres).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from scoresde.data.datasets import Dataset
from scoresde.training.tasks.base import TASKS
from scoresde.training.tasks.score import ScoreTask, fast_draw
from scoresde.runs.load import load_autoencoder
from scoresde.training.recipes import recipe_defaults
from scoresde.runs.plots import plot_samples


__all__ = ["LatentScoreTask"]


@TASKS.register("latent")
class LatentScoreTask(ScoreTask):
    """Any registered score network trained on an autoencoder's scaled latents of the config's images."""

    name = "latent"

    @classmethod
    def data_defaults(cls, view: dict[str, Any], data: Any = None) -> dict[str, dict[str, Any]]:
        """The final draw of the decoded images: a fast sampler and the plot's 64 samples (scoresde.tasks.score);
        the recipe's SDE and preconditioner (scoresde.training.recipes)."""
        return recipe_defaults(view, {"sample": fast_draw(view, 64)})

    @classmethod
    def check_config(cls, cfg: dict[str, Any]) -> None:
        super().check_config(cfg)
        if not cfg["autoencoder"]:
            raise ValueError("autoencoder: a latent score model needs an autoencoder (a scoresde autoencoder run or "
                             "a diffusers AutoencoderKL directory), found none")

    def prepare(self) -> None:
        super().prepare()                                     # the images (and labels) as for pixel space
        self.pixels = self.ds
        self.ae = load_autoencoder(self.cfg["autoencoder"])
        self.ae.check_fits(self.pixels.shape, f"data {self.pixels.name!r}")
        self.latent_shape = self.ae.latent_shape(self.pixels.shape)
        if self.sr is not None and any(a > b for a, b in zip(self.sr.size, self.latent_shape[1:])):
            raise ValueError(f"config model.image_shape = {list(self.sr.image_shape)}: expected a low-res image no "
                             f"larger than the latents' {self.latent_shape[1]}x{self.latent_shape[2]} (the condition "
                             f"is resized to them), found {self.sr.size[0]}x{self.sr.size[1]}")

    @property
    def example_numel(self) -> int:
        return math.prod(self.latent_shape)

    def build(self, device: torch.device) -> torch.nn.Module:
        self.ae.to(device)
        mean, std = self.ae.encode_all(self.pixels.x, progress=self.cfg["train"]["progress"])   # (N, c, h, w)
        self.z_std = std
        self.ds = Dataset(mean.cpu(), f"{self.pixels.name} (latent)", labels=self.pixels.labels, kind="latent",
                          classes=self.pixels.classes, texts=self.pixels.texts)
        return super().build(device)                          # the network on the latent shape

    def _sr_images(self) -> torch.Tensor:
        return self.pixels.x                                  # the condition: low-res views of the pixels

    def meta(self) -> dict[str, Any]:
        m = super().meta()
        m["autoencoder"] = self.ae.meta()
        m["data"]["image_shape"] = list(self.pixels.shape)
        return m

    def loss(self, model, data_gen, noise_gen) -> torch.Tensor:
        T = self.cfg["train"]
        idx = torch.randint(len(self.ds), (T["batch_size"],), generator=data_gen).to(self.x_all.device)
        mean = self.x_all[idx]
        # z = mean + std * n ~ q(z | x), scaled: a fresh posterior draw each time an image is used
        z = mean + self.z_std[idx] * torch.randn(mean.shape, generator=noise_gen, device=mean.device)
        return self.batch_loss(model, z, idx, noise_gen)

    def sample(self, model, generator, n, progress=False) -> torch.Tensor:
        """Latents from the score model, decoded to images (n, C, H, W)."""
        return self.ae.decode_all(super().sample(model, generator, n, progress=progress)).cpu()

    def plot(self, x, path, title) -> None:
        if self.sr is not None:
            return super().plot(x, path, f"{title} (latent, decoded)")
        plot_samples(x, path, title=f"{self.pixels.name}: {title} (latent, decoded)")
