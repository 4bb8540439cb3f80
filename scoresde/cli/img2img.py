"""`scoresde sample --init-image IMG --strength S`: SDEdit of a user's images with a trained run
(Meng et al. 2021, arXiv:2108.01073; `scoresde.sdedit`). `cli/sample.py` parses the options and calls
`sample_img2img`; the guides are read here (an image file, an image folder, or a .npy/.npz array in the
model's data range), checked against the model's data shape, edited, and written with `save_samples`.
"""
from __future__ import annotations

import os

import torch

from scoresde._common.distributed import resolve_device
from scoresde._common.threads import thread_policy
from scoresde.data.datasets import IMAGE_EXTENSIONS, load_dataset
from scoresde.runs.plots import save_samples
from scoresde.samplers.core import check_sampler_options
from scoresde.samplers.img2img import sdedit


__all__ = ["sample_img2img", "load_guides", "check_strength"]


def check_strength(strength: float | None) -> float:
    """--strength: a number in [0, 1] (default 0.5)."""
    if strength is None:
        return 0.5
    if not 0 <= strength <= 1:
        raise ValueError(f"--strength: expected a number in [0, 1] (0 keeps the image, 1 samples afresh), "
                         f"found {strength:g}")
    return float(strength)


def _read_image(path: str, channels: int) -> torch.Tensor:
    """One image file as (1, C, H, W) in [-1, 1], converted to the model's channels (1: grey, 3: RGB)."""
    from PIL import Image
    import numpy as np
    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.float32)
    except (OSError, ValueError) as e:
        raise ValueError(f"--init-image {path!r}: not a readable image ({str(e).splitlines()[0]})") from None
    x = torch.from_numpy(a.copy()) / 127.5 - 1
    return (x[None] if x.ndim == 2 else x.permute(2, 0, 1))[None]


def load_guides(path: str, shape: tuple[int, ...], normalize: str = "auto") -> torch.Tensor:
    """The guide images (N, *shape) of --init-image: an image file or folder (mapped to [-1, 1]), or a .npy/.npz
    array in the model's data range (uint8 arrays scaled as for training, `normalize`)."""
    if os.path.isfile(path) and path.lower().endswith(IMAGE_EXTENSIONS):
        x = _read_image(path, shape[0] if len(shape) == 3 else 3)
    else:
        try:
            x = load_dataset(path, normalize=normalize, labels=False).x.float()
        except (FileNotFoundError, ValueError, TypeError) as e:
            raise type(e)(f"--init-image: {e}") from None
    if tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"--init-image {path!r}: expected images of shape {tuple(shape)} (the model's), "
                         f"found {tuple(x.shape[1:])}")
    return x


def sample_img2img(source, init_image: str, strength: float, n: int | None, out: str, sampler: str | None,
                   steps: int | None, options: dict, guidance, seed: int, device: str, raw: bool,
                   autoencoder: str | None) -> int:
    """SDEdit of the --init-image guides (cycled to --n, default one output per guide) with a scoresde run to
    `out` (.npy: the outputs; .png: the guides above their edits). Returns the number of outputs."""
    dev = resolve_device(device)
    model, sde, _, meta = source.open(dev, ema=not raw, autoencoder=autoencoder)
    cfg = meta["config"]
    ae = getattr(model, "autoencoder", None)                   # a latent model: guides are pixels, edited as latents
    shape = tuple(model.data_shape) if ae is None else (
        ae.image_channels, *(d * ae.downsample for d in model.data_shape[1:]))
    guides = load_guides(init_image, shape, cfg["data"].get("normalize", "auto"))
    n = n or len(guides)
    guides = guides[torch.arange(n) % len(guides)]
    sampler = sampler or cfg["sample"]["sampler"]
    try:
        check_sampler_options(sampler, options)
    except TypeError as e:
        raise ValueError(f"--set: {e}") from None
    steps = steps or max(1, round(strength * cfg["sample"]["steps"]))    # plain sampling's step size
    score, guided = guidance.score(model, meta, n)
    g = torch.Generator(dev).manual_seed(seed)
    with thread_policy(model.data_shape, dev, cfg.get("threads", 0)):
        x = sdedit(sde, score(n), guides.to(dev), strength, sampler=sampler, steps=steps, generator=g,
                   autoencoder=ae, progress=True, **options).cpu()
    if out.lower().endswith(".npy"):
        save_samples(x, out)
    else:
        save_samples(torch.cat([guides, x]), out, f"SDEdit{guided}, strength {strength:g}, {sampler}, "
                     f"{steps} steps: guides (top), edits", nrow=n)
    return n
