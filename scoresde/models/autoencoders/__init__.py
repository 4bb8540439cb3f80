"""Latent diffusion (Rombach et al. 2022, arXiv:2112.10752): a KL-regularised autoencoder and the frozen
first stage that maps images to the scaled latents a score model is trained on.

- `KLAutoencoder`, `DiagonalGaussian`, `PatchDiscriminator` (`vae.py`): the network, trained by the
  `autoencoder` task (`scoresde train-autoencoder`);
- `Autoencoder` (`autoencoder.py`): the frozen first stage with its latent scale factor, from a
  `KLAutoencoder` or a diffusers `AutoencoderKL` (`scoresde.runs.load.load_autoencoder` opens a scoresde
  autoencoder run or a diffusers directory); `scoresde train --autoencoder RUN` trains a
  score model on its latents (the `latent` task) and `scoresde sample` decodes.
"""
from .autoencoder import Autoencoder, measure_scale_factor
from .vae import DiagonalGaussian, KLAutoencoder, PatchDiscriminator


__all__ = ["Autoencoder", "measure_scale_factor", "DiagonalGaussian", "KLAutoencoder",
           "PatchDiscriminator"]
