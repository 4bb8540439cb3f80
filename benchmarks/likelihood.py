"""Probability-flow log-likelihoods (Song et al. 2021, arXiv:2011.13456, App. D.2): accuracy against
the exact density vs NFE and wall time, and bits/dim of a model trained on `digits`.

Part 1: the four-mode 2-D mixture with its exact score under VP, sub-VP and VE, exact divergence,
float64, tolerances rtol = atol = 1e-2 ... 1e-6. The error is |log p - log p_eps| against the exact
perturbed density at eps; "prior floor" is the part no tolerance removes, mean |log p_T(z) - log pi(z)|
(the data's p_T is not exactly the prior); "solver err" puts the exact p_T(z) in place of the prior.
Hutchinson rows: one Rademacher probe per solve (time per solve), and the average of 8 probes.

Part 2 (digits): bits/dim on the first 20% (359 images) of scikit-learn's digits (17 levels, 0..16, scaled to
[-1, 1]; dequantised uniformly, so the uniform density scores log2(17) = 4.09 bits/dim) of a model
from `--checkpoint DIR`, or trained here on the other 80% with `--train-steps N`; skipped otherwise.

    .venv/bin/python benchmarks/likelihood.py                       # part 1 only
    .venv/bin/python benchmarks/likelihood.py --train-steps 4000    # + train and score a digits MLP
    .venv/bin/python benchmarks/likelihood.py --checkpoint runs/digits
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time

import torch

import scoresde as ss
from scoresde.evaluation.likelihood import dequantize
from scoresde.sde.analytic import four_mode_mixture
from scoresde.evaluation.likelihood import dataset_likelihood, log_likelihood

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "likelihood.md")


def accuracy_rows(n: int, tols: list[float], seed: int) -> list[str]:
    mix = four_mode_mixture()
    x = mix.sample(n, generator=torch.Generator().manual_seed(seed))            # float64
    eps = 1e-5
    rows = ["| SDE | divergence | rtol = atol | mean abs err (nats) | mean err (nats) | solver err (nats) "
            "| prior floor (nats) | NFE | time (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, sde in [("VP", ss.VPSDE()), ("sub-VP", ss.SubVPSDE()), ("VE", ss.VESDE())]:
        ref = mix.log_prob(x, eps, sde)
        log_likelihood(sde, mix.score_fn(sde), x[:8], rtol=1e-2, atol=1e-2)                  # warm-up
        for tol in tols:
            start = time.perf_counter()
            logp, info = log_likelihood(sde, mix.score_fn(sde), x, rtol=tol, atol=tol, eps=eps, return_info=True)
            sec = time.perf_counter() - start
            exact_T = mix.log_prob(info["z"], sde.T, sde)       # p_T at the end point, instead of the prior
            floor = (exact_T - info["prior_logp"]).abs().mean().item()
            solver = (logp - info["prior_logp"] + exact_T - ref).abs().mean().item()
            err = logp - ref
            rows.append(f"| {name} | exact | {tol:.0e} | {err.abs().mean().item():.2e} | {err.mean().item():+.1e} "
                        f"| {solver:.1e} | {floor:.1e} | {info['nfe']} | {sec:.2f} |")
        # Hutchinson at 1e-5: one Rademacher probe per solve, then the average of 8 probes per point
        copies = 8
        start = time.perf_counter()
        est, info = log_likelihood(sde, mix.score_fn(sde), x.repeat(copies, 1), divergence="hutchinson",
                                   rtol=1e-5, atol=1e-5, eps=eps, return_info=True,
                                   generator=torch.Generator().manual_seed(seed))
        sec = time.perf_counter() - start
        err = est.reshape(copies, n) - ref
        rows.append(f"| {name} | hutchinson, 1 probe | 1e-05 | {err.abs().mean().item():.2e} | "
                    f"{err.mean().item():+.1e} | | | {info['nfe']} | {sec / copies:.2f} |")
        rows.append(f"| {name} | hutchinson, mean of {copies} | 1e-05 | {err.mean(0).abs().mean().item():.2e} | "
                    f"{err.mean().item():+.1e} | | | {copies} x {info['nfe']} | {sec:.2f} |")
    return rows


def _load_model(path: str):
    load = getattr(ss, "load", None)
    if load is None:
        from scoresde.runs.load import load
    return load(path)


def digits_rows(args) -> list[str]:
    from scoresde.data.datasets import load_dataset
    x = load_dataset("digits").x                                            # (1797, 1, 8, 8) in [-1, 1]
    n_test = len(x) // 5                                                    # held out: the first 20%
    test, train = x[:n_test][:args.digits_n], x[n_test:]
    if args.checkpoint:
        source = f"checkpoint `{args.checkpoint}` (its training data may include the held-out images)"
        model, sde = _load_model(args.checkpoint)
    elif args.train_steps > 0:
        train_fn = getattr(ss, "train", None)
        if train_fn is None:
            from scoresde.training.api import train as train_fn
        out = args.run_dir or tempfile.mkdtemp(prefix="likelihood_digits_")
        cfg = {"name": "likelihood_digits", "seed": 0, "device": args.device,
               "sde": {"name": args.sde},
               "model": {"name": "mlp", "parameterization": "eps", "width": 512, "depth": 3},
               "train": {"steps": args.train_steps, "batch_size": 256, "lr": 1e-3, "warmup": 200,
                         "ema_decay": 0.999, "progress": False, "ckpt_every": args.train_steps,
                         "log_every": 200},
               "sample": {"n": 64, "steps": 200}}
        start = time.perf_counter()
        result = train_fn(cfg, data=train, out=out)
        source = (f"MLP (width 512, depth 3, {args.sde}) trained here for {args.train_steps} steps on "
                  f"{len(train)} images in {time.perf_counter() - start:.0f} s, run dir `{out}`")
        model, sde = _load_model(result.run_dir)
    else:
        print("digits: skipped (no --checkpoint DIR and --train-steps 0)")
        return ["Skipped: pass `--checkpoint DIR` (a run directory trained on digits) or `--train-steps N`."]
    g = torch.Generator().manual_seed(1)
    rows = [f"Model: {source}; {sde}. Test set: {len(test)} held-out images, 64 dims, 17 levels, "
            f"data range [-1, 1], uniform dequantisation, rtol = atol = {args.rtol:g}.", "",
            "| model | divergence | bits/dim | ± SE | mean log p (nats) | NFE per batch | time (s) |",
            "|---|---|---|---|---|---|---|"]
    for div in args.divergence:
        out = dataset_likelihood(model, sde, test, batch_size=len(test), divergence=div, levels=17,
                                 data_range=(-1.0, 1.0), rtol=args.rtol, atol=args.rtol, generator=g)
        rows.append(f"| score model | {div} | {out['mean_bpd']:.3f} | {out['stderr_bpd']:.3f} | "
                    f"{out['mean_nats']:.1f} | {out['nfe']} | {out['seconds']:.1f} |")
    # references: a diagonal Gaussian fitted to the training images, and the uniform density
    deq = lambda v: dequantize(v.double(), levels=17, data_range=(-1.0, 1.0),  # noqa: E731
                                             generator=g).flatten(1)
    xq, xt = deq(test), deq(train)                                          # fit on dequantised data
    mu, sd = xt.mean(0), xt.std(0)
    gauss = (-0.5 * ((xq - mu) / sd).square() - torch.log(sd * math.sqrt(2 * math.pi))).sum(1)
    bpd = ss.bits_per_dim(gauss, 64, levels=17, data_range=(-1.0, 1.0))
    rows.append(f"| diagonal Gaussian fit | closed form | {bpd.mean().item():.3f} | "
                f"{bpd.std().item() / math.sqrt(len(bpd)):.3f} | {gauss.mean().item():.1f} | | |")
    rows.append(f"| uniform | closed form | {math.log2(17):.3f} | | {-64 * math.log(2):.1f} | | |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="mixture points")
    p.add_argument("--tols", type=float, nargs="+", default=[1e-2, 1e-3, 1e-4, 1e-5, 1e-6])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None, metavar="DIR", help="digits run directory to score")
    p.add_argument("--train-steps", type=int, default=0, help="train a digits MLP for N steps (0: no)")
    p.add_argument("--run-dir", default=None, help="where --train-steps writes its run (default: a temp dir)")
    p.add_argument("--sde", default="vp", choices=["vp", "subvp", "ve"], help="SDE for --train-steps")
    p.add_argument("--divergence", nargs="+", default=["hutchinson", "exact"], choices=["exact", "hutchinson"])
    p.add_argument("--rtol", type=float, default=1e-5, help="rtol = atol of the digits solves")
    p.add_argument("--digits-n", type=int, default=359, help="score the first N of the 359 held-out images")
    p.add_argument("--device", default="cpu", help="device for --train-steps (auto|cpu|cuda)")
    p.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS}")
    args = p.parse_args()

    head = (f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads")
    acc = accuracy_rows(args.n, args.tols, args.seed)
    digits = digits_rows(args)
    text = "\n".join([
        "# Probability-flow likelihood", "", head, "",
        f"## Accuracy on the four-mode 2-D mixture (exact score, {args.n} points, float64, eps = 1e-5)", "",
        *acc, "", "## Bits/dim on digits", "", *digits, ""])
    print(text)
    if not args.no_write:
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
