"""Training data: built-in 2-D datasets, scikit-learn's digits (8x8, and 32x32 upsampled), `.npy`/`.npz`
arrays, image folders, captioned data (`captions.py`: metadata files, `.npz` text arrays; `digitpairs.py`).

Every loader returns a `Dataset`: a float32 tensor `x` of shape (N, *D) (any rank), optional integer
labels, optional captions `texts` (one string per example), and, for the four-mode mixture, the exact
`GaussianMixture` it was drawn from (so sample quality can be scored by mode weights). Images are scaled to [-1, 1], the centred data of
Song et al. (2021, arXiv:2011.13456). Data are checked once here: a missing path, an unreadable
file, a wrong rank or NaN/inf values raise one clear error naming the source.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from scoresde.sde.analytic import GaussianMixture, four_mode_mixture
from scoresde.data.captions import (TEXT_KEY, captioned_images, check_text_header, check_texts, find_metadata,
                                    load_texts, read_metadata)
from scoresde._common.headers import array_headers, check_header, load_checked
from scoresde._common.limits import MAX_CLASSES, PIXEL_BUDGET, check_memory
from scoresde._common.registry import Registry


__all__ = ["Dataset", "DATASETS", "list_datasets", "load_dataset", "check_data_source", "from_array", "load_array",
           "load_image_folder", "example_shape"]

DATASETS = Registry("dataset")
_SHAPES: dict[str, tuple[int, ...]] = {}     # the example shape of built-ins that declare it (no draw needed)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_FLOAT32_COPY = 8      # bytes per value a loaded array costs beyond its own: the float32 copy and one temporary


@dataclass
class Dataset:
    """Training data `x` (N, *D) float32, optional `labels` (N,) int64, optional captions `texts` (N strings,
    aligned with x), and provenance."""

    x: torch.Tensor
    name: str
    labels: torch.Tensor | None = None
    kind: str = "array"                       # "points" | "images" | "array"
    mixture: GaussianMixture | None = None    # the exact law of the data, when known
    classes: list[str] = field(default_factory=list)
    levels: int | None = None                 # quantisation levels of the raw data (256: 8-bit), if any
    texts: list[str] | None = None            # captions aligned with x (text-to-image), if any

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape D of one example."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return self.x.shape[0]


def list_datasets() -> list[str]:
    """Names of the built-in datasets."""
    return list(DATASETS)


# --- built-in 2-D datasets (drawn from a torch.Generator, so a seed fixes them) ----------------
def _points(name: str, n: int, g: torch.Generator, fn: Callable) -> Dataset:
    out = fn(n, g)                                   # x, or (x, labels) for sets made of parts
    x, y = out if isinstance(out, tuple) else (out, None)
    classes = [str(i) for i in range(int(y.max()) + 1)] if y is not None else []
    return Dataset(x.float(), name, labels=y, kind="points", classes=classes)


@DATASETS.register("mixture")
def mixture(n: int = 50000, generator: torch.Generator | None = None) -> Dataset:
    """The four-mode Gaussian mixture of `analytic.four_mode_mixture` (weights 0.1 ... 0.4); label = component."""
    mix = four_mode_mixture()
    # the draws of GaussianMixture.sample (component k, then z), keeping k as the class label
    k = torch.multinomial(mix.weights, n, replacement=True, generator=generator)
    z = torch.randn((n, *mix.shape), generator=generator, dtype=torch.float64)
    x = (mix.means[k] + mix.stds[k] * z).to(torch.float32)
    return Dataset(x, "mixture", labels=k, kind="points", mixture=mix,
                   classes=[str(i) for i in range(len(mix.weights))])


@DATASETS.register("moons")
def moons(n: int = 50000, generator: torch.Generator | None = None) -> Dataset:
    """Two interleaved half circles, centred, noise std 0.05; label 0 = upper, 1 = lower."""
    def fn(n, g):
        theta = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
        upper = torch.rand(n, generator=g) < 0.5
        x = torch.stack([torch.cos(theta), torch.sin(theta)], 1)
        lower = torch.stack([1 - torch.cos(theta), 0.5 - torch.sin(theta)], 1)
        x = torch.where(upper[:, None], x, lower) - torch.tensor([0.5, 0.25], dtype=torch.float64)
        return x + 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64), (~upper).long()
    return _points("moons", n, generator, fn)


@DATASETS.register("swissroll")
def swissroll(n: int = 50000, generator: torch.Generator | None = None) -> Dataset:
    """A 2-D Swiss roll: t (cos t, sin t), t in [1.5 pi, 4.5 pi], scaled to about [-1, 1]."""
    def fn(n, g):
        t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
        x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 10.0
        return x + 0.02 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return _points("swissroll", n, generator, fn)


@DATASETS.register("checkerboard")
def checkerboard(n: int = 50000, generator: torch.Generator | None = None) -> Dataset:
    """Uniform on the dark squares of a 4x4 checkerboard on [-2, 2]^2, scaled to [-1, 1]."""
    def fn(n, g):
        x1 = 4 * torch.rand(n, generator=g, dtype=torch.float64) - 2
        x2 = torch.rand(n, generator=g, dtype=torch.float64) - 2 * torch.randint(0, 2, (n,), generator=g)
        x2 = x2 + torch.floor(x1) % 2
        return torch.stack([x1, x2], 1) / 2.0
    return _points("checkerboard", n, generator, fn)


@DATASETS.register("rings")
def rings(n: int = 50000, generator: torch.Generator | None = None) -> Dataset:
    """Three concentric rings, radii 1/3, 2/3 and 1 (mass proportional to radius), noise 0.02; label = ring."""
    def fn(n, g):
        r = torch.tensor([1 / 3, 2 / 3, 1.0], dtype=torch.float64)
        k = torch.multinomial(r / r.sum(), n, replacement=True, generator=g)
        theta = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
        x = r[k, None] * torch.stack([torch.cos(theta), torch.sin(theta)], 1)
        return x + 0.02 * torch.randn(n, 2, generator=g, dtype=torch.float64), k
    return _points("rings", n, generator, fn)


@DATASETS.register("digits")
def digits(n: int | None = None, generator: torch.Generator | None = None) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, no download), (N, 1, 8, 8) in [-1, 1]."""
    from sklearn.datasets import load_digits
    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32)).unsqueeze(1) / 8.0 - 1.0   # 0..16 -> [-1, 1]
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return Dataset(x, "digits", labels=y, kind="images", classes=[str(i) for i in range(10)], levels=17)


@DATASETS.register("digits32")
def digits32(n: int | None = None, generator: torch.Generator | None = None) -> Dataset:
    """The 8x8 digits upsampled bilinearly to 32x32, (1797, 1, 32, 32) in [-1, 1]: smooth images with much
    pixel redundancy, where an autoencoder's latents pay off (as for photographs); labels = the digit."""
    small = digits()
    x = torch.nn.functional.interpolate(small.x, size=(32, 32), mode="bilinear", align_corners=False)
    return Dataset(x.clamp(-1.0, 1.0).contiguous(), "digits32", labels=small.labels, kind="images",
                   classes=small.classes)


# --- files ------------------------------------------------------------------------------------
def _check_finite(x: torch.Tensor, source: str) -> None:
    bad = (~torch.isfinite(x)).sum().item()
    if bad:
        raise ValueError(f"data {source}: {bad} of {x.numel()} values are NaN or infinite")


def _check_array_header(name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Rank >= 2, at least one example, real numbers: what the shape and dtype alone can tell."""
    if len(shape) < 2:
        raise ValueError(f"data {name}: expected an array of shape (N, *D) with at least 2 dims, found shape "
                         f"{shape}" + ("; reshape 1-D data to (N, 1)" if len(shape) == 1 else ""))
    if shape[0] == 0 or math.prod(shape) == 0:
        raise ValueError(f"data {name}: expected at least one example, found shape {shape}")
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_) or np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"data {name}: expected real numbers, found dtype {dtype}")


def from_array(array, name: str = "array", labels=None, normalize: str = "auto", texts=None) -> Dataset:
    """A dataset from an array or tensor of shape (N, *D); uint8 data become [-1, 1] under "auto"; `texts`:
    one caption (str) per example, or None."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    _check_array_header(name, array.shape, array.dtype)
    is_uint8 = array.dtype == np.uint8
    x = torch.from_numpy(np.ascontiguousarray(array).astype(np.float32))
    if normalize not in ("auto", "none", "standardize"):
        raise ValueError(f"normalize: expected auto, none or standardize, found {normalize!r}")
    _check_finite(x, name)
    if normalize == "auto" and is_uint8:
        x = x / 127.5 - 1.0                                          # 0..255 -> [-1, 1]
    elif normalize == "standardize":
        x = (x - x.mean(0)) / x.std(0).clamp_min(1e-8)
    y = None if labels is None else _check_labels(labels, len(x), name)
    return Dataset(x, name, labels=y, kind="array", levels=256 if is_uint8 and normalize == "auto" else None,
                   texts=None if texts is None else check_texts(texts, len(x), name))


def _check_labels(labels, n: int, name: str) -> torch.Tensor:
    """Labels as (N,) int64: integers (or integral floats) >= 0, one per example; NaN / inf, fractions and
    negative values are refused naming the data (a NaN cast to int64 would be -2^63)."""
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    y = y.reshape(-1)
    if len(y) != n:
        raise ValueError(f"data {name}: {len(y)} labels for {n} examples")
    if y.dtype == np.bool_ or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"data {name}: labels must be integer class indices, found dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        bad = int((~np.isfinite(y)).sum())
        if bad:
            raise ValueError(f"data {name}: {bad} of {len(y)} labels are NaN or infinite; labels must be integer "
                             "class indices")
        if (y != np.floor(y)).any():
            raise ValueError(f"data {name}: labels must be integer class indices, found {y[y != np.floor(y)][0]!r}")
        if (np.abs(y) > 2.0 ** 62).any():
            raise ValueError(f"data {name}: labels must be class indices below {MAX_CLASSES}, found "
                             f"{float(y[np.abs(y) > 2.0 ** 62][0])!r}")
    if len(y) and y.min() < 0:
        raise ValueError(f"data {name}: labels must be class indices >= 0, found {y.min()!r}")
    return torch.from_numpy(y.astype(np.int64))


def load_array(path: str, normalize: str = "auto", labels: bool = True) -> Dataset:
    """Load `.npy` (the array) or `.npz` (key x, data, or the only array; labels from y or labels; captions
    from `text`, a string array of one caption per example: `np.savez(p, x=x, text=np.array(captions))`).

    The headers are read first: an array of objects, a header claiming more than the file holds, or an
    array that would not fit the memory budget (`scoresde._common.limits.memory_budget`: its bytes and
    a float32 copy) is refused naming the file, its size and the budget, before anything is read."""
    headers = array_headers(path)
    key, lab = _array_keys(path, headers)
    array = load_checked(path, key, extra_per_value=_FLOAT32_COPY, headers=headers)
    y = load_checked(path, lab, extra_per_value=8, headers=headers) if (labels and lab) else None
    texts = load_texts(path, headers, len(array)) if TEXT_KEY in headers and key != "" else None
    return from_array(array, name=path, labels=y, normalize=normalize, texts=texts)


def _array_keys(path: str, headers: dict) -> tuple[str, str | None]:
    """(the data array's key, the labels' key or None) of an .npy ("") or .npz file's headers."""
    if "" in headers:
        return "", None
    keys = list(headers)
    key = next((k for k in ("x", "data", "images") if k in keys), None)
    if key is None:
        data_keys = [k for k in keys if k not in ("y", "labels", TEXT_KEY)]
        if len(data_keys) != 1:
            raise ValueError(f"data {path!r}: expected an array named x or data (or a single array), found keys {keys}")
        key = data_keys[0]
    return key, next((k for k in ("y", "labels") if k in keys), None)


def load_image_folder(path: str, image_size: int = 0, labels: bool = True, text_column: str = TEXT_KEY) -> Dataset:
    """Every image under `path` (recursively) as (N, C, H, W) in [-1, 1]; C = 1 if all are grey, else 3.

    With a `metadata.jsonl` / `metadata.csv` (Hugging Face imagefolder: columns `file_name`, `text`;
    `captions.py`) every image gets its caption in `texts`, and sub-folders give labels only when every
    image lies in one and there are two or more; without one, images in sub-folders get the sub-folder (class) index as label. Sizes must agree unless
    `image_size` resizes all to image_size x image_size. The headers are read first: an image over the
    pixel budget (`PIXEL_BUDGET`, 8192^2) or a folder that would not fit the memory budget is refused,
    naming the file, before anything is decoded; images are then decoded one at a time.
    """
    from PIL import Image
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"data {path!r}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    texts = captioned_images(path, files, text_column, IMAGE_EXTENSIONS)      # None: no metadata file
    heads = [_image_header(f) for f in files]                          # (mode, (W, H)), nothing decoded
    mode = "L" if all(m in ("L", "1", "I;16", "I") for m, _ in heads) else "RGB"
    C, largest = (1 if mode == "L" else 3), max(w * h for _, (w, h) in heads)
    out_pixels = len(files) * image_size ** 2 if image_size else sum(w * h for _, (w, h) in heads)
    # one decoded image and its converted copy (<= 8 bytes/pixel), then per output value: uint8 + float32 x 2
    check_memory(8 * largest + 9 * C * out_pixels,
                 f"data {path!r}: decoding its {len(files)} images ({out_pixels} pixels in all)")
    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
        except (OSError, ValueError) as e:
            raise ValueError(f"data {f!r}: not a readable image ({str(e).splitlines()[0]})") from None
        if image_size:
            im = im.resize((image_size, image_size), Image.BICUBIC)
        arrays.append(np.asarray(im, dtype=np.uint8))
    sizes = sorted({a.shape[:2] for a in arrays})
    if len(sizes) > 1:
        raise ValueError(f"data {path!r}: images have different sizes {sizes[:4]}; set data.image_size to resize")
    x = torch.from_numpy(np.stack(arrays)).float() / 127.5 - 1.0       # 0..255 -> [-1, 1]
    x = x.unsqueeze(1) if mode == "L" else x.permute(0, 3, 1, 2)       # (N, C, H, W)
    rel = [os.path.relpath(os.path.dirname(f), path) for f in files]
    classes = sorted(set(rel))
    y = None
    if labels and classes != ["."] and (texts is None or (len(classes) > 1 and "." not in classes)):
        y = torch.tensor([classes.index(r) for r in rel])
    return Dataset(x.contiguous(), path, labels=y, kind="images", classes=classes if y is not None else [],
                   levels=256, texts=texts)


def _image_header(f: str) -> tuple[str, tuple[int, int]]:
    """(mode, (W, H)) from an image file's header, refusing one over the pixel budget or PIL's bomb limit
    (ValueError naming the file) before it is decoded."""
    import warnings
    from PIL import Image, UnidentifiedImageError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)      # refused below, in one line
            with Image.open(f) as im:
                mode, (w, h) = im.mode, im.size
    except Image.DecompressionBombError as e:
        raise ValueError(f"data {f!r}: refused as a decompression bomb ({str(e).splitlines()[0]})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"data {f!r}: not a readable image ({str(e).splitlines()[0]})") from None
    if w * h > PIXEL_BUDGET:
        raise ValueError(f"data {f!r}: a {w}x{h} image ({w * h} pixels) is over the pixel budget of {PIXEL_BUDGET} "
                         f"pixels ({math.isqrt(PIXEL_BUDGET)}^2); resize it before loading")
    return mode, (w, h)


def _first_image(path: str) -> str | None:
    for root, _, names in os.walk(path):
        for f in sorted(names):
            if f.lower().endswith(IMAGE_EXTENSIONS):
                return os.path.join(root, f)
    return None


def check_data_source(name: str) -> str:
    """Check that `name` is a built-in dataset or a readable data path, without loading it all.

    Returns the kind ("builtin", "images" or "array"). Raises what `load_dataset` would for a
    missing path (FileNotFoundError), an unreadable or unsupported file, an image folder without
    images, or an array whose header is not of rank >= 2, holds objects or would not fit the memory
    budget (ValueError). `scoresde train --dry-run` calls it so that a bad --data fails before any work.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"data: expected a dataset name or a path, found {name!r}")
    if name in DATASETS:
        return "builtin"
    if not os.path.exists(name):
        raise FileNotFoundError(f"data {name!r}: no such file or directory, and not a built-in dataset "
                                f"({', '.join(DATASETS)})")
    if os.path.isdir(name):
        if _first_image(name) is None:
            raise ValueError(f"data {name!r}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
        for meta in find_metadata(name):                            # captions: rows, columns and files checked
            read_metadata(meta, extensions=IMAGE_EXTENSIONS)
        return "images"
    if not os.access(name, os.R_OK):
        raise ValueError(f"data {name!r}: the file is not readable (permission denied)")
    if not name.lower().endswith((".npy", ".npz")):
        raise ValueError(f"data {name!r}: expected a .npy/.npz file or an image folder")
    headers = array_headers(name)                                   # the headers only, nothing read
    key, _ = _array_keys(name, headers)
    h = headers[key]
    _check_array_header(name, h.shape, h.dtype)
    check_header(h, extra_per_value=_FLOAT32_COPY)                  # objects, forged sizes, the memory budget
    if TEXT_KEY in headers and key != TEXT_KEY:
        check_text_header(headers[TEXT_KEY], h.shape[0])            # captions: strings, one per example
    return "array"


def load_dataset(name: str, *, size: int = 50000, seed: int = 0, normalize: str = "auto",
                 image_size: int = 0, labels: bool = True) -> Dataset:
    """A built-in dataset by name, or a `.npy`/`.npz` file or an image folder by path."""
    kind = check_data_source(name)
    if kind == "builtin":
        g = torch.Generator().manual_seed(seed)
        ds = DATASETS[name](size, generator=g) if name not in ("digits", "digits32") else DATASETS[name]()
        if not labels:
            ds.labels = None
        if normalize == "standardize":
            ds.x = (ds.x - ds.x.mean(0)) / ds.x.std(0).clamp_min(1e-8)
            ds.mixture = None
        return ds
    if kind == "images":
        return load_image_folder(name, image_size=image_size, labels=labels)
    return load_array(name, normalize=normalize, labels=labels)


def example_shape(name: str, image_size: int = 0) -> tuple[int, ...] | None:
    """The shape D of one example of the data source `name`, read cheaply (a few built-in draws, an array's
    header, the first image of a folder), or None when it cannot be told (a missing or unreadable source:
    `check_data_source` / `load_dataset` report why). Config defaults that depend on the data use it."""
    try:
        kind = check_data_source(name)
        if kind == "builtin":
            if name in ("digits", "digits32"):
                return tuple(DATASETS[name]().x.shape[1:])
            if name in _SHAPES:
                return _SHAPES[name]
            return tuple(DATASETS[name](8, generator=torch.Generator().manual_seed(0)).x.shape[1:])
        if kind == "images":
            from PIL import Image
            with Image.open(_first_image(name)) as im:
                channels = 1 if im.mode in ("L", "1", "I;16", "I") else 3
                w, h = (image_size, image_size) if image_size else im.size
            return (channels, h, w)
        if name.lower().endswith(".npy"):
            return tuple(np.load(name, mmap_mode="r", allow_pickle=False).shape[1:])
        import zipfile
        with zipfile.ZipFile(name) as z:
            keys = [k[:-4] for k in z.namelist() if k.endswith(".npy")]
            key = next((k for k in ("x", "data", "images") if k in keys), None)
            key = key or next(iter([k for k in keys if k not in ("y", "labels", TEXT_KEY)]), None)
            with z.open(f"{key}.npy") as f:
                major, _ = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                return tuple(read(f)[0][1:])
    except Exception:                       # noqa: BLE001  (None: the loaders give the real error later)
        return None
