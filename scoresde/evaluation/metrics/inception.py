"""The FID Inception-v3 network: TensorFlow's 2015-12-05 Inception graph, as FID, KID and IS use it.

Szegedy et al. (2016), "Rethinking the Inception Architecture", arXiv:1512.00567; the feature network
of FID (Heusel et al. 2017, arXiv:1706.08500) and IS (Salimans et al. 2016, arXiv:1606.03498). The
weights are the TF graph's, ported to PyTorch as `pt_inception-2015-12-05-6726825d.pth` (the file
that pytorch-fid and torch-fidelity load; clean-fid and EDM run the same graph). Nothing is
downloaded: `load_inception(path)` reads a file the user names.

The graph differs from torchvision's Inception-v3 in ways that change the features, and this module
follows the graph as torch-fidelity's `FeatureExtractorInceptionV3` does (its features are tested
equal to ours under random weights):
- images (B, 3, H, W) with values 0..255 are resized to 299 x 299 with TF 1.x bilinear resizing
  (source pixel = destination pixel x in/out, no half-pixel offset), then mapped to [-1, 1] by
  (x - 128) / 128;
- batch norms use eps = 1e-3; the average pools inside blocks exclude padding from the mean;
- the last block (Mixed_7c) pools its side branch with a max pool, not an average pool;
- 2048 pool3 features (the FID / KID / precision-recall features) and 1008 logits, pool3 @ W
  without the bias (the Inception Score's logits, the original code's `softmax/logits/MatMul`).
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["InceptionV3", "load_inception", "random_inception_state_dict", "tf1_resize_bilinear",
           "INCEPTION_WEIGHTS_ENV", "INCEPTION_WEIGHTS_HELP"]

INCEPTION_WEIGHTS_ENV = "SCORESDE_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                         "pt_inception-2015-12-05-6726825d.pth")
INCEPTION_WEIGHTS_HELP = (f"download pt_inception-2015-12-05-6726825d.pth (the FID Inception-v3 weights of "
                          f"pytorch-fid and torch-fidelity, 95 MB) from {INCEPTION_WEIGHTS_URL} and pass its path "
                          f"with --inception-weights PATH or ${INCEPTION_WEIGHTS_ENV}")


def tf1_resize_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) to (B, C, size, size) as TF 1.x `resize_bilinear(align_corners=False)`."""
    def grid(n_in: int):
        # source coordinate s = d * n_in / n_out (TF 1.x: no half-pixel centres), in float32 as TF computes it
        s = torch.arange(size, dtype=torch.float32, device=x.device) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = s.long()
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo, hi, (s - lo.float()).to(x.dtype)

    ylo, yhi, dy = grid(x.shape[-2])
    xlo, xhi, dx = grid(x.shape[-1])
    left, right = x[..., xlo], x[..., xhi]
    rows = left + (right - left) * dx                                  # interpolate along width
    top, bottom = rows[..., ylo, :], rows[..., yhi, :]
    return top + (bottom - top) * dy[:, None]                          # then along height


class _Conv(nn.Sequential):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU; keys `conv.*`, `bn.*` as in the weights file."""

    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3)
        self.relu = nn.ReLU()


def _avg3(x):       # TF's 3x3 average pool, stride 1, "SAME": padded zeros are not counted
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):            # Mixed_5b/5c/5d: 35 x 35
    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _Conv(c_in, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = _Conv(c_in, 48, 1), _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(c_in, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(c_in, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg3(x))], 1)


class _BlockB(nn.Module):            # Mixed_6a: 35 -> 17
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = _Conv(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(c_in, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class _BlockC(nn.Module):            # Mixed_6b..6e: 17 x 17, factorised 7x7
    def __init__(self, c_in: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = _Conv(c_in, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = _Conv(c_in, c7, 1), _Conv(c7, c7, **row), \
            _Conv(c7, 192, **col)
        self.branch7x7dbl_1 = _Conv(c_in, c7, 1)
        self.branch7x7dbl_2, self.branch7x7dbl_3 = _Conv(c7, c7, **col), _Conv(c7, c7, **row)
        self.branch7x7dbl_4, self.branch7x7dbl_5 = _Conv(c7, c7, **col), _Conv(c7, 192, **row)
        self.branch_pool = _Conv(c_in, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = x
        for i in range(1, 6):
            d7 = getattr(self, f"branch7x7dbl_{i}")(d7)
        return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(_avg3(x))], 1)


class _BlockD(nn.Module):            # Mixed_7a: 17 -> 8
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _Conv(c_in, 192, 1), _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(c_in, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):            # Mixed_7b (average pool) and Mixed_7c (max pool, as in the TF graph)
    def __init__(self, c_in: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _Conv(c_in, 320, 1)
        self.branch3x3_1 = _Conv(c_in, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = _Conv(384, 384, (1, 3), padding=(0, 1)), \
            _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(c_in, 448, 1), _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a, self.branch3x3dbl_3b = _Conv(384, 384, (1, 3), padding=(0, 1)), \
            _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(c_in, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3), self.branch_pool(pool)], 1)


class InceptionV3(nn.Module):
    """The FID Inception-v3; `forward(x)` on images (B, 3, H, W) in 0..255 -> (pool3 (B, 2048), logits (B, 1008))."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _BlockA(192, 32), _BlockA(256, 64), _BlockA(288, 64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b, self.Mixed_6c = _BlockC(768, 128), _BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = _BlockC(768, 160), _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b, self.Mixed_7c = _BlockE(1280, max_pool=False), _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        self.dims = 2048

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = tf1_resize_bilinear(x.to(self.fc.weight.dtype), 299)      # (B, 3, 299, 299)
        x = (x - 128) / 128                                           # 0..255 -> [-1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)                              # (B, 64, 73, 73)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)   # (B, 192, 35, 35)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)                     # ... (B, 2048, 8, 8)
        pool3 = x.mean((2, 3))                                        # (B, 2048)
        return pool3, pool3 @ self.fc.weight.T                        # logits without the bias, (B, 1008)


def _read_state_dict(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:                                   # pickle errors of many kinds: one clear line
        raise ValueError(f"inception weights {path!r}: not a readable PyTorch state dict "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"inception weights {path!r}: expected a state dict, found {type(obj).__name__}")
    return obj


def load_inception(path: str | None = None, device=None) -> InceptionV3:
    """The FID Inception-v3 from a local weights file (`path`, else $SCORESDE_INCEPTION_WEIGHTS), in eval mode."""
    path = path or os.environ.get(INCEPTION_WEIGHTS_ENV)
    if not path:
        raise FileNotFoundError(f"inception weights: no file named; {INCEPTION_WEIGHTS_HELP}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"inception weights {path!r}: no such file; {INCEPTION_WEIGHTS_HELP}")
    state = {k: v for k, v in _read_state_dict(path).items()
             if not k.startswith("AuxLogits.") and not k.endswith("num_batches_tracked")}
    net = InceptionV3()
    expected = {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"inception weights {path!r}: not the FID Inception-v3 state dict ({len(missing)} keys "
                         f"missing, e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    wrong = [k for k, v in net.state_dict().items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise ValueError(f"inception weights {path!r}: {len(wrong)} tensors have the wrong shape, e.g. {wrong[0]} "
                         f"{tuple(state[wrong[0]].shape)} (expected {tuple(net.state_dict()[wrong[0]].shape)})")
    net.load_state_dict(state, strict=False)
    return net.requires_grad_(False).eval().to(device or "cpu")


def random_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the weights file's keys and shapes, drawn from `seed` (for tests: He-scaled
    convolutions and near-identity batch norms keep activations of order one through the whole net)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, v in InceptionV3().state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.endswith("conv.weight") or key == "fc.weight":
            fan_in = math.prod(v.shape[1:])
            out[key] = torch.randn(v.shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(v.shape, generator=g)
        elif key.endswith("bn.weight"):
            out[key] = 1 + 0.1 * torch.randn(v.shape, generator=g)
        else:                                                 # bn.bias, running_mean, fc.bias
            out[key] = 0.1 * torch.randn(v.shape, generator=g)
    return out
