"""What the benchmarks share (they import this module, never each other): the 2-D mixtures and their
metric, the digits problem and its FID, and the cached training runs they sample from."""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import torch

import scoresde as ss
from scoresde.metrics import Reference, digits_split, evaluate, extract_features, get_feature_net
from scoresde.runs.checkpoint import list_checkpoints
from scoresde._common.toml import load_toml
from scoresde.sde.analytic import GaussianMixture

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "results"
SIGMA_MIN = 0.002


# --- the 2-D mixtures and their metric -----------------------------------------------------------
def sharp_mixture() -> GaussianMixture:
    """Six narrow 2-D modes, std 0.01-0.03 (anisotropic for some), unequal weights."""
    means = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.2], [0.0, -1.2], [0.5, 0.5], [-0.6, -0.5]])
    stds = torch.tensor([[0.01, 0.01], [0.02, 0.02], [0.03, 0.01], [0.015, 0.03], [0.01, 0.02], [0.025, 0.025]])
    return GaussianMixture(means, stds, [0.05, 0.1, 0.15, 0.2, 0.2, 0.3])


def metric(mix: GaussianMixture, x: torch.Tensor) -> float:
    """TV of mode weights + sum_k w_k KL(N(mean_k, cov_k fitted) || N(mu_k, diag s_k^2))."""
    x = x.double()
    if not torch.isfinite(x).all():
        return float("inf")
    k = mix.assign(x)
    K, d = mix.weights.numel(), x.shape[1]
    w = torch.bincount(k, minlength=K).double() / len(k)
    total = 0.5 * (w - mix.weights).abs().sum().item()
    for j in range(K):
        xs = x[k == j]
        if len(xs) <= d + 1:
            return float("inf")
        m, C = xs.mean(0), torch.cov(xs.T)
        v = mix.stds[j].square()                                  # true diagonal covariance
        dm = m - mix.means[j]
        # KL(N(m, C) || N(mu, V)) = 1/2 [tr(V^-1 C) + dm' V^-1 dm - d + log det V - log det C]
        kl = 0.5 * ((C.diagonal() / v).sum() + (dm.square() / v).sum() - d + v.log().sum() - torch.logdet(C))
        total += mix.weights[j].item() * kl.item()
    return total


def metric_noise(mix: GaussianMixture, n: int, draws: int = 20, seed: int = 100) -> torch.Tensor:
    """The metric of `draws` sets of n exact data samples: what a perfect sampler scores (its noise)."""
    return torch.tensor([metric(mix, mix.sample(n, generator=torch.Generator().manual_seed(seed + k)))
                         for k in range(draws)], dtype=torch.float64)


def sigma_min_eps(sde) -> float:
    return sde.t_from_half_log_snr(torch.tensor(-math.log(SIGMA_MIN), dtype=torch.float64)).item()


# --- digits ------------------------------------------------------------------------------------------
class DigitsFID:
    """Digits FID of samples against fixed reference images (their features computed once)."""

    def __init__(self, reference: torch.Tensor):
        self.net = get_feature_net("digits")
        self.ref = Reference.from_features(extract_features(self.net, reference, progress=False)[0])

    def __call__(self, x: torch.Tensor) -> float:
        if not torch.isfinite(x).all():                    # a diverged sampler
            return float("inf")
        return evaluate(x, self.ref, features=self.net, metrics="fid", progress=False)["fid"]


def digits_fid(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Digits FID of `samples` against `reference` images (one call; `DigitsFID` caches the reference)."""
    return DigitsFID(reference)(samples)


class Problem:
    """A score function, its SDE, a sample shape and a metric of samples (lower is better)."""

    def __init__(self, name, sde, score_fn, shape, score, budgets, tols, floor, floor_label):
        self.name, self.sde, self.score_fn, self.shape, self.score = name, sde, score_fn, shape, score
        self.budgets, self.tols, self.floor, self.floor_label = budgets, tols, floor, floor_label


def cached_run(run_dir: Path, steps: int, cfg: dict, data, retrain: bool, progress: bool) -> Path:
    """Train `cfg` into `run_dir` unless a checkpoint of exactly `steps` steps is there already."""
    have = list_checkpoints(run_dir) if run_dir.is_dir() else []
    if have and have[-1][0] == steps and not retrain:
        return run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cfg["train"].update(steps=steps, ckpt_every=steps, progress=progress, warmup=min(cfg["train"]["warmup"], steps))
    start = time.perf_counter()
    ss.train(cfg, data=data, out=str(run_dir))
    print(f"trained {run_dir.name}: {steps} steps in {time.perf_counter() - start:.0f} s", flush=True)
    return run_dir


def digits_problem(args, budgets, tols) -> Problem:
    train, _, test, _ = digits_split()                                 # (1438 | 359, 1, 8, 8) in [-1, 1]
    cfg = load_toml(str(ROOT / "configs" / "digits.toml"))
    cfg.update(seed=0, device="cpu")
    cfg["sample"] = {"n": 16, "steps": 20, "sampler": "ddim"}
    run = cached_run(Path(args.cache) / "digits", args.digits_steps, cfg, train, args.retrain, args.progress)
    model, sde = ss.load(run)
    fid = DigitsFID(test)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[: args.n_digits]
    floor = fid(train[pick])
    return Problem(f"trained U-Net on digits ({args.digits_steps} steps), VP", sde, model, (args.n_digits, 1, 8, 8),
                   fid, budgets, tols, floor, f"{args.n_digits} training images vs held-out")
