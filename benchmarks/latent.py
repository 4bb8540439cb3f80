"""Latent against pixel-space diffusion on digits32, side by side in one run (Rombach et al. 2022,
"High-Resolution Image Synthesis with Latent Diffusion Models", arXiv:2112.10752).

    OMP_NUM_THREADS=1 python benchmarks/latent.py --budget 300    # about 20 CPU minutes
    OMP_NUM_THREADS=1 python benchmarks/latent.py --quick         # a minute: checks the script runs

Data: digits32 (the 8x8 digits upsampled bilinearly to 32x32) split as the digits classifier was trained
(`scoresde.metrics.digits_split`): the first 359 images held out, the other 1438 for training.

1. Trains a KL autoencoder (f = 4, c = 4: 1x32x32 images -> 4x8x8 latents) on the 1438 training images
   with the engine's `autoencoder` task, and measures its reconstruction PSNR on the 359 held-out images.
2. Measures, with the same score-network config (a DDPM U-Net) in both spaces, the CPU time of one
   training step as the engine takes it (loss, backward, gradient clipping, the engine's Adam, EMA) at
   batch 1 (the fixed cost of a step), `--batch` and `--big-batch`, and of one score evaluation
   (batch 64), alternating the two spaces over `--rounds` rounds (medians).
3. Trains both score models for the same CPU-time budget of this process (half the steps the timed
   step cost allows, then, resuming exactly, as many as the measured cost leaves; the actual CPU seconds
   are reported) and samples each with the same sampler and steps.
4. Scores the samples with the digits FID and KID (`scoresde.metrics`: the shipped 8x8 digits classifier's
   64 features, the part Inception-v3 plays for FID, Heusel et al. 2017, arXiv:1706.08500; KID: Binkowski
   et al. 2018, arXiv:1801.01401) against the 359 held-out 8x8 digits. Both models' 32x32 samples are
   brought to 8x8 by the same map `to_digits8`: the least-squares inverse of digits32's bilinear
   upsampling (exact on digits32: to_digits8(digits32) = digits). 4x4 average pooling is not that
   inverse: on digits32 it returns the digits blurred by (1/8, 3/4, 1/8) along each axis, which the
   classifier reads as different images (the table gives that FID). Floors at the same N: training
   images, and the autoencoder's reconstructions of them, against the held-out images.

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

import torch

import scoresde as ss
from scoresde.data.datasets import Dataset

HERE = os.path.dirname(os.path.abspath(__file__))
VAE = {"ch": 16, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "z_channels": 4, "mid_attn": True, "num_groups": 8}
UNET = {"name": "ddpm_unet", "ch": 16, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [],
        "dropout": 0.0, "num_groups": 8}
TRAIN = {"lr": 1e-3, "warmup": 20, "ema_decay": 0.99, "log_every": 50, "ckpt_every": 10 ** 9, "progress": False}
ADAM = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "adam_eps": 1e-8, "weight_decay": 0.0}   # config defaults


# --- the metric ----------------------------------------------------------------------------------------------
def _linear_up(n: int, factor: int) -> torch.Tensor:
    """(factor n, n): the matrix of 1-D linear upsampling (align_corners=False), as F.interpolate does it."""
    eye = torch.eye(n, dtype=torch.float64)[:, None, :]                                  # n signals e_j
    return torch.nn.functional.interpolate(eye, scale_factor=factor, mode="linear", align_corners=False)[:, 0].T


_U = _linear_up(8, 4)                                                                  # (32, 8)
_D = torch.linalg.pinv(_U)                                                             # (8, 32): D U = I


def to_digits8(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, 32, 32) -> (N, 1, 8, 8): x8 = D x32 D^T with D = pinv(U), the least-squares inverse of the
    separable bilinear x4 upsampling that made digits32 (x32 = U x8 U^T)."""
    return (_D @ x.double() @ _D.T).float()


def pool8(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(x, 4)


class DigitsMetric:
    """Digits FID and KID of 8x8 images against the held-out digits (their features computed once)."""

    def __init__(self, reference: torch.Tensor):
        from scoresde.metrics import Reference, extract_features, get_feature_net
        self.net = get_feature_net("digits")
        self.ref = Reference.from_features(extract_features(self.net, reference, progress=False)[0])

    def __call__(self, x8: torch.Tensor) -> dict[str, float]:
        from scoresde.metrics import evaluate
        if not torch.isfinite(x8).all():
            return {"fid": float("inf"), "kid": float("inf"), "kid_std": 0.0}
        return evaluate(x8.clamp(-1, 1), self.ref, features=self.net, metrics=("fid", "kid"), progress=False,
                        kid_subsets=100, kid_subset_size=1000, seed=0)


# --- timing --------------------------------------------------------------------------------------------------
def score_model(shape):
    net = ss.get_model(UNET["name"], data_shape=shape, **{k: v for k, v in UNET.items() if k != "name"})
    return ss.ScoreModel(net, ss.VPSDE())


def step_costs(shapes: dict[str, tuple], batch: int, reps: int, rounds: int) -> dict[str, dict[str, float]]:
    """Median CPU ms of one training step as the engine takes it (batch `batch`: DSM loss, backward, gradient
    clipping at 1, the engine's Adam, EMA update, one host sync) and of one score evaluation (batch 64) per
    space, the spaces alternating within each round."""
    from scoresde.models.ema import EMA
    from scoresde.training.engine import make_adam
    torch.manual_seed(0)
    models = {k: score_model(s) for k, s in shapes.items()}
    opts = {k: make_adam(m.parameters(), ADAM) for k, m in models.items()}
    emas = {k: EMA(m, TRAIN["ema_decay"]) for k, m in models.items()}
    g = torch.Generator().manual_seed(0)
    out = {k: {"train": [], "eval": []} for k in shapes}
    for _ in range(rounds):
        for k, m in models.items():
            x = torch.randn(batch, *shapes[k], generator=g)
            params = list(m.parameters())
            for i in range(reps + 1):                      # the first step warms up
                t0 = time.process_time()
                loss = ss.dsm_loss(m, m.sde, x, generator=g)
                opts[k].zero_grad(set_to_none=True)
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(params, 1.0)
                torch.stack([loss.detach(), gnorm.detach()]).tolist()
                opts[k].step()
                emas[k].update(m)
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


LEVELS = [(16, 32, 8), (32, 16, 4), (32, 8, 2)]      # (channels, pixel map, latent map) of the U-Net's levels


def conv_costs(batch: int, reps: int) -> list[tuple[int, int, int, float, float]]:
    """Median CPU ms of one 3x3 convolution, forward + backward, at each U-Net level's width and map size in
    both spaces (pixel maps 32/16/8, latent 8/4/2): the kernel the step is made of, without the network."""
    out = []
    for c, hp, hl in LEVELS:
        ms = []
        for h in (hp, hl):
            x = torch.randn(batch, c, h, h, requires_grad=True)
            w = torch.randn(c, c, 3, 3, requires_grad=True)
            b = torch.zeros(c, requires_grad=True)
            gy, ts = torch.randn(batch, c, h, h), []
            for i in range(reps + 2):
                t0 = time.process_time()
                torch.nn.functional.conv2d(x, w, b, padding=1).backward(gy)
                if i >= 2:
                    ts.append(time.process_time() - t0)
            ms.append(1000 * statistics.median(ts))
        out.append((c, hp, hl, *ms))
    return out


def cpu(fn):
    t0 = time.process_time()
    r = fn()
    return r, time.process_time() - t0


def train_for(cfg: dict, budget: float, step_ms: float, data, out: str):
    """Train `cfg` for `budget` CPU seconds of this process (setup, encoding, checkpoints included): half the
    steps the timed step cost allows, then, resuming exactly, the steps the cost measured so far leaves
    (twice at most: the timed cost and the engine's can differ by tens of percent on a loaded machine)."""
    steps = max(1, int(0.5 * budget * 1000 / step_ms))
    cfg["train"]["steps"] = steps
    r, t = cpu(lambda: ss.train(cfg, data=data, out=out))
    for _ in range(2):
        more = int((budget - t) / (t / steps))
        if more < max(1, steps // 100):
            break
        steps += more
        r, dt = cpu(lambda: ss.train({"train": {"steps": steps}}, data=data, out=out, resume=True))
        t += dt
    return r, t, steps


# --- the benchmark -------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=300.0, help="CPU seconds of score-model training per space")
    ap.add_argument("--ae-steps", type=int, default=300, help="autoencoder training steps")
    ap.add_argument("--batch", type=int, default=32, help="batch size of both score models")
    ap.add_argument("--big-batch", type=int, default=128, help="second batch size for the step timing")
    ap.add_argument("--n", type=int, default=256, help="samples per model for the metrics (> 64: FID's 64 features)")
    ap.add_argument("--sampler", default="dpm_solver")
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (alternating the spaces)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, numbers meaningless")
    a = ap.parse_args()
    if a.quick:
        a.budget, a.ae_steps, a.n, a.sample_steps, a.rounds, a.big_batch = 2.0, 5, 80, 3, 1, 64
    if a.n <= 64:
        ap.error(f"--n: expected more than 64 samples (FID in 64 features; the grid shows 64), found {a.n}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    os.makedirs(a.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="latent_bench_")
    from scoresde.metrics import digits_split
    d_train, _, d_test, _ = digits_split()                         # 8x8 digits: 1438 train | 359 held out
    full = ss.load_dataset("digits32")                              # the same images and order, 32x32
    n_test = len(d_test)
    train_ds = Dataset(full.x[n_test:], "digits32", labels=full.labels[n_test:], kind="images", classes=full.classes)
    held_out = full.x[:n_test]
    err = (to_digits8(full.x) - torch.cat([d_test, d_train])).abs().max().item()
    assert err < 1e-5, f"to_digits8 is not the inverse of digits32's upsampling: max error {err}"
    log = lambda *s: print(*s, flush=True)  # noqa: E731
    metric = DigitsMetric(d_test)
    pick = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(0))[: a.n]

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
    floors = {"train images": metric(d_train[pick]),
              "AE reconstructions of them": metric(to_digits8(ae.decode_all(ae.encode_all(train_ds.x[pick])[0]))),
              "train images, 4x4 avg-pooled digits32": metric(pool8(train_ds.x[pick]))}
    log("floors: " + json.dumps(floors))

    # 2. per-step costs, same network config in both spaces
    shapes = {"pixel": tuple(full.shape), "latent": ae.latent_shape(full.shape)}
    one = step_costs(shapes, 1, reps=3 if a.quick else 8, rounds=a.rounds)
    costs = step_costs(shapes, a.batch, reps=3 if a.quick else 6, rounds=a.rounds)
    big = step_costs(shapes, a.big_batch, reps=2 if a.quick else 3, rounds=a.rounds)
    convs = {b: conv_costs(b, reps=3 if a.quick else 15) for b in (a.batch, a.big_batch)}
    _, dec_cpu = cpu(lambda: ae.decode_all(torch.randn(64, *shapes["latent"])))
    log(f"step costs (CPU ms): batch 1 {json.dumps(one)}, batch {a.batch} {json.dumps(costs)}, batch {a.big_batch} "
        f"{json.dumps(big)}; decode 64: {1000 * dec_cpu:.1f} ms")

    # 3. equal CPU budget
    results = {}
    for space in ("pixel", "latent"):
        cfg = {"data": {"name": "digits32"}, "model": {k: v for k, v in UNET.items()},
               "train": {**TRAIN, "batch_size": a.batch, "warmup": 100},
               "sample": {"n": 1, "steps": 1, "sampler": "euler_maruyama"}, "device": "cpu", "seed": 0}
        if space == "latent":
            cfg["autoencoder"] = ae_run.run_dir
        r, t, steps = train_for(cfg, a.budget, costs[space]["train"], train_ds, os.path.join(tmp, space))
        g = torch.Generator().manual_seed(1)
        x, ts = cpu(lambda: r.model.sde.sample(r.model, a.n, sampler=a.sampler, steps=a.sample_steps, generator=g)
                    if space == "pixel" else
                    ae.decode_all(r.model.sde.sample(r.model, a.n, sampler=a.sampler, steps=a.sample_steps,
                                                     generator=g)))
        m = metric(to_digits8(x))
        results[space] = {"steps": steps, "train_cpu": t, "sample_cpu": ts, "samples": x, "loss": r.loss, **m}
        log(f"{space}: {steps} steps in {t:.1f} CPU s (final loss {r.loss:.4f}), {a.n} samples in {ts:.1f} CPU s, "
            f"digits FID {m['fid']:.3f}, KID {m['kid']:.4f}")

    # 4. the table
    P, L = results["pixel"], results["latent"]
    ct, cl = costs["pixel"], costs["latent"]
    r32, r128 = ct["train"] / cl["train"], big["pixel"]["train"] / big["latent"]["train"]
    kid = lambda d: f"{d['kid']:.3f} ± {d['kid_std']:.3f}"  # noqa: E731
    lines = [
        f"# Latent vs pixel-space diffusion on digits32 ({'--quick, meaningless' if a.quick else 'CPU, 1 thread'})",
        "",
        f"Autoencoder: KL-VAE f = 4, c = 4 ({sum(p.numel() for p in ae.vae.parameters()):,} parameters), "
        f"{a.ae_steps} steps x 32 images, {ae_cpu:.0f} CPU s; held-out reconstruction PSNR **{psnr:.2f} dB**; "
        f"latent scale factor {ae.scale_factor:.4f}.",
        f"Score network in both spaces: `{json.dumps(UNET)}`; VP SDE; batch {a.batch}; Adam {TRAIN['lr']}, "
        f"EMA {TRAIN['ema_decay']}. Samples: {a.n} with `{a.sampler}`, {a.sample_steps} steps.",
        f"Data: digits32 split as `scoresde.metrics.digits_split` ({len(train_ds)} training images, {n_test} held "
        "out). Metrics: digits FID and KID (mean ± std over 100 subsets) in the shipped digits classifier's "
        f"64 features, of {a.n} images against the {n_test} held-out 8x8 digits (lower is better); 32x32 images "
        "are brought to 8x8 by `to_digits8`, the least-squares inverse of digits32's bilinear upsampling "
        "(exact on the data), the same map for both models. A step is the engine's: loss, backward, "
        "clipping, Adam (`scoresde.training.engine.make_adam`), EMA.",
        "",
        "| | pixel 1x32x32 | latent 4x8x8 | pixel / latent |",
        "|---|---:|---:|---:|",
        f"| train step, batch 1 (fixed cost), CPU ms (median) | {one['pixel']['train']:.1f} | "
        f"{one['latent']['train']:.1f} | {one['pixel']['train'] / one['latent']['train']:.1f}x |",
        f"| train step, batch {a.batch}, CPU ms (median) | {ct['train']:.1f} | {cl['train']:.1f} | **{r32:.1f}x** |",
        f"| train step, batch {a.big_batch}, CPU ms (median) | {big['pixel']['train']:.1f} | "
        f"{big['latent']['train']:.1f} | **{r128:.1f}x** |",
        f"| score evaluation, batch 64, CPU ms | {ct['eval']:.1f} | {cl['eval']:.1f} | "
        f"**{ct['eval'] / cl['eval']:.1f}x** |",
        f"| decode 64 latents, CPU ms | - | {1000 * dec_cpu:.1f} | |",
        f"| training budget: steps | {P['steps']} | {L['steps']} | |",
        f"| training budget: CPU s (actual) | {P['train_cpu']:.1f} | {L['train_cpu']:.1f} | "
        f"{P['train_cpu'] / L['train_cpu']:.2f} |",
        f"| sampling {a.n}, CPU s | {P['sample_cpu']:.1f} | {L['sample_cpu']:.1f} | "
        f"{P['sample_cpu'] / L['sample_cpu']:.1f}x |",
        f"| **digits FID** of samples | {P['fid']:.2f} | {L['fid']:.2f} | latent / pixel = **{L['fid'] / P['fid']:.2f}** |",
        f"| digits KID of samples | {kid(P)} | {kid(L)} | |",
        "",
        "Why the ratio grows with the batch: one 3x3 convolution (forward + backward, CPU ms, median), the "
        "kernel of every step, at each U-Net level's width and map size. At small maps its cost is mostly per "
        "call, not per FLOP (16x fewer FLOPs per level in latent space):",
        "",
        "| level: channels, pixel map -> latent map | " + " | ".join(
            f"batch {b}: pixel ms | latent ms | ratio" for b in convs) + " |",
        "|---|" + "---:|---:|---:|" * len(convs),
        *[f"| {c} ch, {hp}x{hp} -> {hl}x{hl} | " + " | ".join(
            f"{convs[b][i][3]:.2f} | {convs[b][i][4]:.2f} | {convs[b][i][3] / convs[b][i][4]:.1f}x" for b in convs)
          + " |" for i, (c, hp, hl) in enumerate(LEVELS)],
        "",
        f"Floors ({a.n} images against the held-out digits, the same N as the samples):",
        "",
        "| reference images | digits FID | KID |",
        "|---|---:|---:|",
        *[f"| {k} | {v['fid']:.2f} | {kid(v)} |" for k, v in floors.items()],
        "",
        "The last row shows why 4x4 average pooling is not used to bring 32x32 images to 8x8: on the data "
        "itself it costs that much FID (a blur the classifier sees).",
        "",
        f"Goals (issue 17): latent train step >= 8x cheaper: batch {a.batch} {'met' if r32 >= 8 else 'NOT met'} "
        f"({r32:.1f}x), batch {a.big_batch} {'met' if r128 >= 8 else 'NOT met'} ({r128:.1f}x); latent FID within "
        f"1.5x of the pixel model's at equal training time: {'met' if L['fid'] <= 1.5 * P['fid'] else 'NOT met'} "
        f"({L['fid'] / P['fid']:.2f}x). The autoencoder's own training ({ae_cpu:.0f} CPU s) is not in the budget: it "
        "is paid once per data set.",
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
    from scoresde.runs.plots import _figure, _save
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    for ax, space in zip(axes, ("latent", "pixel")):
        x = ((results[space]["samples"][:64].clamp(-1, 1) + 1) / 2)[:, 0]
        x = torch.nn.functional.pad(x, (1, 1, 1, 1), value=1.0)                  # white 1-pixel borders
        grid = x.reshape(8, 8, 34, 34).permute(0, 2, 1, 3).reshape(272, 272).numpy()
        ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
        r = results[space]
        ax.set_title(f"{space}: {r['steps']} steps, {r['train_cpu']:.0f} CPU s\ndigits FID {r['fid']:.2f}")
    fig.suptitle(f"digits32 samples at an equal training budget ({a.sampler}, {a.sample_steps} steps)")
    _save(fig, os.path.join(a.out, f"latent_samples{suffix}.png"))
    import shutil
    shutil.copyfile(os.path.join(ae_run.run_dir, "samples.png"), os.path.join(a.out, f"latent_reconstructions{suffix}.png"))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
