"""Latent against pixel-space diffusion on digits32, side by side in one run (Rombach et al. 2022,
"High-Resolution Image Synthesis with Latent Diffusion Models", arXiv:2112.10752).

    OMP_NUM_THREADS=1 python benchmarks/latent.py                 # a few CPU minutes
    OMP_NUM_THREADS=1 python benchmarks/latent.py --quick         # seconds: checks the script runs

1. Trains a KL autoencoder (f = 4, c = 4: 1x32x32 images -> 4x8x8 latents) on 1500 digits32 images with
   the engine's `autoencoder` task, and measures its reconstruction PSNR on the 297 held-out images.
2. Measures, with the same score-network config (a DDPM U-Net) in both spaces, the CPU time of one
   training step (forward, backward, Adam) at two batch sizes and of one sampler step (one score
   evaluation, batch 64), alternating the two spaces over `--rounds` rounds (medians). Latent-space
   operations are small (8x8 maps), so fixed per-operation costs weigh more there: the ratio grows
   with the batch.
3. Trains both score models for the same CPU-time budget (steps = budget / measured step cost; the
   actual CPU seconds are reported) and samples each with the same sampler and steps.
4. Scores the decoded latent samples and the pixel samples against the training images with
   `scoresde.metrics.run_metrics` when that module exists, else with a Frechet distance between Gaussian
   fits of 8x8 average-pooled pixels (64 dimensions: the digits' native resolution), clearly labelled:
   it is NOT an FID (no feature network). Its floors: held-out data, and the autoencoder's
   reconstructions of held-out data.

CPU time (time.process_time) rather than wall time is used throughout: the machines here are shared,
so wall time measures the neighbours. Writes benchmarks/results/latent.md and latent_samples.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

import scoresde as ss
from scoresde.data import Dataset

HERE = os.path.dirname(os.path.abspath(__file__))
VAE = {"ch": 16, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "z_channels": 4, "mid_attn": True, "num_groups": 8}
UNET = {"name": "ddpm_unet", "ch": 16, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [],
        "dropout": 0.0, "num_groups": 8}
TRAIN = {"lr": 1e-3, "warmup": 20, "ema_decay": 0.99, "log_every": 50, "ckpt_every": 10 ** 9, "progress": False}


# --- the metric ----------------------------------------------------------------------------------------------
def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussian fits of feature sets a (N, F) and b (M, F):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))   (Dowson & Landau 1982; FID's formula)."""
    from scipy import linalg
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


def pooled(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.avg_pool2d(x.float().clamp(-1, 1), 4).flatten(1).double().numpy()   # (N, 64)


def metric(name: str, samples: torch.Tensor, reference: torch.Tensor) -> tuple[float, str]:
    """(value, label) of the digits metric: scoresde.metrics if importable, else the pooled-pixel FD."""
    try:
        from scoresde.metrics import run_metrics
    except ImportError:
        return frechet(pooled(samples), pooled(reference)), "FD of 8x8 avg-pooled pixels (not FID)"
    out = run_metrics("digits32", samples.clamp(-1, 1))
    key = next((k for k in ("fid", "FID", "fd") if k in out), next(iter(out)))
    return float(out[key]), f"scoresde.metrics {key} (digits features)"


# --- timing --------------------------------------------------------------------------------------------------
def score_model(shape):
    net = ss.get_model(UNET["name"], data_shape=shape, **{k: v for k, v in UNET.items() if k != "name"})
    return ss.ScoreModel(net, ss.VPSDE())


def step_costs(shapes: dict[str, tuple], batch: int, reps: int, rounds: int) -> dict[str, dict[str, float]]:
    """Median CPU ms of one training step (batch `batch`) and one score evaluation (batch 64) per space,
    the spaces alternating within each round."""
    torch.manual_seed(0)
    models = {k: score_model(s) for k, s in shapes.items()}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}
    g = torch.Generator().manual_seed(0)
    out = {k: {"train": [], "eval": []} for k in shapes}
    for _ in range(rounds):
        for k, m in models.items():
            x = torch.randn(batch, *shapes[k], generator=g)
            for i in range(reps + 1):                      # the first step warms up
                t0 = time.process_time()
                loss = ss.dsm_loss(m, m.sde, x, generator=g)
                opts[k].zero_grad()
                loss.backward()
                opts[k].step()
                if i:
                    out[k]["train"].append(time.process_time() - t0)
            xe = torch.randn(64, *shapes[k], generator=g)
            with torch.no_grad():
                for i in range(reps + 1):
                    t0 = time.process_time()
                    m(xe, torch.full((64,), 0.5))
                    if i:
                        out[k]["eval"].append(time.process_time() - t0)
    return {k: {s: 1000 * statistics.median(v) for s, v in d.items()} for k, d in out.items()}


def cpu(fn):
    t0 = time.process_time()
    r = fn()
    return r, time.process_time() - t0


# --- the benchmark -------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=90.0, help="CPU seconds of score-model training per space")
    ap.add_argument("--ae-steps", type=int, default=300, help="autoencoder training steps")
    ap.add_argument("--batch", type=int, default=32, help="batch size of both score models")
    ap.add_argument("--big-batch", type=int, default=128, help="second batch size for the step timing")
    ap.add_argument("--n", type=int, default=256, help="samples per model for the metric (>= 64)")
    ap.add_argument("--sampler", default="dpm_solver")
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (alternating the spaces)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, numbers meaningless")
    a = ap.parse_args()
    if a.quick:
        a.budget, a.ae_steps, a.n, a.sample_steps, a.rounds, a.big_batch = 2.0, 5, 64, 3, 1, 64
    if a.n < 64:
        ap.error(f"--n: expected at least 64 samples (the grid shows 64), found {a.n}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    os.makedirs(a.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="latent_bench_")
    full = ss.load_dataset("digits32")
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(0))
    train_ds = Dataset(full.x[perm[:1500]], "digits32", labels=full.labels[perm[:1500]], kind="images",
                       classes=full.classes)
    held_out = full.x[perm[1500:]]
    log = lambda *s: print(*s, flush=True)  # noqa: E731

    # 1. the autoencoder
    ae_cfg = {"task": "autoencoder", "vae": VAE, "train": {"steps": a.ae_steps, "batch_size": 32, "log_every": 50,
              "ckpt_every": 10 ** 9, "progress": False}, "sample": {"n": 32}, "eval": {"n": 256}, "device": "cpu"}
    ae_run, ae_cpu = cpu(lambda: ss.train(ae_cfg, data=train_ds, out=os.path.join(tmp, "ae")))
    ae = ss.load_autoencoder(ae_run.run_dir)
    rec = ae.decode_all(ae.encode_all(held_out)[0])
    mse = (rec - held_out).square().mean().item()
    psnr = 10 * math.log10(4.0 / mse)
    log(f"autoencoder: {a.ae_steps} steps, {ae_cpu:.1f} CPU s, held-out PSNR {psnr:.2f} dB, "
        f"scale factor {ae.scale_factor:.4f}")

    # 2. per-step costs, same network config in both spaces
    shapes = {"pixel": tuple(full.shape), "latent": ae.latent_shape(full.shape)}
    costs = step_costs(shapes, a.batch, reps=3 if a.quick else 6, rounds=a.rounds)
    big = step_costs(shapes, a.big_batch, reps=2 if a.quick else 3, rounds=a.rounds)
    _, dec_cpu = cpu(lambda: ae.decode_all(torch.randn(64, *shapes["latent"])))
    log(f"step costs (CPU ms): batch {a.batch} {json.dumps(costs)}, batch {a.big_batch} {json.dumps(big)}; "
        f"decode 64: {1000 * dec_cpu:.1f} ms")

    # 3. equal CPU budget
    results = {}
    for space in ("pixel", "latent"):
        steps = max(1, int(a.budget * 1000 / costs[space]["train"]))
        cfg = {"data": {"name": "digits32"}, "model": {k: v for k, v in UNET.items()},
               "train": {**TRAIN, "steps": steps, "batch_size": a.batch, "warmup": min(100, steps)},
               "sample": {"n": 1, "steps": 1, "sampler": "euler_maruyama"}, "device": "cpu", "seed": 0}
        if space == "latent":
            cfg["autoencoder"] = ae_run.run_dir
        r, t = cpu(lambda: ss.train(cfg, data=train_ds, out=os.path.join(tmp, space)))
        g = torch.Generator().manual_seed(1)
        x, ts = cpu(lambda: r.model.sde.sample(r.model, a.n, sampler=a.sampler, steps=a.sample_steps, generator=g)
                    if space == "pixel" else
                    ae.decode_all(r.model.sde.sample(r.model, a.n, sampler=a.sampler, steps=a.sample_steps,
                                                     generator=g)))
        value, label = metric(space, x, train_ds.x)
        results[space] = {"steps": steps, "train_cpu": t, "sample_cpu": ts, "metric": value, "samples": x,
                          "loss": r.loss}
        log(f"{space}: {steps} steps in {t:.1f} CPU s (final loss {r.loss:.4f}), {a.n} samples in {ts:.1f} CPU s, "
            f"{label} {value:.4f}")
    floor_data, _ = metric("data", held_out, train_ds.x)
    floor_rec, _ = metric("rec", rec, train_ds.x)

    # 4. the table
    P, L = results["pixel"], results["latent"]
    ct, cl = costs["pixel"], costs["latent"]
    lines = [
        f"# Latent vs pixel-space diffusion on digits32 ({'--quick, meaningless' if a.quick else 'CPU, 1 thread'})",
        "",
        f"Autoencoder: KL-VAE f = 4, c = 4 ({sum(p.numel() for p in ae.vae.parameters()):,} parameters), "
        f"{a.ae_steps} steps x 32 images, {ae_cpu:.0f} CPU s; held-out reconstruction PSNR **{psnr:.2f} dB**; "
        f"latent scale factor {ae.scale_factor:.4f}.",
        f"Score network in both spaces: `{json.dumps(UNET)}`; VP SDE; batch {a.batch}; Adam {TRAIN['lr']}, "
        f"EMA {TRAIN['ema_decay']}. Samples: {a.n} with `{a.sampler}`, {a.sample_steps} steps.",
        f"Metric: {label}, against the 1500 training images (lower is better).",
        "",
        "| | pixel 1x32x32 | latent 4x8x8 | pixel / latent |",
        "|---|---:|---:|---:|",
        f"| train step, batch {a.batch}, CPU ms (median) | {ct['train']:.1f} | {cl['train']:.1f} | "
        f"**{ct['train'] / cl['train']:.1f}x** |",
        f"| train step, batch {a.big_batch}, CPU ms (median) | {big['pixel']['train']:.1f} | "
        f"{big['latent']['train']:.1f} | **{big['pixel']['train'] / big['latent']['train']:.1f}x** |",
        f"| score evaluation, batch 64, CPU ms | {ct['eval']:.1f} | {cl['eval']:.1f} | "
        f"**{ct['eval'] / cl['eval']:.1f}x** |",
        f"| decode 64 latents, CPU ms | - | {1000 * dec_cpu:.1f} | |",
        f"| training budget: steps | {P['steps']} | {L['steps']} | |",
        f"| training budget: CPU s (actual) | {P['train_cpu']:.1f} | {L['train_cpu']:.1f} | "
        f"{P['train_cpu'] / L['train_cpu']:.2f} |",
        f"| sampling {a.n}, CPU s | {P['sample_cpu']:.1f} | {L['sample_cpu']:.1f} | "
        f"{P['sample_cpu'] / L['sample_cpu']:.1f}x |",
        f"| metric of samples | {P['metric']:.4f} | {L['metric']:.4f} | latent / pixel = "
        f"**{L['metric'] / P['metric']:.2f}** |",
        f"| metric floors: held-out data / AE reconstructions | {floor_data:.4f} | {floor_rec:.4f} | |",
        "",
        f"Goals (issue 17): latent train step >= 8x cheaper: batch {a.batch} "
        f"{'met' if ct['train'] / cl['train'] >= 8 else 'NOT met'} ({ct['train'] / cl['train']:.1f}x), batch "
        f"{a.big_batch} {'met' if big['pixel']['train'] / big['latent']['train'] >= 8 else 'NOT met'} "
        f"({big['pixel']['train'] / big['latent']['train']:.1f}x); latent metric within 1.5x of the pixel model's at equal training "
        f"time: {'met' if L['metric'] <= 1.5 * P['metric'] else 'NOT met'} ({L['metric'] / P['metric']:.2f}x). "
        f"The autoencoder's own training ({ae_cpu:.0f} CPU s) is not in the budget: it is paid once per data set.",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores. Command: `OMP_NUM_THREADS=1 python benchmarks/latent.py "
        + " ".join(sys.argv[1:]) + "`",
    ]
    md = "\n".join(lines) + "\n"
    print("\n" + md)
    suffix = "_quick" if a.quick else ""
    with open(os.path.join(a.out, f"latent{suffix}.md"), "w") as f:
        f.write(md)
    from scoresde.plotting import _figure, _save
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    for ax, space in zip(axes, ("latent", "pixel")):
        x = ((results[space]["samples"][:64].clamp(-1, 1) + 1) / 2)[:, 0]
        x = torch.nn.functional.pad(x, (1, 1, 1, 1), value=1.0)                  # white 1-pixel borders
        grid = x.reshape(8, 8, 34, 34).permute(0, 2, 1, 3).reshape(272, 272).numpy()
        ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
        r = results[space]
        ax.set_title(f"{space}: {r['steps']} steps, {r['train_cpu']:.0f} CPU s\nmetric {r['metric']:.3f}")
    fig.suptitle(f"digits32 samples at an equal training budget ({a.sampler}, {a.sample_steps} steps)")
    _save(fig, os.path.join(a.out, f"latent_samples{suffix}.png"))
    import shutil
    shutil.copyfile(os.path.join(ae_run.run_dir, "samples.png"), os.path.join(a.out, f"latent_reconstructions{suffix}.png"))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
