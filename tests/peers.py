"""Peer libraries' reference code, reached without torchvision (which does not import beside our torch).

- torch-fidelity's `FeatureExtractorInceptionV3` is plain torch, but `import torch_fidelity` runs its
  package `__init__`, which imports the CLIP/DINOv2 extractors and with them torchvision: the module
  file is loaded under a bare package object instead.
- pytorch-fid's `calculate_frechet_distance` lives in `fid_score.py`, which imports torchvision at the
  top: the function's own source is compiled from that file, with numpy and scipy.linalg as its globals.

Install them without their dependencies to run the live comparisons (the tests skip otherwise):
    .venv/bin/pip install --no-deps torch-fidelity==0.4.0 pytorch-fid==0.3.0
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
import types


def torch_fidelity_inception_class():
    """torch_fidelity.feature_extractor_inceptionv3.FeatureExtractorInceptionV3, or None if not installed."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
        return None
    saved = {k: v for k, v in sys.modules.items() if k == "torch_fidelity" or k.startswith("torch_fidelity.")}
    pkg = types.ModuleType("torch_fidelity")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = pkg
    try:
        return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3").FeatureExtractorInceptionV3
    finally:
        for k in [k for k in sys.modules if k == "torch_fidelity" or k.startswith("torch_fidelity.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def pytorch_fid_frechet_distance():
    """pytorch_fid.fid_score.calculate_frechet_distance, or None if pytorch-fid is not installed."""
    spec = importlib.util.find_spec("pytorch_fid")
    if spec is None:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "fid_score.py")
    source = open(path).read()
    node = next(n for n in ast.parse(source).body
                if isinstance(n, ast.FunctionDef) and n.name == "calculate_frechet_distance")
    import numpy as np
    from scipy import linalg
    namespace = {"np": np, "linalg": linalg}
    exec(compile(ast.Module(body=[node], type_ignores=[]), path, "exec"), namespace)
    return namespace["calculate_frechet_distance"]
