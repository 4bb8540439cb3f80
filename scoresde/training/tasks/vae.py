"""The autoencoder task: the first stage of latent diffusion (Rombach et al. 2022, arXiv:2112.10752).

A `KLAutoencoder` is trained on images with LDM's loss (their `LPIPSWithDiscriminator`, without the
perceptual term, which needs downloaded VGG weights, and without the learned output log-variance):

    L = sum |x - D(z)|  (or squared)  +  kl_weight * KL(q(z|x) || N(0, I))            per example, batch mean
        [ + lambda * disc_factor * (-mean D_phi(D(z)))                                generator (hinge) term
          + disc_factor * 1/2 (mean relu(1 - D_phi(x)) + mean relu(1 + D_phi(D(z)))) ]   discriminator

with z ~ q(z | x) drawn with the engine's noise generator, disc_factor = [step >= disc_start] and LDM's
adaptive lambda = disc_weight * |grad_w L_rec| / (|grad_w L_gen| + 1e-4) on the decoder's last layer w.
The two adversarial terms share no gradient path (the generator term sees the discriminator's weights
detached, the discriminator sees D(z) detached), so the engine's single Adam trains both players.

Every checkpoint stores the latent scale factor 1 / std of posterior draws over (up to 1024 of) the
training images, measured on the raw weights, which are the ones `load_autoencoder` uses: LDM's first
stage keeps no EMA, so the task's default `train.ema_decay` is 0 (the run's plots then show them too).
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scoresde.data.datasets import Dataset, from_array, load_dataset
from scoresde.training.tasks.base import TASKS, Task
from scoresde.models.autoencoders.vae import KLAutoencoder, PatchDiscriminator
from scoresde.models.nets.layers import check_sequence
from scoresde.models.autoencoders.autoencoder import measure_scale_factor
from scoresde.runs.plots import image_grid


__all__ = ["AutoencoderTask"]

log = logging.getLogger("scoresde")
_ARCH = ("ch", "ch_mult", "num_res_blocks", "z_channels", "mid_attn", "num_groups", "dropout")
_SCALE_EXAMPLES = 1024


def _vae(cfg: dict[str, Any], data_shape):
    return KLAutoencoder(data_shape=tuple(data_shape), **{k: cfg["vae"][k] for k in _ARCH})


class _Trainer(nn.Module):
    """The autoencoder, the optional discriminator and the step counter (a buffer, so it is checkpointed);
    `forward(x, noise)` is the scalar training loss of one batch."""

    def __init__(self, vae: nn.Module, disc: nn.Module | None, v: dict[str, Any]):
        super().__init__()
        self.vae, self.disc = vae, disc
        self.l1, self.kl_weight = v["loss"] == "l1", v["kl_weight"]
        self.disc_weight, self.disc_start = v["disc_weight"], v["disc_start"]
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        rec, q = self.vae(x, noise)
        err = (x - rec).abs() if self.l1 else (x - rec).square()
        rec_loss = err.flatten(1).sum(1).mean()                      # sum over pixels, mean over the batch
        loss = rec_loss + self.kl_weight * q.kl().mean()
        if self.disc is not None:
            factor = (self.step >= self.disc_start).to(x.dtype)     # computed before the start too (DDP: all used)
            frozen = {k: p.detach() for k, p in self.disc.named_parameters()}
            g_loss = -torch.func.functional_call(self.disc, frozen, (rec,)).mean()
            w = self.disc_weight
            if torch.is_grad_enabled():
                last = self.vae.last_layer
                g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
                g_gen = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
                w = (g_rec.norm() / (g_gen.norm() + 1e-4)).clamp(0.0, 1e4).detach() * self.disc_weight
            d_real, d_fake = self.disc(x), self.disc(rec.detach())
            d_loss = 0.5 * (F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean())    # hinge
            loss = loss + factor * (w * g_loss + d_loss)
        if self.training:
            self.step += 1
        return loss


@TASKS.register("autoencoder")
class AutoencoderTask(Task):
    """A KL-regularised autoencoder trained on the config's image data (config section [vae])."""

    name = "autoencoder"
    eval_fields = ("rec_mse", "psnr")
    sections = ("vae",)                  # reads [vae]
    defaults = {"data": {"name": "digits32"},
                "train": {"steps": 3000, "batch_size": 64, "lr": 1e-3, "warmup": 100, "ema_decay": 0.0,
                          "grad_clip": -1.0, "log_every": 50, "ckpt_every": 500},
                "sample": {"n": 32}, "eval": {"n": 256}}

    @classmethod
    def check_config(cls, cfg: dict[str, Any]) -> None:
        """The [vae] architecture builds (on the meta device, at the smallest image size it accepts)."""
        f = 2 ** (len(check_sequence("vae.ch_mult", cfg["vae"]["ch_mult"])) - 1)
        with torch.device("meta"):
            _vae(cfg, (1, f, f))

    # --- data and model ------------------------------------------------------------------------------
    def prepare(self) -> None:
        d, data = self.cfg["data"], self.data
        if data is None:
            self.ds = load_dataset(d["name"], size=d["size"], seed=self.cfg["seed"], normalize=d["normalize"],
                                   image_size=d["image_size"], labels=False)
        else:
            self.ds = data if isinstance(data, Dataset) else from_array(data, name=d["name"], normalize=d["normalize"])
        if len(self.ds.shape) != 3:
            raise ValueError(f"data {self.ds.name!r}: the autoencoder task needs images (C, H, W), found examples "
                             f"of shape {self.ds.shape}")
        if self.cfg["train"]["ema_decay"] > 0:
            log.warning("train.ema_decay = %g: the run's plots show EMA weights, but the autoencoder is used with "
                        "its raw weights (as LDM's first stage)", self.cfg["train"]["ema_decay"])
        # a fixed subset: reconstructions for plots and metrics, and the scale-factor measurement
        self.order = torch.randperm(len(self.ds), generator=torch.Generator().manual_seed(self.cfg["seed"] + 1))

    @property
    def example_numel(self) -> int:
        return self.ds.x[0].numel()

    def build(self, device: torch.device) -> nn.Module:
        v = self.cfg["vae"]
        self.vae = _vae(self.cfg, self.ds.shape)
        disc = None
        if v["disc_weight"] > 0:
            disc = PatchDiscriminator(self.ds.shape[0], ch=v["disc_ch"], n_layers=v["disc_layers"],
                                      num_groups=v["num_groups"])
        self.model = _Trainer(self.vae, disc, v).to(device)
        self.x_all = self.ds.x.to(device)
        return self.model

    def meta(self) -> dict[str, Any]:
        ds, vae, v = self.ds, self.vae, self.cfg["vae"]
        loss = {k: v[k] for k in ("loss", "kl_weight", "disc_weight", "disc_start", "disc_ch", "disc_layers")}
        return {"model": {"name": "kl_vae", "config": vae.config, "loss": loss}, "sde": {},
                "data_shape": list(ds.shape), "data": {"name": ds.name, "kind": ds.kind, "classes": ds.classes},
                "autoencoder": {"scale_factor": self.scale_factor(), "shift_factor": 0.0,
                                "downsample": vae.downsample, "latent_shape": list(vae.latent_shape)}}

    def scale_factor(self) -> float:
        """1 / std of posterior draws over up to 1024 training images (LDM's scale_by_std), current weights."""
        was = self.vae.training
        self.vae.eval()
        g = torch.Generator(self.x_all.device).manual_seed(self.cfg["seed"])
        s = measure_scale_factor(self.vae, self.x_all[self.order[:_SCALE_EXAMPLES].to(self.x_all.device)], g)
        self.vae.train(was)
        return s

    # --- one step --------------------------------------------------------------------------------------
    def loss(self, model, data_gen, noise_gen) -> torch.Tensor:
        B = self.cfg["train"]["batch_size"]
        idx = torch.randint(len(self.ds), (B,), generator=data_gen).to(self.x_all.device)
        noise = torch.randn((B, *self.vae.latent_shape), generator=noise_gen, device=self.x_all.device)
        return model(self.x_all[idx], noise)

    # --- hooks: reconstructions ------------------------------------------------------------------------
    def _inputs(self, n: int) -> torch.Tensor:
        return self.ds.x[self.order[:min(n, len(self.ds))]]

    @torch.no_grad()
    def _reconstruct(self, model, x: torch.Tensor) -> torch.Tensor:
        dev = next(model.parameters()).device
        return torch.cat([model.vae(x[i:i + 256].to(dev))[0] for i in range(0, len(x), 256)]).cpu()

    def sample(self, model, generator, n, progress=False) -> torch.Tensor:
        """Reconstructions (posterior means decoded) of the first `n` images of a fixed subset."""
        return self._reconstruct(model, self._inputs(n))

    def plot(self, x, path, title) -> None:
        data = self._inputs(len(x))
        rows = [t for i in range(0, len(x), 8) for t in (data[i:i + 8], x[i:i + 8])]   # data row, reconstruction row
        image_grid(torch.cat(rows), path, nrow=8,
                   title=f"{self.ds.name}: {title}; odd rows data, even rows reconstructions")

    def _rec_metrics(self, x: torch.Tensor) -> dict[str, float]:
        mse = (x.float() - self._inputs(len(x)).float()).square().mean().item()
        # PSNR for data in [-1, 1] (peak-to-peak 2): 10 log10(2^2 / MSE), the same as for [0, 1] images
        return {"rec_mse": round(mse, 6), "psnr": round(10 * math.log10(4.0 / max(mse, 1e-12)), 3)}

    def evaluate(self, model, generator) -> dict[str, float]:
        return self._rec_metrics(self._reconstruct(model, self._inputs(self.cfg["eval"]["n"])))

    def final_metrics(self, x) -> dict[str, Any]:
        """Reconstruction error of `eval.n` images (the weights `load_autoencoder` uses) and the scale factor."""
        self.model.eval()
        m = self.evaluate(self.model, None)
        return {**m, "scale_factor": round(self.scale_factor(), 6)}
