"""A cascade (8x8 base + 8 -> 32 super-resolution) against a single-stage 32x32 model on digits32, at equal
training budget in process CPU seconds (Cascaded Diffusion Models, Ho et al. 2021, arXiv:2106.15282; SR3,
Saharia et al. 2021, arXiv:2104.07636).

    OMP_NUM_THREADS=1 python benchmarks/cascade.py --budget 300     # about 30 CPU minutes
    OMP_NUM_THREADS=1 python benchmarks/cascade.py --quick          # a minute: checks the script runs

Data: the digits split as the digits classifier was trained (`scoresde.metrics.digits_split`: 1438 training
images, the first 359 held out); digits32 = the 8x8 digits upsampled bilinearly to 32x32 (as the built-in).

1. Single stage: a DDPM U-Net on the 1438 32x32 training images for `--budget` CPU seconds.
2. Cascade, the same budget in all: a base U-Net on the 8x8 low-resolution views of those images (their area
   downsample, the very condition the super-resolution stage is trained on; `--base-frac` of the budget) and
   an 8 -> 32 super-resolution U-Net (the single-stage network plus the condition, SR3 concatenation) on the
   32x32 images with noise-conditioning augmentation s ~ U(0, 0.35) (train.aug = "noise"), the rest.
   A third run trains the same super-resolution stage without augmentation (train.aug = "none") for the ablation.
   Each run trains in two phases: a probe of a few steps, whose CPU cost per step sets the number of steps the
   budget allows, then an exact resume to that number; the CPU seconds actually spent are reported.
3. Samples `--n` final images of each, `--sampler` (default dpm_solver, 20 steps; every model predicts v: with
   eps the super-resolution stages' probability-flow samplers diverged) at `--steps` steps per model (the cascade spends the same 32x32
   evaluations as the single stage plus its cheap 8x8 base; the sampling CPU seconds are given), and the
   cascade at every augmentation level s of `--levels`, truncated (the base chain stopped at s, its x_s the
   condition) and not (run to 0, re-noised to s).
4. Metrics. FID in the shipped digits classifier's 64 features (`scoresde.metrics`, the part Inception-v3
   plays for FID, Heusel et al. 2017, arXiv:1706.08500) of 8x8 views against the 359 held-out digits:
   - FID (digit): the 32x32 image brought to 8x8 by `to_digits8`, the least-squares inverse of digits32's
     bilinear upsampling (exact on the data): how good the DIGITS are, as benchmarks/latent.py measures them.
   - FID (area): the area-downsampled 8x8 view of the 32x32 image against the held-out images' area views:
     the same features on the view the base model generates.
   Neither sees 32x32 detail that the 8x8 projection removes; the consistency and diversity rows look at it:
   consistency = PSNR (peak-to-peak 2) of the super-resolution's area view against its low-res input
   (held-out views), fidelity = PSNR of the super-resolution against the true 32x32 image, diversity = the
   pixel std across `--n-per` super-resolutions of one input (mean over inputs and pixels).

CPU time (time.process_time) throughout. Writes benchmarks/results/cascade.md and cascade_aug.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import scoresde as ss
from scoresde.metrics import Reference, digits_split, evaluate, extract_features, get_feature_net
from scoresde.models.superres import downsample

HERE = Path(__file__).resolve().parent
UNET = {"name": "ddpm_unet", "ch": 16, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [],
        "dropout": 0.0, "num_groups": 8, "parameterization": "v"}      # benchmarks/latent.py's pixel U-Net
BASE = {"name": "ddpm_unet", "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
        "dropout": 0.0, "num_groups": 8, "parameterization": "v"}      # configs/digits.toml's 8x8 U-Net
# every model predicts v, the default of super-resolution stages (an eps stage's data prediction at high noise is
# off by sigma/alpha times its error and the probability-flow samplers follow it: scoresde/training/tasks/score.py)
TRAIN = {"batch_size": 32, "lr": 1e-3, "warmup": 20, "ema_decay": 0.99, "log_every": 50, "progress": False,
         "sample_every": 0, "eval_every": 0}


# --- data and metrics -------------------------------------------------------------------------------------------
def _linear_up(n: int, factor: int) -> torch.Tensor:
    eye = torch.eye(n, dtype=torch.float64)[:, None, :]
    return F.interpolate(eye, scale_factor=factor, mode="linear", align_corners=False)[:, 0].T


_D = torch.linalg.pinv(_linear_up(8, 4))                      # (8, 32): the least-squares inverse of x4 bilinear


def to_digits8(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, 32, 32) -> (N, 1, 8, 8), exact inverse of digits32's bilinear upsampling on the data."""
    return (_D @ x.double() @ _D.T).float()


def area8(x: torch.Tensor) -> torch.Tensor:
    return downsample(x.float(), (8, 8))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.double() - b.double()).square().mean())
    return 10 * math.log10(4.0 / mse) if mse > 0 else float("inf")


class Metrics:
    """FID (digit) and FID (area) of 32x32 images against held-out images (features computed once)."""

    def __init__(self, test8: torch.Tensor, test32: torch.Tensor):
        self.net = get_feature_net("digits")
        feats = lambda x: Reference.from_features(extract_features(self.net, x, progress=False)[0])  # noqa: E731
        self.ref_digit, self.ref_area = feats(test8), feats(area8(test32))

    def __call__(self, x32: torch.Tensor) -> dict[str, float]:
        if not bool(torch.isfinite(x32).all()):
            return {"fid_digit": float("inf"), "fid_area": float("inf")}
        x32 = x32.clamp(-1, 1).cpu()
        fid = lambda x, ref: evaluate(x, ref, features=self.net, metrics="fid", progress=False)["fid"]  # noqa: E731
        return {"fid_digit": fid(to_digits8(x32).clamp(-1, 1), self.ref_digit), "fid_area": fid(area8(x32), self.ref_area)}


# --- training for a CPU budget ------------------------------------------------------------------------------------
def train_for(name: str, cfg: dict, data: torch.Tensor, budget: float, cache: Path, probe: int) -> dict:
    """Train `cfg` on `data` for about `budget` process CPU seconds: `probe` steps, then (exact resume) as many
    as the probe's cost per step allows. Reuses a finished run of the same budget in `cache`."""
    out = cache / name
    record = out / "budget.json"
    if record.exists():
        rec = json.loads(record.read_text())
        if rec["budget"] == budget:
            return rec
    cfg = json.loads(json.dumps(cfg))
    cfg["train"].update(steps=probe, ckpt_every=probe)
    cfg.update(seed=0, device="cpu")
    cfg["sample"] = {"n": 4, "steps": 2, "sampler": "ddim"}
    t0 = time.process_time()
    ss.train(cfg, data=data, out=str(out))
    steps, used = probe, time.process_time() - t0
    per_step = used / probe                        # the probe's cost per step (with the run's fixed costs)
    for _ in range(2):                             # resumed phases: the rest of the budget at the last rate
        more = int((budget - used) / per_step)
        if more < max(2, steps // 20):
            break
        t1 = time.process_time()
        ss.train({"train": {"steps": steps + more, "ckpt_every": steps + more}}, data=data, out=str(out),
                 resume=True)
        used = time.process_time() - t0
        per_step, steps = (time.process_time() - t1) / more, steps + more
    rec = {"budget": budget, "steps": steps, "cpu": used, "probe_ms": 1000 * per_step}
    record.write_text(json.dumps(rec))
    print(f"trained {name}: {steps} steps, {rec['cpu']:.0f} CPU s", flush=True)
    return rec


def timed(fn):
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


# --- the benchmark -------------------------------------------------------------------------------------------------
def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=300.0, help="training CPU seconds per approach")
    p.add_argument("--base-frac", type=float, default=0.25, help="the cascade base's share of the budget")
    p.add_argument("--n", type=int, default=256, help="final images per configuration (FID)")
    p.add_argument("--sampler", default="dpm_solver", help="the sampler of every model")
    p.add_argument("--steps", type=int, default=20, help="sampler steps per model")
    p.add_argument("--levels", default="0,0.05,0.1,0.2,0.35,0.5", help="augmentation levels s swept at sampling")
    p.add_argument("--n-per", type=int, default=8, help="super-resolutions per input (diversity)")
    p.add_argument("--inputs", type=int, default=32, help="held-out low-res inputs (consistency, diversity)")
    p.add_argument("--cache", default=None, help="directory of the trained runs (reused at the same budget)")
    p.add_argument("--out", default=str(HERE / "results" / "cascade.md"))
    p.add_argument("--plot", default=str(HERE / "results" / "cascade_aug.png"))
    p.add_argument("--quick", action="store_true", help="tiny budget and sample counts: checks the script runs")
    args = p.parse_args(argv)
    if args.quick:
        args.budget, args.n, args.steps, args.levels, args.n_per, args.inputs = 4.0, 80, 3, "0,0.2", 2, 4
    levels = [float(v) for v in args.levels.split(",")]
    probe = 2 if args.quick else 20
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="cascade_bench_"))
    torch.manual_seed(0)

    train8, _, test8, _ = digits_split()
    up = lambda x: F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(-1, 1)  # noqa: E731
    train32, test32 = up(train8), up(test8)
    low_train, low_test = area8(train32), area8(test32)
    metrics = Metrics(test8, test32)

    sr_model = {**UNET, "image_shape": [1, 8, 8]}
    runs = {
        "single": train_for("single", {"model": UNET, "train": dict(TRAIN)}, train32, args.budget, cache, probe),
        "base": train_for("base", {"model": BASE, "train": dict(TRAIN)}, low_train, args.base_frac * args.budget,
                          cache, probe),
        "sr_noise": train_for("sr_noise", {"model": sr_model, "train": {**TRAIN, "aug": "noise"}}, train32,
                              (1 - args.base_frac) * args.budget, cache, probe),
        "sr_none": train_for("sr_none", {"model": sr_model, "train": {**TRAIN, "aug": "none"}}, train32,
                             (1 - args.base_frac) * args.budget, cache, probe),
    }
    models = {k: ss.load(cache / k)[0] for k in runs}
    for m in models.values():
        m.eval()

    def gen():
        return torch.Generator().manual_seed(1)

    kw = {"sampler": args.sampler, "steps": args.steps}
    single, single_cpu = timed(lambda: models["single"].sde.sample(models["single"], args.n, generator=gen(), **kw))
    rows, curve = [], {}
    base_out, base_cpu = timed(lambda: models["base"].sde.sample(models["base"], args.n, generator=gen(), **kw))
    res_single = metrics(single)
    res_base8 = evaluate(base_out.clamp(-1, 1), metrics.ref_area, features=metrics.net, metrics="fid",
                         progress=False)["fid"]
    best = None
    for sr in ("sr_noise", "sr_none"):
        for truncated in (False, True):
            if sr == "sr_none" and truncated:
                continue
            for s in levels:
                if truncated and s == 0:
                    continue
                (x, cpu) = timed(lambda: ss.cascade(models["base"], [models[sr]], args.n, aug_level=s,
                                                    truncated=truncated, sampler=args.sampler, steps=args.steps,
                                                    generator=gen()))
                res = metrics(x)
                curve.setdefault((sr, truncated), []).append((s, res["fid_digit"]))
                rows.append((sr, truncated, s, res, cpu))
                if sr == "sr_noise" and (best is None or res["fid_digit"] < best[3]["fid_digit"]):
                    best = (sr, truncated, s, res, cpu)
    # consistency, fidelity and diversity of super-resolution alone on held-out low-res views
    pick = slice(0, args.inputs)
    sr_rows = []
    for sr in ("sr_noise", "sr_none"):
        for s in sorted({0.0, best[2]}):
            hi = ss.super_resolve(models[sr], low_test[pick], aug_level=s, n_per=args.n_per, sampler=args.sampler,
                                  steps=args.steps, generator=gen())
            lows = low_test[pick].repeat_interleave(args.n_per, 0)
            truth = test32[pick].repeat_interleave(args.n_per, 0)
            div = float(hi.reshape(args.inputs, args.n_per, -1).std(1).mean())
            sr_rows.append((sr, s, psnr(area8(hi), lows), psnr(hi, truth), div))
    floor = {"train": metrics(train32[torch.randperm(len(train32), generator=gen())[: args.n]])}

    # --- the report ---
    fmt = lambda v: f"{v:.2f}"  # noqa: E731
    lines = [
        "# Cascade (8x8 base + 8 -> 32 super-resolution) vs single-stage 32x32 on digits32 (CPU, "
        f"{torch.get_num_threads()} thread(s))", "",
        f"Training budget per approach: **{args.budget:.0f} process CPU s** (cascade: base {args.base_frac:.0%}, "
        f"super-resolution {1 - args.base_frac:.0%}). Networks: single stage and super-resolution `{json.dumps(UNET)}` "
        f"(SR: + `image_shape` [1, 8, 8], bicubic upsampling, concatenated); base `{json.dumps(BASE)}` on the area "
        f"8x8 views. VP SDE, batch {TRAIN['batch_size']}, Adam {TRAIN['lr']}, EMA {TRAIN['ema_decay']}. "
        f"Samples: {args.n} per configuration, `{args.sampler}` at {args.steps} steps per model.", "",
        "| run | steps | CPU s (actual) | CPU ms / step (last phase) |", "|---|---:|---:|---:|"]
    for k, rec in runs.items():
        lines.append(f"| {k} | {rec['steps']} | {rec['cpu']:.0f} | {rec['probe_ms']:.0f} |")
    sb, ss_ = best[3], res_single
    lines += ["", "FID in the digits classifier's features against the 359 held-out digits (lower is better); "
              "FID (digit): 32x32 -> 8x8 by the exact inverse of the bilinear upsampling; FID (area): area 8x8 "
              "views against the held-out area views.", "",
              "| model | FID (digit) | FID (area) | sampling CPU s |", "|---|---:|---:|---:|",
              f"| single-stage 32x32 | {fmt(ss_['fid_digit'])} | {fmt(ss_['fid_area'])} | {single_cpu:.1f} |",
              f"| cascade, best s (SR aug noise, s = {best[2]:g}{', truncated' if best[1] else ''}) | "
              f"{fmt(sb['fid_digit'])} | {fmt(sb['fid_area'])} | {best[4]:.1f} |",
              f"| cascade base alone (8x8 samples vs area views) | | {fmt(res_base8)} | {base_cpu:.1f} |",
              f"| floor: {args.n} training images | {fmt(floor['train']['fid_digit'])} | "
              f"{fmt(floor['train']['fid_area'])} | |",
              "", f"**cascade / single-stage FID (digit) = {sb['fid_digit'] / ss_['fid_digit']:.2f}** (goal <= 0.7); "
              f"FID (area): {sb['fid_area'] / ss_['fid_area']:.2f}.", "",
              "Augmentation ablation: FID (digit) / FID (area) of the cascade at each sampling level s.", "",
              "| SR trained with | sampling | " + " | ".join(f"s = {s:g}" for s in levels) + " |",
              "|---|---|" + "---:|" * len(levels)]
    for (sr, truncated), _ in curve.items():
        cells = []
        for s in levels:
            hit = [r for r in rows if r[0] == sr and r[1] == truncated and r[2] == s]
            cells.append(f"{fmt(hit[0][3]['fid_digit'])} / {fmt(hit[0][3]['fid_area'])}" if hit else "=")
        lines.append(f"| aug {sr[3:]} | {'truncated' if truncated else 'non-truncated'} | " + " | ".join(cells) + " |")
    none0 = [r for r in rows if r[0] == "sr_none" and r[2] == 0][0][3]["fid_digit"]
    noise_best_none = min(r[3]["fid_digit"] for r in rows if r[0] == "sr_none")
    lines += ["", f"Truncated at s = 0 is the non-truncated cascade (=). Augmentation: best FID (digit) with "
              f"aug noise {fmt(sb['fid_digit'])} vs aug none {fmt(noise_best_none)} (at s = 0: {fmt(none0)}), "
              f"ratio {sb['fid_digit'] / noise_best_none:.2f}.", "",
              f"Super-resolution of {args.inputs} held-out low-res views, {args.n_per} samples each:", "",
              "| SR trained with | s | consistency PSNR dB (area view vs input) | fidelity PSNR dB (vs true 32x32) | "
              "diversity (pixel std) |", "|---|---:|---:|---:|---:|"]
    for sr, s, cons, fid_, div in sr_rows:
        lines.append(f"| aug {sr[3:]} | {s:g} | {cons:.2f} | {fid_:.2f} | {div:.4f} |")
    lines += ["", f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average "
              f"{os.getloadavg()[0]:.1f}. Command: `OMP_NUM_THREADS=1 python benchmarks/cascade.py "
              f"{' '.join(argv if argv is not None else sys.argv[1:])}`"]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    if args.plot:
        _plot(curve, ss_["fid_digit"], args.plot)
    print(text)
    return text


def _plot(curve: dict, single: float, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for (sr, truncated), pts in curve.items():
        s, f = zip(*pts)
        ax.plot(s, f, marker="o", label=f"SR aug {sr[3:]}, {'truncated' if truncated else 'non-truncated'}")
    ax.axhline(single, color="k", ls="--", label="single-stage 32x32")
    ax.set_xlabel("augmentation level s at sampling (VP time)")
    ax.set_ylabel("FID (digit)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
