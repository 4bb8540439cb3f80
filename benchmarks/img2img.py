"""Image-to-image on a trained digits model: exact inversion round trips and SDEdit's realism-faithfulness
trade-off (`scoresde.invert`, `scoresde.sdedit`).

    OMP_NUM_THREADS=1 python benchmarks/img2img.py            # about 5 CPU minutes (+2.5 to train, cached)
    OMP_NUM_THREADS=1 python benchmarks/img2img.py --schedules   # 5 CPU minutes: the ddim grid layouts
    OMP_NUM_THREADS=1 python benchmarks/img2img.py --quick    # a few minutes: checks the script runs

Model: the digits U-Net of configs/digits.toml (VP SDE) trained 1500 steps on the 1438 training digits
(`scoresde.metrics.digits_split`), cached in runs/bench_img2img/digits.

(a) Inversion: the first 64 held-out digits x (as the state at eps = 1e-3), in float64 (model and data), are
    mapped to their latents z at T and back; the round-trip error is ||x - x'|| / ||x|| over the whole set.
    Methods, against the score evaluations (NFE) of the inversion (the generation back costs the same, except
    ddim + fixed point, whose generation is the plain ddim sampler of `steps` NFE):
    - ddim: DDIM inversion (Song et al. 2021, arXiv:2010.02502) at steps = NFE, generation by the ddim sampler
      on the same grid;
    - ddim+fp k: each inversion step solved for the sampler's step by k fixed-point iterations (Hong et al.
      2024, "On Exact Inversion of DPM-Solvers"), the last data prediction of a step starting the next:
      steps = (NFE - 1) / k;
    - ode: the probability-flow ODE, adaptive RK45 both ways (Song et al. 2021, arXiv:2011.13456), rtol = atol
      swept; its NFE is what the solver took.
    The latents are also checked to look like the prior: their mean, std and the mean |lag-1 correlation| of
    neighbouring pixels (0 for N(0, I)).
(b) SDEdit (Meng et al. 2021, arXiv:2108.01073) of guides made from the held-out digits, "strokes" (two random
    ink strokes of 3-5 pixels painted on each) and "noise" (+ N(0, 0.5^2), clipped to [-1, 1]), at strength
    0.1 ... 1.0, with the ancestral sampler (stochastic, as in SDEdit) at round(100 strength) steps and dpm_solver
    at max(2, round(20 strength)) steps. Realism: digits FID of the 359 outputs against the 1438 training
    digits (`DigitsFID`, the shipped 8x8 digits classifier's features); faithfulness: the RMS distance per pixel
    to the guide (and to the clean digit the guide was made from). Reference: the held-out digits themselves (not a
    floor: against the training digits, the model's outputs can score below real held-out digits).

`--schedules` compares, for ddim + fixed point at about 100 NFE, the grid layouts the ddim sampler offers
(`schedule=`: log-SNR, Karras, quadratic, uniform) on the same digits.

CPU time: time.process_time of this process. Writes benchmarks/results/img2img.md and sdedit_tradeoff.png
(img2img_schedules.md with --schedules).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import scoresde as ss
from scoresde.metrics import digits_split
from scoresde._common.toml import load_toml
from common import OUT, ROOT, DigitsFID, cached_run

NFES = (25, 50, 100, 200)
STRENGTHS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
ODE_TOLS = (1e-3, 1e-4, 1e-5)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def latent_stats(z: torch.Tensor) -> str:
    zc = z - z.mean()
    lag = (zc[..., :, 1:] * zc[..., :, :-1]).mean() / zc.square().mean()
    return f"{float(z.mean()):+.3f} / {float(z.std()):.3f} / {abs(float(lag)):.3f}"


def inversion(model, sde, x, quick: bool) -> list[str]:
    nfes = NFES[:2] if quick else NFES
    rows = []
    for method, k in [("ddim", 0), ("ddim+fp", 1), ("ddim+fp", 2)]:
        for nfe in nfes:
            steps = nfe if not k else (nfe - 1) // k                   # NFE = 1 + k steps with fixed_point=k
            c0 = time.process_time()
            z, info = ss.invert(sde, model, x, steps=steps, fixed_point=k, return_info=True)
            back, binfo = ss.invert(sde, model, z, steps=steps, inverse=True, return_info=True)
            name = method if not k else f"{method} {k}"
            rows.append(f"| {name} | {steps} | {info['nfe']} | {binfo['nfe']} | {rel(back, x):.2e} | "
                        f"{latent_stats(z)} | {time.process_time() - c0:.1f} |")
            print(rows[-1], flush=True)
    for tol in ODE_TOLS[:2] if quick else ODE_TOLS:
        c0 = time.process_time()
        z, info = ss.invert(sde, model, x, method="ode", rtol=tol, atol=tol, return_info=True)
        back, binfo = ss.invert(sde, model, z, method="ode", rtol=tol, atol=tol, inverse=True, return_info=True)
        rows.append(f"| ode, rtol = atol = {tol:g} | - | {info['nfe']} | {binfo['nfe']} | {rel(back, x):.2e} | "
                    f"{latent_stats(z)} | {time.process_time() - c0:.1f} |")
        print(rows[-1], flush=True)
    head = ["| method | steps | NFE invert | NFE generate | round-trip error | latent mean / std / lag-1 corr | "
            "CPU s |", "|---|---:|---:|---:|---:|---|---:|"]
    return head + rows


def schedules(model, sde, x) -> list[str]:
    """ddim + fixed point at about 100 NFE on each grid layout the ddim sampler offers."""
    rows = ["| method | schedule | steps | NFE invert | NFE generate | round-trip error | CPU s |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for k in (1, 2):
        for sch in ("logsnr", "karras", "quadratic", "uniform"):
            steps = 99 // k
            c0 = time.process_time()
            z, info = ss.invert(sde, model, x, steps=steps, fixed_point=k, schedule=sch, return_info=True)
            back, binfo = ss.invert(sde, model, z, steps=steps, schedule=sch, inverse=True, return_info=True)
            rows.append(f"| ddim+fp {k} | {sch} | {steps} | {info['nfe']} | {binfo['nfe']} | {rel(back, x):.2e} | "
                        f"{time.process_time() - c0:.1f} |")
            print(rows[-1], flush=True)
    return rows


def strokes(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Two random straight ink strokes (value +1, 3-5 pixels, horizontal / vertical / diagonal) per image."""
    y = x.clone()
    n, _, h, w = x.shape
    for i in range(n):
        for _ in range(2):
            length = int(torch.randint(3, 6, (), generator=g))
            dr, dc = [(0, 1), (1, 0), (1, 1), (1, -1)][int(torch.randint(0, 4, (), generator=g))]
            r, c = int(torch.randint(0, h, (), generator=g)), int(torch.randint(0, w, (), generator=g))
            for s in range(length):
                rr, cc = r + s * dr, c + s * dc
                if 0 <= rr < h and 0 <= cc < w:
                    y[i, 0, rr, cc] = 1.0
    return y


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().mean().sqrt())


def tradeoff(model, sde, test, fid, quick: bool):
    g = torch.Generator().manual_seed(0)
    guides = {"strokes": strokes(test, g),
              "noise": (test + 0.5 * torch.randn(test.shape, generator=g)).clamp(-1, 1)}
    samplers = {"ancestral": lambda s: round(100 * s), "dpm_solver": lambda s: max(2, round(20 * s))}
    strengths = STRENGTHS[::3] if quick else STRENGTHS
    rows, curves = [], {}
    for gname, guide in guides.items():
        rows.append(f"| {gname} | guide itself | - | 0 | {fid(guide):.2f} | 0 | {rms(guide, test):.3f} | - |")
        for sname, steps_of in samplers.items():
            for s in strengths:
                c0 = time.process_time()
                out, info = ss.sdedit(sde, model, guide, s, sampler=sname, steps=steps_of(s),
                                      generator=torch.Generator().manual_seed(1), return_info=True)
                f, d, dc = fid(out), rms(out, guide), rms(out, test)
                curves.setdefault((gname, sname), []).append((s, d, f))
                rows.append(f"| {gname} | {sname} | {s:.1f} | {info['nfe']} | {f:.2f} | {d:.3f} | {dc:.3f} | "
                            f"{time.process_time() - c0:.1f} |")
                print(rows[-1], flush=True)
    head = ["| guides | sampler | strength | NFE | FID (realism) | RMS to guide (faithfulness) | RMS to clean digit | "
            "CPU s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    return head + rows, curves


def plot(curves, floor: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for (gname, sname), pts in curves.items():
        _, d, f = zip(*pts)
        line, = ax.plot(d, f, "o-" if gname == "strokes" else "s--", label=f"{gname}, {sname}")
        for s, di, fi in pts:
            ax.annotate(f"{s:g}", (di, fi), fontsize=6, xytext=(2, 2), textcoords="offset points",
                        color=line.get_color())
    ax.axhline(floor, color="gray", lw=0.8, ls=":", label="held-out digits themselves")
    ax.set_xlabel("RMS distance to the guide (lower: more faithful)")
    ax.set_ylabel("digits FID (lower: more realistic)")
    ax.set_yscale("log")
    ax.set_title("SDEdit on digits: realism vs faithfulness over the strength (labels)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=str(ROOT / "runs" / "bench_img2img"))
    ap.add_argument("--train-steps", type=int, default=1500)
    ap.add_argument("--quick", action="store_true", help="a few rows on a few images: checks the script runs")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--schedules", action="store_true",
                    help="only the ddim inversion grid-layout table (img2img_schedules.md)")
    ap.add_argument("--n-invert", type=int, default=64, help="held-out digits inverted (float64 on the CPU is slow)")
    args = ap.parse_args()
    torch.manual_seed(0)
    cpu0 = time.process_time()
    train, _, test, _ = digits_split()                                   # (1438 | 359, 1, 8, 8) in [-1, 1]
    cfg = load_toml(str(ROOT / "configs" / "digits.toml"))
    cfg.update(seed=0, device="cpu")
    cfg["sample"] = {"n": 16, "steps": 20, "sampler": "ddim"}
    steps = 200 if args.quick else args.train_steps
    run = cached_run(Path(args.cache) / ("digits_quick" if args.quick else "digits"), steps, cfg, train,
                     args.retrain, False)
    model, sde = ss.load(run)
    model.eval()
    if args.schedules:
        md = [f"# DDIM inversion at about 100 NFE by grid layout ({steps}-step digits U-Net, VP)", "",
              "`OMP_NUM_THREADS=1 python benchmarks/img2img.py --schedules`: the round trip of "
              f"{args.n_invert} held-out digits in float64 (as in img2img.md, table (a)), with the ddim grid laid "
              "out uniformly in log-SNR (the default), Karras' rho = 7, sqrt(t) (quadratic) or t.", ""]
        md += schedules(model.double(), sde, digits_split()[2][: args.n_invert].double())
        md += ["", f"CPU {time.process_time() - cpu0:.0f} s (process time)."]
        (OUT / "img2img_schedules.md").write_text("\n".join(md) + "\n")
        print("\n".join(md))
        return
    test = test[:80] if args.quick else test
    fid = DigitsFID(train)
    floor = fid(test)

    md = [f"# Image-to-image on digits ({steps}-step digits U-Net, VP)", "",
          "`OMP_NUM_THREADS=1 python benchmarks/img2img.py`; the method is in the script's docstring.", "",
          f"## (a) Inversion round trip, {len(test[: args.n_invert])} held-out digits, float64", ""]
    c0 = time.process_time()
    md += inversion(model.double(), sde, test[: args.n_invert].double(), args.quick)
    md += ["", f"CPU {time.process_time() - c0:.0f} s.", ""]
    model.float()
    c0 = time.process_time()
    table, curves = tradeoff(model, sde, test, fid, args.quick)
    md += [f"## (b) SDEdit: realism (digits FID vs the {len(train)} training digits) against faithfulness", "",
           f"Reference: the {len(test)} held-out digits themselves have FID {floor:.2f} (not a floor: the outputs "
           "are scored against the training digits the model was fitted to).", ""] + table
    md += ["", f"CPU {time.process_time() - c0:.0f} s. Plot: sdedit_tradeoff.png.", "",
           f"Total CPU {time.process_time() - cpu0:.0f} s (process time, training excluded when cached)."]
    out = OUT / ("img2img_quick.md" if args.quick else "img2img.md")
    out.write_text("\n".join(md) + "\n")
    plot(curves, floor, OUT / ("sdedit_tradeoff_quick.png" if args.quick else "sdedit_tradeoff.png"))
    print("\n".join(md))


if __name__ == "__main__":
    main()
