"""Full-budget study of the score-SDE samplers on analytic problems with exact scores.

Song et al. (2021), "Score-Based Generative Modeling through Stochastic Differential Equations",
arXiv:2011.13456. Two markdown tables, for VP, sub-VP and VE:

1. Gaussian data N(mu, diag(s^2)): the error of each sampler's mean and variance against the exact
   target p_eps, with the sampling standard error; this measures the discretisation bias that
   tests/samplers/test_samplers.py allows for.
2. The four-mode mixture (means (+-1, +-1), std 0.1, weights 0.1/0.2/0.3/0.4): total variation of
   the mode weights, the worst relative error of a within-mode std, and the NFE.

    python benchmarks/reference_samplers.py                 # 1000 steps, n = 10000 / 20000
    python benchmarks/reference_samplers.py --n-mix 4000 --sdes ve
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from tqdm.auto import tqdm

import scoresde as ss
from scoresde.sde.analytic import Gaussian, four_mode_mixture, mode_stats
from scoresde.samplers.core import sample

# (label, sampler, options); the SDE samplers run `--steps` steps
CONFIGS = [
    ("euler_maruyama", "euler_maruyama", {}),
    ("reverse_diffusion", "reverse_diffusion", {}),
    ("ancestral", "ancestral", {}),
    ("pc (rd + langevin)", "pc", {}),
    ("pc (ancestral + annealed)", "pc", {"predictor": "ancestral", "corrector": "annealed_langevin"}),
    ("annealed_langevin", "annealed_langevin", {}),
    ("annealed_langevin snr=.3 x3", "annealed_langevin", {"snr": 0.3, "corrector_steps": 3}),
    ("ode (RK45, 1e-5)", "ode", {}),
    ("torchsde euler", "torchsde", {}),
    ("torchsde reversible_heun", "torchsde", {"method": "reversible_heun"}),
]
MU, STD = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([0.3, 1.2], dtype=torch.float64)


def gaussian_row(sde, sampler, opts, n, steps, seed):
    data = Gaussian(MU, STD)
    eps = sde.default_eps
    alpha, sigma = sde.marginal_coefs(torch.tensor([eps], dtype=torch.float64))
    mean, var = alpha * MU, alpha.square() * STD.square() + sigma.square()      # p_eps, exact
    x, info = sample(sde, data.score_fn(sde), (n, 2), sampler=sampler, steps=steps, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(seed), return_info=True, **opts)
    mean_z = ((x.mean(0) - mean) / (var / n).sqrt()).abs().max().item()   # in standard errors
    var_rel = (x.var(0) / var - 1)                                        # relative variance error
    return mean_z, var_rel.abs().max().item(), math.sqrt(2 / (n - 1)), info["nfe"]


def mixture_row(sde, sampler, opts, n, steps, seed):
    mix = four_mode_mixture()
    t0 = time.perf_counter()
    x, info = sample(sde, mix.score_fn(sde), (n, 2), sampler=sampler, steps=steps,
                     generator=torch.Generator().manual_seed(seed), return_info=True, **opts)
    tv, std_err = mode_stats(mix, x)
    return tv, std_err, info["nfe"], time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000, help="steps of the SDE samplers")
    p.add_argument("--n-gauss", type=int, default=20000, help="samples for the Gaussian table")
    p.add_argument("--n-mix", type=int, default=10000, help="samples for the mixture table")
    p.add_argument("--sdes", nargs="+", default=["vp", "subvp", "ve"], choices=["vp", "subvp", "ve"])
    p.add_argument("--skip-gauss", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    jobs = [(name, cfg) for name in a.sdes for cfg in CONFIGS]
    gauss, mixr = [], []
    for name, (label, sampler, opts) in tqdm(jobs, desc="samplers x SDEs", dynamic_ncols=True):
        sde = ss.get_sde(name)
        if not a.skip_gauss:
            gauss.append((name, label, *gaussian_row(sde, sampler, opts, a.n_gauss, a.steps, a.seed)))
        mixr.append((name, label, *mixture_row(sde, sampler, opts, a.n_mix, a.steps, a.seed)))
    if gauss:
        print(f"\nGaussian N({MU.tolist()}, diag({STD.tolist()})^2), n={a.n_gauss}, steps={a.steps}: "
              "error against p_eps\n")
        print("| SDE | sampler | max mean error (SE) | max rel. variance error | var. SE | NFE |")
        print("|---|---|---|---|---|---|")
        for name, label, mz, vr, vse, nfe in gauss:
            print(f"| {name} | {label} | {mz:.2f} | {vr:.4f} | {vse:.4f} | {nfe} |")
    print(f"\nFour-mode mixture, n={a.n_mix}, steps={a.steps}\n")
    print("| SDE | sampler | mode-weight TV | within-mode std error | NFE | seconds |")
    print("|---|---|---|---|---|---|")
    for name, label, tv, err, nfe, sec in mixr:
        print(f"| {name} | {label} | {tv:.4f} | {100 * err:.1f}% | {nfe} | {sec:.1f} |")


if __name__ == "__main__":
    main()
