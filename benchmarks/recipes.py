"""Training recipes at an equal CPU budget: DSM on VP against EDM and flow matching (uniform and logit-normal t).

    OMP_NUM_THREADS=1 python benchmarks/recipes.py --problem digits --recipes edm --json-dir J   # one recipe
    OMP_NUM_THREADS=1 python benchmarks/recipes.py --problem four --json-dir J                   # all four
    python benchmarks/recipes.py --combine J/*.json          # the tables (writes benchmarks/results/recipes.md)
    OMP_NUM_THREADS=1 python benchmarks/recipes.py --quick   # a minute: the script runs

One process per (problem, recipe) can run side by side: each measures its own process CPU time.

Recipes (`train.recipe`, scoresde.training.recipes), each with its default SDE and preconditioner:
    dsm (VP)            today's default: eps-prediction, ||sigma s + z||^2, t ~ U(1e-5, 1), the VP SDE
    edm                 EDM's preconditioner, lambda(s) = (s^2 + s_d^2) / (s s_d)^2, ln s ~ N(-1.2, 1.2^2), EDM's path
    flow (uniform)      velocity u = z - x0, t ~ U, the flow path x_t = (1 - t) x0 + t z
    flow (logit-normal) the same with logit t ~ N(0, 1) (SD3)

Problems, with the same network for every recipe:
- digits: scikit-learn's 8x8 digits (configs/digits.toml's U-Net, 0.65M parameters), trained on the 1438 images
  of `digits_split` and scored with the digits FID (the shipped digits classifier's 64 features) of `--n`
  samples against the 359 held-out images, and bits/dim of the held-out images (dequantised, 17 levels) from
  the exact likelihood (probability-flow ODE, Hutchinson trace).
- the two 2-D mixtures of benchmarks/fast_samplers.py (four modes of std 0.1; six sharp modes of std 0.01-0.03),
  the default MLP, scored with fast_samplers' metric (TV of the mode weights + weighted KL of the fitted modes),
  and the negative log-likelihood of held-out points (exact divergence), beside the true mixture's.

Every recipe trains for the same CPU-time budget of this process (time.process_time, setup and checkpoints
included): half the steps a timed probe allows, then, resuming exactly, as many as the cost measured so far
leaves (benchmarks/latent.py's scheme); the steps and actual CPU seconds are reported. Samples are drawn with
each of `SAMPLERS` at 10 and 35 score evaluations (the same noise, the final time at the noise level
sigma / alpha = 0.002 for every path), and the best is reported.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import torch

import scoresde as ss
from scoresde.data.datasets import Dataset
from scoresde.evaluation.likelihood import dequantize, log_likelihood
from scoresde.metrics import digits_split
from scoresde.samplers.core import sampler_info
from scoresde.sde.analytic import four_mode_mixture

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import OUT, DigitsFID, metric, sharp_mixture, sigma_min_eps  # noqa: E402

RECIPES = {   # key -> (label, [train] keys)
    "dsm": ("dsm (VP)", {"recipe": "dsm"}),
    "edm": ("edm", {"recipe": "edm"}),
    "flow": ("flow (uniform)", {"recipe": "flow", "t_dist": "uniform"}),
    "flow_logit": ("flow (logit-normal)", {"recipe": "flow", "t_dist": "logit_normal"}),
}
SAMPLERS = {"heun": {}, "dpm_solver 2": {"order": 2}, "unipc": {}}
NFES = (10, 35)
FLOW_NFES = (5, 10, 20)
FLOW_SAMPLERS = {"ddim": {}, "heun": {}, "dpm_solver": {}, "unipc": {}}
DIGITS = {"data": {"name": "digits"}, "model": {"name": "ddpm_unet", "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
                                                  "attn_resolutions": [], "dropout": 0.0, "num_groups": 8},
          "train": {"batch_size": 64, "lr": 1e-3, "warmup": 200, "ema_decay": 0.999}}
MIXTURE = {"data": {"name": "mixture"}, "train": {"batch_size": 512, "lr": 2e-3, "warmup": 500, "ema_decay": 0.999}}
QUIET = {"log_every": 50, "ckpt_every": 10 ** 9, "progress": False}
DRAW = {"sampler": "euler_maruyama", "steps": 2, "n": 16}       # the engine's final draw: negligible


def cpu(fn):
    t0 = time.process_time()
    r = fn()
    return r, time.process_time() - t0


def config(base: dict, recipe: dict, seed: int) -> dict:
    cfg = {k: dict(v) for k, v in base.items()}
    cfg["train"] = {**cfg["train"], **QUIET, **recipe}
    cfg.update(seed=seed, device="cpu", threads=1, sample=dict(DRAW))
    return cfg


def train_for(cfg: dict, budget: float, data, out: str, probe_steps: int) -> tuple[int, float, float]:
    """Train `cfg` into `out` for `budget` CPU seconds: a timed probe of `probe_steps` steps (its own directory,
    outside the budget) sets the first phase to half the budget, then resumed phases use the cost measured.
    Returns (steps, CPU seconds, probe ms per step)."""
    probe = {**cfg, "train": {**cfg["train"], "steps": probe_steps, "warmup": 1}}
    _, tp = cpu(lambda: ss.train(probe, data=data, out=out + "-probe"))
    step_ms = 1000 * tp / probe_steps
    steps = max(1, int(0.5 * budget * 1000 / step_ms))
    cfg = {**cfg, "train": {**cfg["train"], "steps": steps}}
    _, t = cpu(lambda: ss.train(cfg, data=data, out=out))
    for _ in range(3):
        more = int((budget - t) / (t / steps))
        if more < max(1, steps // 100):
            break
        steps += more
        _, dt = cpu(lambda: ss.train({"train": {"steps": steps}}, data=data, out=out, resume=True))
        t += dt
    return steps, t, step_ms


def sampling_sde(sde):
    """The SDE to sample with: the flow path's T in float32 (main's fast samplers compare the float32 first
    time of their grid with T)."""
    if isinstance(sde, ss.FlowSDE):
        return ss.FlowSDE(t_max=float(torch.tensor(sde.t_max, dtype=torch.float32)), shift=sde.shift, N=sde.N)
    return sde


def draw(sde, model, sampler: str, opts: dict, nfe: int, x_T: torch.Tensor) -> tuple[torch.Tensor, int]:
    steps = sampler_info(sampler).steps_for(nfe, **opts)        # heun: (nfe + 1) // 2
    with torch.no_grad():
        x, info = sde.sample(model, None, sampler=sampler, steps=steps, x_init=x_T * sde.prior_std,
                             eps=sigma_min_eps(sde), return_info=True, **opts)
    return x, info["nfe"]


def best_of(sde, model, score, x_T, nfes=NFES, samplers=SAMPLERS) -> dict[int, tuple[float, str, int]]:
    """{nfe: (best score, sampler, NFE used)} over `samplers` at each budget."""
    out = {}
    for b in nfes:
        rows = []
        for name, opts in samplers.items():
            try:
                x, used = draw(sde, model, name.split()[0], opts, b, x_T)
                rows.append((score(x), name, used))
            except (ValueError, RuntimeError) as e:       # a sampler that does not run on this path
                print(f"  {name} at {b}: {str(e).splitlines()[0][:120]}", flush=True)
        out[b] = min(rows) if rows else (float("inf"), "-", 0)
        print(f"  NFE {b}: " + ", ".join(f"{n} {s:.4g}" for s, n, _ in rows), flush=True)
    return out


def nll(sde, model, x: torch.Tensor, divergence: str, tol: float, seed: int) -> float:
    logp = log_likelihood(sde, model, x, divergence=divergence, rtol=tol, atol=tol, eps=sigma_min_eps(sde),
                             generator=torch.Generator().manual_seed(seed))
    return float(-logp.mean())


# --- digits --------------------------------------------------------------------------------------------------
def digits(a, key: str, tmp: str) -> dict:
    label, rec = RECIPES[key]
    train, _, test, _ = digits_split()
    data = Dataset(train, "digits")
    fid = DigitsFID(test)
    x_T = torch.randn((a.n, 1, 8, 8), generator=torch.Generator().manual_seed(a.seed + 1))
    xq = dequantize(test[: a.nll_n], levels=17, data_range=(-1.0, 1.0), generator=torch.Generator().manual_seed(a.seed + 2))
    floor = fid(train[torch.randperm(len(train), generator=torch.Generator().manual_seed(a.seed))[: a.n]])
    print(f"== digits, {label}", flush=True)
    out = os.path.join(tmp, "digits-" + key)
    steps, t, step_ms = train_for(config(DIGITS, rec, a.seed), a.budget, data, out, a.probe)
    model, sde = ss.load(out)
    sde = sampling_sde(sde)
    print(f"  trained {steps} steps in {t:.0f} CPU s ({step_ms:.0f} ms/step probe); {type(sde).__name__}", flush=True)
    best, t_eval = cpu(lambda: best_of(sde, model, fid, x_T))
    loss, t_nll = cpu(lambda: nll(sde, model, xq, "hutchinson", a.tol, a.seed))
    bpd = float(ss.bits_per_dim(torch.tensor([-loss]), 64, levels=17, data_range=(-1.0, 1.0))[0])
    print(f"  bits/dim {bpd:.3f} ({t_nll:.0f} CPU s); sampling + FID {t_eval:.0f} CPU s", flush=True)
    res = {"problem": "digits", "key": key, "label": label, "steps": steps, "cpu": t, "best": best, "bpd": bpd,
           "floor": floor, "budget": a.budget, "n": a.n, "nll_n": a.nll_n}
    if rec["recipe"] == "flow":
        print(f"  flow model vs NFE ({', '.join(FLOW_SAMPLERS)})", flush=True)
        res["by_nfe"] = {name: best_of(sde, model, fid, x_T, FLOW_NFES, {name: opts})
                         for name, opts in FLOW_SAMPLERS.items()}
    return res


def digits_markdown(results: dict) -> str:
    base, any_ = results.get("dsm"), next(iter(results.values()))
    lines = [f"### digits (8x8): CPU budget {any_['budget']:.0f} s per recipe (the actual training CPU seconds, setup and "
             f"resumed phases included, in the table), FID of {any_['n']} samples "
             f"(floor: {any_['n']} training images vs held-out, {any_['floor']:.2f}); bits/dim of {any_['nll_n']} "
             "held-out images", "",
             "| recipe | steps | train CPU s | FID @10 (sampler, NFE) | FID @35 (sampler, NFE) | vs DSM @10 | vs DSM @35 "
             "| bits/dim |", "|---|---:|---:|---|---|---:|---:|---:|"]
    for key in RECIPES:
        if key not in results:
            continue
        r = results[key]
        best = r["best"]
        cells = [f"{best[str(b)][0]:.2f} ({best[str(b)][1]}, {best[str(b)][2]})" for b in NFES]
        rel = [f"{best[str(b)][0] / base['best'][str(b)][0] - 1:+.0%}" if base else "-" for b in NFES]
        lines.append(f"| {r['label']} | {r['steps']} | {r['cpu']:.0f} | {cells[0]} | {cells[1]} | {rel[0]} | {rel[1]} "
                     f"| {r['bpd']:.3f} |")
    for key in RECIPES:
        if key not in results or "by_nfe" not in results[key]:
            continue
        lines += ["", f"#### the digits flow model ({results[key]['label']}): FID vs NFE", "",
                  "| sampler | " + " | ".join(f"NFE {b}" for b in FLOW_NFES) + " |", "|---|" + "---:|" * len(FLOW_NFES)]
        for name, best in results[key]["by_nfe"].items():
            lines.append(f"| {name} | " + " | ".join(f"{best[str(b)][0]:.2f} ({best[str(b)][2]})" for b in FLOW_NFES)
                         + " |")
    return "\n".join(lines)


# --- the 2-D mixtures ----------------------------------------------------------------------------------------
MIXTURES = {"four": ("four-mode (std 0.1)", lambda: four_mode_mixture(0.1)),
            "sharp": ("sharp (std 0.01-0.03)", sharp_mixture)}


def mixture(a, name: str, key: str, tmp: str) -> dict:
    mname, make = MIXTURES[name]
    label, rec = RECIPES[key]
    mix = make()
    data = mix.sample(50000, generator=torch.Generator().manual_seed(a.seed)).float()
    held = mix.sample(a.mix_nll_n, generator=torch.Generator().manual_seed(a.seed + 3))
    true_nll = float(-mix.log_prob(held).mean())
    x_T = torch.randn((a.mix_n, 2), generator=torch.Generator().manual_seed(a.seed + 1))
    print(f"== {mname}, {label}", flush=True)
    out = os.path.join(tmp, f"{name}-{key}")
    steps, t, _ = train_for(config(MIXTURE, rec, a.seed), a.mix_budget, data, out, a.probe)
    model, sde = ss.load(out)
    sde = sampling_sde(sde)
    print(f"  trained {steps} steps in {t:.0f} CPU s; {type(sde).__name__}", flush=True)
    best = best_of(sde, model, lambda x: metric(mix, x), x_T)
    loss = nll(sde, model, held.float(), "exact", 1e-5, a.seed)
    print(f"  NLL {loss:.4f} nats (true {true_nll:.4f})", flush=True)
    return {"problem": name, "key": key, "label": label, "mixture": mname, "steps": steps, "cpu": t, "best": best,
            "nll": loss, "true_nll": true_nll, "budget": a.mix_budget, "n": a.mix_n, "nll_n": a.mix_nll_n}


def mixture_markdown(results: dict) -> str:
    r0 = next(iter(results.values()))
    lines = [f"### {r0['mixture']}: CPU budget {r0['budget']:.0f} s per recipe (actual in the table), metric of "
             f"{r0['n']} samples; "
             f"NLL of {r0['nll_n']} held-out points (true mixture: {r0['true_nll']:.4f} nats)", "",
             "| recipe | steps | train CPU s | metric @10 (sampler, NFE) | metric @35 (sampler, NFE) | NLL (nats) | "
             "bits/dim |", "|---|---:|---:|---|---|---:|---:|"]
    for key in RECIPES:
        if key in results:
            r = results[key]
            cells = [f"{r['best'][str(b)][0]:.3g} ({r['best'][str(b)][1]}, {r['best'][str(b)][2]})" for b in NFES]
            lines.append(f"| {r['label']} | {r['steps']} | {r['cpu']:.0f} | {cells[0]} | {cells[1]} | {r['nll']:.4f} | "
                         f"{r['nll'] / (2 * math.log(2)):.4f} |")
    return "\n".join(lines)


def combine(files: list[str]) -> str:
    """The tables of the JSON results of separate runs (one per problem and recipe)."""
    by: dict[str, dict] = {}
    for f in files:
        r = json.loads(open(f).read())
        by.setdefault(r["problem"], {})[r["key"]] = r
    parts = [digits_markdown(by.pop("digits"))] if "digits" in by else []
    parts += [mixture_markdown(by[name]) for name in MIXTURES if name in by]
    return "\n\n".join(parts) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problem", choices=["digits", *MIXTURES], default="digits")
    ap.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    ap.add_argument("--budget", type=float, default=120.0, help="CPU seconds of training per digits model")
    ap.add_argument("--mix-budget", type=float, default=30.0, help="CPU seconds of training per mixture model")
    ap.add_argument("--probe", type=int, default=20, help="steps of the timed probe run")
    ap.add_argument("--n", type=int, default=256, help="digits samples per FID (> 64 features)")
    ap.add_argument("--nll-n", type=int, default=64, help="held-out digits for bits/dim")
    ap.add_argument("--tol", type=float, default=1e-3, help="rtol = atol of the digits likelihood ODE")
    ap.add_argument("--mix-n", type=int, default=20000, help="mixture samples per metric")
    ap.add_argument("--mix-nll-n", type=int, default=1000, help="held-out mixture points for the NLL")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-dir", default="", help="write one JSON result per recipe here (for --combine)")
    ap.add_argument("--combine", nargs="+", metavar="JSON", help="only print and write the tables of these results")
    ap.add_argument("--quick", action="store_true", help="tiny budgets: checks that the script runs")
    a = ap.parse_args()
    if a.combine:
        text = combine(a.combine)
        print(text)
        OUT.mkdir(exist_ok=True)
        (OUT / "recipes.md").write_text(text)
        return
    if a.quick:
        a.budget, a.mix_budget, a.probe, a.n, a.nll_n, a.mix_n, a.mix_nll_n = 3.0, 2.0, 3, 80, 8, 2000, 50
    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in a.recipes:
            start = time.process_time()
            r = digits(a, key, tmp) if a.problem == "digits" else mixture(a, a.problem, key, tmp)
            r = json.loads(json.dumps(r))                          # int NFE keys -> str, as --combine reads them
            r["total_cpu"] = time.process_time() - start
            results[key] = r
            if a.json_dir:
                os.makedirs(a.json_dir, exist_ok=True)
                with open(os.path.join(a.json_dir, f"{a.problem}-{key}.json"), "w") as f:
                    json.dump(r, f)
    print("\n" + (digits_markdown(results) if a.problem == "digits" else mixture_markdown(results)), flush=True)


if __name__ == "__main__":
    main()
