"""Classifier-free guidance on a labelled 2-D mixture: fidelity vs diversity as the weight w grows.

Trains a class-conditional MLP (label dropout p_uncond = 0.2) on the four-mode mixture, with the
mixture component as the class label, then samples with the guided score
    s_w = (1 - w) s(x, t, null) + w s(x, t, y)          (Ho & Salimans 2022, arXiv:2207.12598)
for w in {0, 0.5, 1, 2, 4, 8}, next to the same guidance built from the exact scores. Prints:
  fidelity:  the fraction of samples landing in the requested class;
  diversity: the within-class std of samples (robust: 1.4826 MAD) relative to the true std 0.1,
             and the number of modes holding >= 1% of the samples (4 = full coverage).
Saves guidance_fidelity_diversity.png and guidance_samples.png in out/guidance/ (git-ignored; the figures in
benchmarks/results/ are regenerated with --out benchmarks/results).

    OMP_NUM_THREADS=1 python examples/guidance.py [--train-steps 1500] [--n 1000] [--out DIR]
"""
from __future__ import annotations

import argparse
import os
import time

import torch

import scoresde as ss
from scoresde._common.tensors import as_time
from scoresde.sde.analytic import four_mode_mixture

WEIGHTS = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]
K = 4


class ExactConditional:
    """Exact class-conditional score: component k's perturbed score, the mixture's for the null label K."""
    num_classes = K

    def __init__(self, mix, sde):
        self.mix, self.sde = mix, sde

    def __call__(self, x, t, y=None):
        mean, var = self.mix._perturbed(self.sde, as_time(t, x.double()), x.ndim)
        comp = (-(x.double()[:, None] - mean) / var).to(x.dtype)              # (B, K, 2)
        cond = comp[torch.arange(len(x)), y.clamp(max=K - 1)]
        return torch.where((y == K)[:, None], self.mix.score(x, t, self.sde), cond)


def train(mix, sde, steps: int, seed: int) -> ss.ScoreModel:
    torch.manual_seed(seed)
    model = ss.ScoreModel(ss.get_model("mlp", data_shape=(2,), width=128, depth=3, num_classes=K), sde)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed + 1)
    for i in range(steps):
        x0 = mix.sample(256, g, dtype=torch.float32)
        # labels = mixture components; 20% replaced by the null label (Ho & Salimans 2022, Alg. 1)
        loss = ss.conditional_dsm_loss(model, sde, x0, mix.assign(x0), p_uncond=0.2, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (i + 1) % 500 == 0:
            print(f"  step {i + 1}: loss {loss.item():.4f}")
    return model.eval()


def robust_std(x):
    """1.4826 x the median absolute deviation per coordinate: the std of a Gaussian, blind to stray points."""
    return 1.4826 * (x - x.median(0).values).abs().median(0).values


def metrics(mix, x, y):
    """(requested-class rate, within-class std / true std, modes with >= 1% of the samples)."""
    k = mix.assign(x)
    rate = (k == y).double().mean().item()
    ratios = [(robust_std(x[k == j].double()) / mix.stds[j]).mean().item() for j in range(K) if (k == j).sum() > 10]
    counts = torch.bincount(k, minlength=K).double() / len(k)
    return rate, sum(ratios) / len(ratios), int((counts >= 0.01).sum())


# a fresh folder of its own by default (git-ignored); --out benchmarks/results regenerates the tracked figures
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "out", "guidance")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-steps", type=int, default=1500)
    ap.add_argument("--n", type=int, default=1000, help="samples per weight")
    ap.add_argument("--steps", type=int, default=200, help="sampling steps (reverse diffusion)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=OUT, help="output folder (default: out/guidance/ in the repository)")
    return ap.parse_args(argv)


def main():
    args = parse_args()
    mix, sde = four_mode_mixture(), ss.VPSDE()
    start = time.perf_counter()
    model = train(mix, sde, args.train_steps, args.seed)
    print(f"trained the class-conditional MLP in {time.perf_counter() - start:.1f} s")
    y = torch.arange(args.n) % K                                  # every class requested equally
    results, samples = {"trained": [], "exact": []}, {}
    for name, score_model, dtype in [("trained", model, torch.float32), ("exact", ExactConditional(mix, sde), torch.float64)]:
        for w in WEIGHTS:
            x = sde.sample(ss.classifier_free_score(score_model, y, w), (args.n, 2), sampler="reverse_diffusion",
                           steps=args.steps, dtype=dtype, generator=torch.Generator().manual_seed(args.seed + 2))
            results[name].append(metrics(mix, x, y))
            samples[name, w] = x
    print(f"\nclassifier-free guidance, {args.n} samples, classes requested uniformly, {args.steps} steps")
    print("| w | class rate (trained) | std / true std (trained) | modes >= 1% (trained) "
          "| class rate (exact) | std / true std (exact) | modes >= 1% (exact) |")
    print("|---|---|---|---|---|---|---|")
    for w, tr, ex in zip(WEIGHTS, results["trained"], results["exact"]):
        print(f"| {w:g} | {tr[0]:.4f} | {tr[1]:.3f} | {tr[2]} | {ex[0]:.4f} | {ex[1]:.3f} | {ex[2]} |")
    plot(args.out, results, samples, mix, y)


def plot(out, results, samples, mix, y):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(out, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, marker in [("trained", "o-"), ("exact", "s--")]:
        rate = [r[0] for r in results[name]]
        std = [r[1] for r in results[name]]
        ax.plot(std, rate, marker, label=f"{name} scores")
        for w, sx, ry in zip(WEIGHTS, std, rate) if name == "trained" else []:
            ax.annotate(f"w={w:g}", (sx, ry), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("diversity: within-class std (MAD) / true std")
    ax.set_ylabel("fidelity: requested-class rate")
    ax.set_title("Classifier-free guidance on the 4-mode mixture")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "guidance_fidelity_diversity.png"), dpi=120)
    ws = [0.0, 1.0, 4.0, 8.0]
    fig, axes = plt.subplots(1, len(ws), figsize=(3.2 * len(ws), 3.3), sharex=True, sharey=True)
    for ax, w in zip(axes, ws):
        x = samples["trained", w]
        ax.scatter(x[:, 0], x[:, 1], c=y, cmap="tab10", vmin=0, vmax=9, s=3)
        ax.scatter(mix.means[:, 0], mix.means[:, 1], marker="x", c="k", s=30)
        ax.set_title(f"w = {w:g} (colour = requested class)", fontsize=9)
        ax.set_xlim(-1.8, 1.8)
        ax.set_ylim(-1.8, 1.8)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "guidance_samples.png"), dpi=120)
    print(f"saved {out}/guidance_fidelity_diversity.png and {out}/guidance_samples.png")


if __name__ == "__main__":
    main()
