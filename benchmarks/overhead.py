"""Sampler overhead: wall time per score evaluation relative to a bare forward of the same network.

For every registered sampler, `scoresde.samplers.sample` drives a ScoreModel around
`ss.get_model("mlp", data_shape=(2,))` (3 x 128, the default 2-D network) on a batch of 2048
points on the CPU, one thread, and the ratio

    ratio = sampler wall time / (NFE x bare forward time)

is what each sampler costs per score evaluation, the limit being 1.0 (all the time in the
network). "Bare forward" is the same ScoreModel called on the same (B, 2) input and (B,) time
tensor under `torch.no_grad()` (as `sample` runs), so the score conversion -eps / sigma is on
both sides and the ratio isolates the sampler's own work: its per-step arithmetic, its Python,
the prior draw, the time grid and the final denoising step. The output layer of the MLP is
re-initialised (it starts at zero) so that the score is not identically zero.

Timing on a shared machine is noisy, so each repeat times the bare forward (NFE calls in a
loop) right before the sampler run with the same NFE, and the table reports medians over the
repeats of the per-repeat ratios. Because a few per cent is within that noise, each repeat also
runs the sampler with a free score (a function returning a precomputed tensor): its time per
step is the sampler's own work, and 1 + own / forward is the same ratio estimated from two
stable numbers instead of the difference of two noisy ones.

    .venv/bin/python benchmarks/overhead.py                 # batch 2048, 20 steps, 7 repeats
    .venv/bin/python benchmarks/overhead.py --quick         # tiny (tests)

Writes benchmarks/results/overhead.md.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import scoresde as ss
from scoresde.samplers.core import sample

OUT = Path(__file__).parent / "results"

# (label, sampler, options, steps for a given step budget); ode's NFE is set by its tolerance
CONFIGS = [
    ("ancestral", "ancestral", {}),
    ("ddim", "ddim", {}),
    ("annealed_langevin", "annealed_langevin", {}),
    ("euler_maruyama", "euler_maruyama", {}),
    ("reverse_diffusion", "reverse_diffusion", {}),
    ("pc (rd + langevin)", "pc", {}),
    ("ode (RK45, 1e-3)", "ode", {"rtol": 1e-3, "atol": 1e-3}),
    ("heun", "heun", {}),
    ("dpm_solver", "dpm_solver", {}),
    ("deis", "deis", {}),
    ("torchsde (euler)", "torchsde", {}),
]


def overhead_ratio(sampler_seconds: float, nfe: int, forward_seconds: float) -> float:
    """Sampler wall time per score evaluation over the bare forward time: 1.0 is the limit."""
    if nfe <= 0 or forward_seconds <= 0:
        raise ValueError(f"nfe, forward_seconds: expected positive values, found {nfe}, {forward_seconds}")
    return sampler_seconds / (nfe * forward_seconds)


def summarize(runs: list[tuple]) -> dict:
    """Medians over repeats of (sampler seconds, NFE, bare forward seconds per call[, own seconds per
    step with a free score]) tuples."""
    ratios = [overhead_ratio(s, n, f) for s, n, f, *_ in runs]
    out = {"nfe": runs[0][1], "ms_per_step": 1e3 * statistics.median(r[0] / r[1] for r in runs),
           "forward_ms": 1e3 * statistics.median(r[2] for r in runs), "ratio": statistics.median(ratios),
           "ratio_min": min(ratios), "ratio_max": max(ratios)}
    if all(len(r) > 3 for r in runs):
        out["own_ms"] = 1e3 * statistics.median(r[3] for r in runs)
        out["own_ratio"] = 1.0 + out["own_ms"] / out["forward_ms"]
    return out


def build_model(batch: int, seed: int = 0):
    torch.manual_seed(seed)
    net = ss.get_model("mlp", data_shape=(2,))
    torch.nn.init.normal_(net.out.weight, std=0.3)         # the output layer starts at zero
    sde = ss.VPSDE()
    return ss.ScoreModel(net, sde).eval(), sde


def time_forward(model, x: torch.Tensor, t: torch.Tensor, calls: int) -> float:
    """Seconds per bare forward, `calls` calls in a loop under no_grad."""
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(calls):
            model(x, t)
        return (time.perf_counter() - start) / calls


def free_score(model, batch: int):
    """A score function that returns a precomputed score: the sampler's own work is all that is left."""
    x = torch.randn(batch, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        s0 = model(x, torch.full((batch,), 0.5))
    return lambda x, t: s0


def time_sampler(model, sde, batch: int, name: str, opts: dict, steps: int, seed: int) -> tuple[float, int]:
    """(wall seconds of one `sample` call, its NFE)."""
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    _, info = sample(sde, model, (batch, 2), sampler=name, steps=steps, generator=g, return_info=True, **opts)
    return time.perf_counter() - start, info["nfe"]


def run(batch: int = 2048, steps: int = 20, repeats: int = 7, configs=CONFIGS, progress: bool = True) -> dict:
    model, sde = build_model(batch)
    x = torch.randn(batch, 2, generator=torch.Generator().manual_seed(1))
    t = torch.full((batch,), 0.5)
    free = free_score(model, batch)
    runs: dict[str, list] = {label: [] for label, _, _ in configs}
    for label, name, opts in configs:                       # warm-up (allocator, lazy imports)
        time_sampler(model, sde, batch, name, opts, steps, 0)
    time_forward(model, x, t, 5)
    jobs = [(r, c) for r in range(repeats) for c in configs]
    for r, (label, name, opts) in tqdm(jobs, desc="overhead", dynamic_ncols=True, disable=not progress):
        # alternate the order within each repeat so a slow spell hits both sides alike
        nfe = runs[label][0][1] if runs[label] else None
        if r % 2 == 0 and nfe is not None:
            fwd = time_forward(model, x, t, nfe)
            sec, nfe = time_sampler(model, sde, batch, name, opts, steps, r)
        else:
            sec, nfe = time_sampler(model, sde, batch, name, opts, steps, r)
            fwd = time_forward(model, x, t, nfe)
        own, own_nfe = time_sampler(free, sde, batch, name, opts, steps, r)
        runs[label].append((sec, nfe, fwd, own / own_nfe))
    return {label: summarize(v) for label, v in runs.items()}


def to_markdown(table: dict, batch: int, steps: int, repeats: int) -> str:
    head = (f"MLP 3 x 128 (`ss.get_model(\"mlp\")`), batch {batch}, 2-D, CPU, {torch.get_num_threads()} "
            f"thread(s), torch {torch.__version__}, {platform.machine()}; {steps} steps; median of {repeats} "
            f"interleaved repeats (min-max of the ratio in brackets).")
    lines = [head, "", "| sampler | NFE | ms per step | bare forward ms | ratio | own ms per step (free score) "
             "| 1 + own / forward |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label, r in table.items():
        lines.append(f"| {label} | {r['nfe']} | {r['ms_per_step']:.3f} | {r['forward_ms']:.3f} | "
                     f"{r['ratio']:.3f} [{r['ratio_min']:.3f}-{r['ratio_max']:.3f}] | {r['own_ms']:.3f} | "
                     f"{r['own_ratio']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20, help="steps of each sampler (ode: its tolerance decides)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="batch 256, 20 steps, 1 repeat (for tests)")
    ap.add_argument("--out", default=str(OUT / "overhead.md"), help="markdown file to write ('' for none)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.repeats = 256, 20, 1   # VP's DDPM chain needs >= 20 steps
    torch.set_num_threads(1)
    table = run(args.batch, args.steps, args.repeats, progress=not args.no_progress)
    text = to_markdown(table, args.batch, args.steps, args.repeats)
    print(text, flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("# Sampler overhead per score evaluation\n\n" + text + "\n")
    return text


if __name__ == "__main__":
    main()
