"""Analytic test problems: Gaussian and Gaussian-mixture data with exact perturbed scores,
densities and probability-flow maps under VP, sub-VP and VE (see `scoresde.sde.analytic`)."""
from scoresde.sde.analytic import Gaussian, GaussianMixture, four_mode_mixture, mode_stats  # noqa: F401  (re-exported)
