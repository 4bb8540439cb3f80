"""Write peers.npz: torch-fidelity's Inception features and pytorch-fid's Fréchet distances, for tests/evaluation/test_metrics.py.

Needs the peers installed without their dependencies (torchvision does not import beside our torch):
    .venv/bin/pip install --no-deps torch-fidelity==0.4.0 pytorch-fid==0.3.0
    .venv/bin/python tests/data/metrics/make_fixtures.py

- inception_*: FeatureExtractorInceptionV3 (torch-fidelity) with `random_inception_state_dict(0)` on
  uint8 images drawn from seeds 1 (3 x 3 x 40 x 28, upsampled) and 2 (1 x 3 x 310 x 300, downsampled):
  its "2048" features and "logits_unbiased";
- fd_<case>_*: calculate_frechet_distance (pytorch-fid) on mu/sigma of a full-rank case, a rank-deficient
  one (N < F, sqrtm still finite) and an exactly singular one where sqrtm is not finite and pytorch-fid
  falls back to adding eps = 1e-6 to the diagonals.
"""
from __future__ import annotations

import os
import sys
import tempfile
import warnings

import numpy as np
import scipy
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))            # tests/, for peers.py
from peers import pytorch_fid_frechet_distance, torch_fidelity_inception_class  # noqa: E402

from scoresde.evaluation.metrics.inception import random_inception_state_dict  # noqa: E402


def inception_inputs():
    a = torch.randint(0, 256, (3, 3, 40, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    b = torch.randint(0, 256, (1, 3, 310, 300), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    return a, b


def frechet_cases() -> dict[str, tuple]:
    rng = np.random.default_rng(0)
    stats = lambda f: (f.mean(0), np.cov(f, rowvar=False))  # noqa: E731
    cases = {"full": (*stats(rng.standard_normal((60, 16))), *stats(1.3 * rng.standard_normal((80, 16)) + 0.2)),
             "lowrank": (*stats(rng.standard_normal((12, 32))), *stats(rng.standard_normal((15, 32)) - 0.1))}
    from scipy import linalg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while True:                                     # integer features whose covariance product has no sqrtm
            a, b = rng.integers(-1, 2, (3, 5)).astype(float), rng.integers(-1, 2, (2, 5)).astype(float)
            s = (*stats(a), *stats(b))
            if not np.isfinite(linalg.sqrtm(s[1] @ s[3])).all():
                cases["singular"] = s
                break
    return cases


def main():
    TF = torch_fidelity_inception_class()
    fd = pytorch_fid_frechet_distance()
    if TF is None or fd is None:
        raise SystemExit("install torch-fidelity and pytorch-fid with --no-deps first (see the docstring)")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "random.pth")
        torch.save(random_inception_state_dict(0), path)
        net = TF("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=path)
        for name, x in zip("ab", inception_inputs()):
            with torch.no_grad():
                f, z = net(x)
            out[f"inception_{name}_2048"], out[f"inception_{name}_logits"] = f.numpy(), z.numpy()
    for name, (m1, s1, m2, s2) in frechet_cases().items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = fd(m1, s1, m2, s2)
        out.update({f"fd_{name}_mu1": m1, f"fd_{name}_sigma1": s1, f"fd_{name}_mu2": m2, f"fd_{name}_sigma2": s2,
                    f"fd_{name}_value": np.float64(value)})
        print(f"pytorch-fid {name}: {value!r}")
    from importlib.metadata import version
    out["versions"] = np.array(f"torch-fidelity {version('torch-fidelity')}, pytorch-fid {version('pytorch-fid')}, "
                               f"torch {torch.__version__}, scipy {scipy.__version__}, numpy {np.__version__}")
    np.savez_compressed(os.path.join(HERE, "peers.npz"), **out)
    print("wrote", os.path.join(HERE, "peers.npz"), str(out["versions"]))


if __name__ == "__main__":
    main()
