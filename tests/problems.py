"""Analytic test problems: Gaussian and Gaussian-mixture data with exact perturbed scores,
densities and probability-flow maps under VP, sub-VP and VE (see `scoresde.sde.analytic`)."""
import math
from pathlib import Path

import torch

from scoresde._common.tensors import as_time
from scoresde.sde.analytic import Gaussian, GaussianMixture, four_mode_mixture, mode_stats  # noqa: F401  (re-exported)

TESTS = Path(__file__).resolve().parent      # tests/ (fixtures in tests/fixtures)


def counting(fn):
    """`fn` wrapped to count its calls in `.calls` (score evaluations, NFE)."""
    def score(x, t):
        score.calls += 1
        return fn(x, t)
    score.calls = 0
    return score


# --- exact class-conditional scores of a labelled mixture (guidance tests) ------------------------------
K = 4


class ExactConditional:
    """Exact class-conditional score of the labelled mixture: label k -> component k's perturbed
    score, the null label K -> the mixture's score. Called as score_model(x, t, y=labels)."""
    num_classes = K

    def __init__(self, mix, sde):
        self.mix, self.sde, self.calls, self.batches = mix, sde, 0, []

    def component_scores(self, x, t):                        # (B, K, *D)
        mean, var = self.mix._perturbed(self.sde, as_time(t, x.double()), x.ndim)
        return (-(x.double()[:, None] - mean) / var).to(x.dtype)

    def __call__(self, x, t, y=None):
        self.calls += 1
        self.batches.append(x.shape[0])
        y = torch.full((x.shape[0],), K) if y is None else y
        comp = self.component_scores(x, t)
        cond = comp[torch.arange(x.shape[0]), y.clamp(max=K - 1)]
        return torch.where((y == K)[:, None], self.mix.score(x, t, self.sde), cond)


def exact_classifier(mix, sde):
    """logits of p(y | x_t) = responsibilities of the perturbed mixture components."""
    def clf(x, t):
        mean, var = mix._perturbed(sde, as_time(t, x), x.ndim)
        comp = -0.5 * ((x.double()[:, None] - mean).square() / var + torch.log(2 * math.pi * var))
        return (comp.flatten(2).sum(-1) + mix.weights.log()).to(x.dtype)
    clf.num_classes = K
    return clf


def class_rate(mix, x, y):
    return (mix.assign(x) == y).double().mean().item()
