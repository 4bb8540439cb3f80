"""Analytic test problems: Gaussian and Gaussian-mixture data with exact perturbed scores,
densities and probability-flow maps under VP, sub-VP and VE (see `scoresde.sde.analytic`)."""
from pathlib import Path

from scoresde.sde.analytic import Gaussian, GaussianMixture, four_mode_mixture, mode_stats  # noqa: F401  (re-exported)

TESTS = Path(__file__).resolve().parent      # tests/ (fixtures in tests/fixtures)


def counting(fn):
    """`fn` wrapped to count its calls in `.calls` (score evaluations, NFE)."""
    def score(x, t):
        score.calls += 1
        return fn(x, t)
    score.calls = 0
    return score
