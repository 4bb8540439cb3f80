"""Analytic test problems: Gaussian and Gaussian-mixture data with exact perturbed scores,
densities and probability-flow maps under VP, sub-VP and VE (see `scoresde.sde.analytic`)."""
import math
from pathlib import Path

import torch

from scoresde._common.tensors import as_time
from scoresde.models.conditioning import Cond
from scoresde.models.superres import augment_by_sde, downsample
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


# --- exact super-resolution: Gaussian images, their area-downsampled views, the closed-form conditionals --------
def area_matrix(shape, factor):
    """The (d_low, d) matrix D of area downsampling by `factor` (mean of factor x factor blocks) of (C, H, W) images."""
    d = math.prod(shape)
    eye = torch.eye(d, dtype=torch.float64).reshape(d, *shape)
    return downsample(eye, (shape[1] // factor, shape[2] // factor)).reshape(d, -1).T.contiguous()


def random_gaussian_image(shape, seed=0):
    """(mean (d,), covariance (d, d)) of a correlated Gaussian over images of `shape`: values of order one,
    covariance eigenvalues between about 0.02 and 1."""
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    mean = 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
    L = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return mean, 0.6 * L @ L.T + 0.02 * torch.eye(d, dtype=torch.float64)


class ExactImageGaussian:
    """A full-covariance Gaussian N(mean, cov) over images of `shape` with its exact perturbed score under `sde`:
    grad log p_t(x) = -(alpha^2 cov + sigma^2 I)^-1 (x - alpha mean). A ScoreModel-like base model."""
    num_classes = None

    def __init__(self, mean, cov, shape, sde):
        self.mean, self.cov, self.data_shape, self.sde = mean, cov, tuple(shape), sde
        self.calls = 0

    def __call__(self, x, t, cond=None):
        self.calls += 1
        t = as_time(t, x)
        out = torch.empty(x.shape[0], self.mean.numel(), dtype=torch.float64)
        xf = x.double().flatten(1)
        for tv in t.unique():
            rows = t == tv
            a, s = (v.double() for v in self.sde.marginal_coefs(tv.reshape(1).double()))
            C = a ** 2 * self.cov + s ** 2 * torch.eye(len(self.mean), dtype=torch.float64)
            out[rows] = -torch.linalg.solve(C, (xf[rows] - a * self.mean).T).T
        return out.reshape(x.shape).to(x.dtype)


class ExactSuperResolution:
    """Exact super-resolution model of Gaussian images: x ~ N(mean, cov) of `shape`, its low-resolution view
    y = D x (area downsampling by `factor`), augmented at level s by the forward SDE: z_s = alpha(s) y +
    sigma(s) e. (x_t, z_s) is jointly Gaussian, so the score of x_t given z_s is closed form:
        m = alpha_t mean + K (z - alpha_s D mean),   K = Cxz Czz^-1,   C = Cxx - K Cxz^T,
        Cxx = alpha_t^2 cov + sigma_t^2 I,  Czz = alpha_s^2 D cov D^T + sigma_s^2 I,  Cxz = alpha_t alpha_s cov D^T,
    and grad log p(x_t | z_s) = -C^-1 (x - m). ScoreModel-like: `image_shape`, `augment`, `image_cond`, `sde`;
    it records the levels it is called with (`levels`)."""
    num_classes = None

    def __init__(self, mean, cov, shape, factor, sde):
        self.mean, self.cov, self.data_shape, self.sde = mean, cov, tuple(shape), sde
        C, H, W = shape
        self.image_shape = (C, H // factor, W // factor)
        self.D = area_matrix(shape, factor)
        self.levels, self.calls = [], 0

    def low_res(self):
        """(mean, cov) of the low-resolution view D x."""
        return self.D @ self.mean, self.D @ self.cov @ self.D.T

    def augment(self, image, level, generator=None):
        return augment_by_sde(self.sde, image, level, generator)

    def image_cond(self, image, level=0.0, *, generator=None, noisy=False, labels=None):
        if tuple(image.shape[1:]) != self.image_shape:
            raise ValueError(f"cond.image: expected shape (B, {self.image_shape}), found {tuple(image.shape)}")
        level = as_time(level, image)
        return Cond(image=image if noisy else self.augment(image, level, generator), image_level=level,
                    labels=labels)

    def _gain(self, t, s):
        """(K, C, alpha_t, alpha_s) at times t, s (scalars)."""
        I = torch.eye(len(self.mean), dtype=torch.float64)
        a_t, s_t = (v.double().squeeze() for v in self.sde.marginal_coefs(t.reshape(1).double()))
        a_s, s_s = (v.double().squeeze() for v in self.sde.marginal_coefs(s.reshape(1).double()))
        D, S = self.D, self.cov
        Czz = a_s ** 2 * D @ S @ D.T + s_s ** 2 * torch.eye(len(D), dtype=torch.float64)
        Cxz = a_t * a_s * S @ D.T
        K = torch.linalg.solve(Czz, Cxz.T).T
        return K, a_t ** 2 * S + s_t ** 2 * I - K @ Cxz.T, a_t, a_s

    def posterior(self, z, s):
        """(mean (B, d), cov (d, d)) of x (t = 0) given the condition z (B, *image_shape) at level s."""
        K, C, _, a_s = self._gain(torch.tensor(0.0), torch.tensor(float(s)))
        return self.mean + (z.double().flatten(1) - a_s * self.D @ self.mean) @ K.T, C

    def __call__(self, x, t, cond=None):
        self.calls += 1
        if cond is None or cond.image is None:
            raise ValueError("cond.image: expected the low-resolution condition, found None")
        t = as_time(t, x).double()
        s = cond.expand(x.shape[0]).image_level.double()
        self.levels.append(s.clone())
        z = cond.expand(x.shape[0]).image.double().flatten(1)
        xf, out = x.double().flatten(1), torch.empty(x.shape[0], len(self.mean), dtype=torch.float64)
        pairs = torch.stack([t, s], 1)
        for tv, sv in pairs.unique(dim=0):
            rows = (pairs[:, 0] == tv) & (pairs[:, 1] == sv)
            K, C, a_t, a_s = self._gain(tv, sv)
            m = a_t * self.mean + (z[rows] - a_s * self.D @ self.mean) @ K.T
            out[rows] = -torch.linalg.solve(C, (xf[rows] - m).T).T
        return out.reshape(x.shape).to(x.dtype)


def gaussian_cascade(shapes, sde, seed=0):
    """(base, stages) of exact models for images of `shapes` (low to high, each an integer factor of the last):
    the top Gaussian N(mean, cov) on shapes[-1] and every lower one its area-downsampled view."""
    mean, cov = random_gaussian_image(shapes[-1], seed)
    models = []
    for lo, hi in reversed(list(zip(shapes[:-1], shapes[1:]))):
        sr = ExactSuperResolution(mean, cov, hi, hi[1] // lo[1], sde)
        models.insert(0, sr)
        mean, cov = sr.low_res()
    return ExactImageGaussian(mean, cov, shapes[0], sde), models
