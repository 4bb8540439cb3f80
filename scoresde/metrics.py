"""Sample-quality metrics: FID, KID, improved precision/recall, Inception Score, class accuracy.

The public namespace `scoresde.metrics` (the modules live in `scoresde.evaluation.metrics`).
Feature networks by name ("inception": the FID Inception-v3 from a local weights file; "digits": the
shipped 8x8 digits classifier) or any callable features(x) -> (B, F); reference statistics as `.npz`
with `mu` and `sigma` (pytorch-fid / EDM format). See `evaluate` for the one-call entry point and
`run_metrics` for the metric of a training run.
"""
from .evaluation.metrics import *  # noqa: F401,F403
from .evaluation.metrics import __all__  # noqa: F401
