"""Text-to-image on the built-in captions (digitpairs): samplers at equal guided evaluations, prompt
accuracy and digits FID, against a class-conditional model of single digits at equal training budget.

    OMP_NUM_THREADS=1 python benchmarks/text2image.py                 # the table (about 1 CPU hour, 1 thread)
    OMP_NUM_THREADS=1 python benchmarks/text2image.py --quick         # about 1 CPU minute: checks the script runs

1. Model: latent diffusion, as the issue's benchmark asks. An autoencoder (`vae` ch 32, ch_mult [1, 2]: f = 2,
   2 latent channels, no middle attention; `--ae-steps` of batch 64) on the training canvases, then on its
   2x8x16 latents a text-conditional DDPM U-Net (configs/digits.toml's widths, ch 32, ch_mult [1, 2]; one
   spatial transformer in the middle block (the default placement), context 64, its tokens carrying their
   place (`context_pos`), the prompt's pooled tokens added to the time embedding (`context_pool`, as Imagen
   does), v-prediction) with the jointly trained transformer text encoder (`model.text_encoder =
   "transformer"`, byte tokens), prompt dropout `train.p_uncond` = 0.1, VP SDE, batch 32, trained by `ss.train`
   for `--steps` on `--size` canvases of the digitpairs train split (pairs of the 1438 training digits;
   seed 0): configs/digitpairs.toml. The training CPU seconds of both (this process, time.process_time) are
   the budget of the baseline. Runs are cached in `--cache` (retrained with --retrain). Samples are decoded
   by the autoencoder before they are scored.
2. Baseline: a class-conditional U-Net of the same widths (num_classes 10, label dropout 0.1) on the
   1438 training 8x8 digits, trained for the same process CPU seconds (steps from its measured step cost).
3. Prompts: `--prompts` captions of the digitpairs test split (pairs of the 359 digits the classifier never
   saw; seed 1), `--per-prompt` samples each, the same prior draws for every sampler. Guidance weight
   (`pick_weight`), from dpm_solver at 20 evaluations: of the `--weights` whose prompt accuracy reaches the
   goal (0.95), the one with the lowest FID (guidance trades diversity for fidelity: a larger w than needed
   only raises FID); when none does, the most accurate (FID breaks ties). The sweep is in the report.
   The baseline (2.) is trained after the table, so a run cut short still has the text model's rows.
4. Evaluations: one evaluation = one call of the guided score, i.e. ONE network call on a doubled batch
   (the conditional and the unconditional halves concatenated, `ss.classifier_free_score`); diffusers'
   schedulers are driven by that same guided score (one call per scheduler step), so every row spends
   exactly its budget of network calls.
   - ours: ddim, dpm_solver (order 2), unipc, deis (default grids) and bns fitted to the guided score
     (`ss.optimize_steps(..., sampler="bns")`, `--calib` calibration draws with their own test prompts);
   - diffusers on the same model through its scheduler API (as benchmarks/fast_samplers.py drives them):
     DDIMScheduler (trailing spacing, no x0 clipping, as ours and SD's config), DPMSolverMultistepScheduler (order 2, use_karras_sigmas: "DPM++ 2M
     Karras"), UniPCMultistepScheduler, EulerDiscreteScheduler (Karras sigmas), all built on the model's
     discrete betas (`trained_betas` = VPSDE's DDPM betas, 1000 steps); at each scheduler step the eps
     prediction is -sigma * score at the continuous time whose noise level the scheduler's own
     sigma (or alphas_cumprod) gives.
5. Metrics: prompt accuracy (`scoresde.metrics.prompt_accuracy`: the shipped digits classifier on each
   half, both digits in place) and the digits FID of both halves' 8x8 glyphs (`pair_glyphs`) against the
   glyphs of 2000 test-split canvases; floors: as many train-split canvases scored the same way. The
   baseline's FID: as many 8x8 samples as the pairs give glyphs (two per canvas; guided, same weight,
   dpm_solver 20, labels 0-9 in turn) against the 359 held-out digits (floor: as many training digits).
   128 canvases give a noisy FID, so the FID goal's ratio is also measured on `--fid-draws` more prior draws
   of both models (seeds 10, 11, ...; dpm_solver 20).

Writes benchmarks/results/text2image.md and text2image_prompts.png (prompts x samples); --quick writes
text2image_quick.md / text2image_quick_prompts.png instead (its numbers mean nothing).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch

import scoresde as ss
from scoresde.data import Dataset
from scoresde.data.digitpairs import digitpairs
from scoresde.metrics import digits_split, pair_glyphs, prompt_accuracy
from scoresde.runs.plots import save_prompt_grid
from scoresde.samplers.core import sampler_info

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import OUT, ROOT, DigitsFID  # noqa: E402

BUDGETS = (4, 5, 8, 10, 20)
UNET = {"name": "ddpm_unet", "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
        "dropout": 0.0, "num_groups": 8}
TEXT = {"text_encoder": "transformer", "context_dim": 64, "context_pool": True, "context_pos": True,
        "parameterization": "v"}
AE = {"task": "autoencoder", "vae": {"ch": 32, "ch_mult": [1, 2], "z_channels": 2, "mid_attn": False},
      "train": {"batch_size": 64, "lr": 1e-3, "progress": False}, "seed": 0, "device": "cpu"}
TRAIN = {"batch_size": 32, "lr": 1e-3, "warmup": 100, "ema_decay": 0.999, "log_every": 100, "p_uncond": 0.1}
OURS = {"ddim": ("ddim", {}), "dpm_solver 2": ("dpm_solver", {"order": 2}), "unipc": ("unipc", {}),
        "deis": ("deis", {})}
PEERS = {"diffusers DDIM (trailing)": ("DDIMScheduler", {"timestep_spacing": "trailing", "clip_sample": False}),
         "diffusers DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"solver_order": 2, "use_karras_sigmas": True}),
         "diffusers UniPC": ("UniPCMultistepScheduler", {}),
         "diffusers Euler (Karras)": ("EulerDiscreteScheduler", {"use_karras_sigmas": True})}


# --- training -----------------------------------------------------------------------------------------------
def _config(model: dict, steps: int, data: str) -> dict:
    return {"data": {"name": data}, "sde": {"name": "vp"}, "model": model, "seed": 0, "device": "cpu",
            "train": {**TRAIN, "steps": steps, "ckpt_every": steps, "progress": False},
            "sample": {"n": 16, "steps": 10, "sampler": "dpm_solver"}, "eval": {"n": 16}}


def _fresh(run: Path) -> None:
    if run.exists():
        shutil.rmtree(run)


def _cached(run: Path, steps: int) -> float | None:
    """The training CPU seconds of a finished cached run of `steps` steps, or None."""
    meta = run / "bench.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        if m.get("steps") == steps:
            return m["cpu_seconds"]
    return None


def _train_cached(run: Path, steps: int, config: dict, data, what: str, retrain: bool) -> float:
    """Train `config` into `run` unless a finished run of `steps` steps is cached; its training CPU seconds."""
    have = None if retrain else _cached(run, steps)
    if have is not None:
        return have
    t0 = time.process_time()
    _fresh(run)
    ss.train(config, data=data, out=str(run))
    cpu = time.process_time() - t0
    (run / "bench.json").write_text(json.dumps({"steps": steps, "cpu_seconds": cpu}))
    print(f"{what}: {steps} steps in {cpu:.0f} CPU s", flush=True)
    return cpu


def train_text(args) -> tuple[Path, float, float]:
    """The autoencoder (f = 2, 2 latent channels) and the latent text model on it; (run, CPU s of both, of the
    autoencoder). Retraining the autoencoder retrains the text model."""
    data = digitpairs(args.size, torch.Generator().manual_seed(0), split="train")
    ae_run, run = Path(args.cache) / "autoencoder", Path(args.cache) / "text"
    retrain = args.retrain or _cached(ae_run, args.ae_steps) is None
    ae_cfg = {**AE, "train": {**AE["train"], "steps": args.ae_steps, "ckpt_every": args.ae_steps}}
    ae_cpu = _train_cached(ae_run, args.ae_steps, ae_cfg, data.x, "autoencoder", args.retrain)
    cfg = {**_config({**UNET, **TEXT}, args.steps, "digitpairs"), "autoencoder": str(ae_run)}
    cpu = _train_cached(run, args.steps, cfg, data, "latent text model", retrain)
    return run, ae_cpu + cpu, ae_cpu


def train_baseline(args, budget: float) -> tuple[Path, float, int]:
    """The class-conditional single-digit U-Net trained for `budget` process CPU seconds."""
    run = Path(args.cache) / "digits_cond"
    meta = run / "bench.json"
    if meta.is_file() and not args.retrain:
        m = json.loads(meta.read_text())
        if abs(m["budget"] - budget) < 0.05 * budget:
            return run, m["cpu_seconds"], m["steps"]
    train, y_train, _, _ = digits_split()
    data = Dataset(train, "digits", labels=y_train, kind="images", classes=[str(i) for i in range(10)])
    probe = max(10, args.steps // 50)
    cfg = _config({**UNET, "num_classes": 10}, probe, "digits")
    t0 = time.process_time()
    _fresh(run)
    ss.train(cfg, data=data, out=str(run))
    spent = time.process_time() - t0
    steps = probe
    for _ in range(3):                     # resume until the budget is spent (the step cost measured so far)
        more = int((budget - spent) / (spent / steps))
        if more < max(1, steps // 100):
            break
        steps += more
        t0 = time.process_time()
        ss.train({"train": {"steps": steps, "ckpt_every": steps}}, data=data, out=str(run), resume=True)
        spent += time.process_time() - t0
    meta.write_text(json.dumps({"budget": budget, "cpu_seconds": spent, "steps": steps}))
    print(f"class-conditional baseline: {steps} steps in {spent:.0f} CPU s (budget {budget:.0f})", flush=True)
    return run, spent, steps


# --- sampling ------------------------------------------------------------------------------------------------
class Counted:
    """A score function that counts its calls (each a network call on the doubled CFG batch)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0
        self.data_shape = getattr(fn, "data_shape", None)

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


@torch.no_grad()
def ours(sde, score_fn, z, sampler, opts, budget):
    steps = sampler_info(sampler).steps_for(budget, **opts)
    c = Counted(score_fn)
    x = sde.sample(c, tuple(z.shape), sampler=sampler, steps=steps, x_init=z * sde.prior_std, **opts)
    return x, c.calls


@torch.no_grad()                 # the network's parameters require grad: no graph through the scheduler's loop
def diffusers_run(sde, score_fn, z, cls, cfg, budget):
    """A diffusers scheduler's loop on our guided score: eps = -sigma score at the scheduler's noise level."""
    import diffusers
    sch = getattr(diffusers, cls)(num_train_timesteps=sde.N, trained_betas=sde.discrete_betas.tolist(), **cfg)
    sch.set_timesteps(budget)
    c = Counted(score_fn)
    x = z * sch.init_noise_sigma
    for i, t in enumerate(sch.timesteps):
        if hasattr(sch, "sigmas"):
            sig = float(sch.sigmas[i])                                   # sigma~ = sigma / alpha
        else:
            ab = float(sch.alphas_cumprod[int(t)])
            sig = math.sqrt((1 - ab) / ab)
        tc = sde.t_from_half_log_snr(torch.tensor(-math.log(sig), dtype=torch.float64)).clamp(sde.default_eps, 1.0)
        _, sigma = sde.marginal_coefs(tc)
        xin = sch.scale_model_input(x, t)                               # the VP-scaled input x_t
        eps = -float(sigma) * c(xin, tc.float().expand(len(x)))
        x = sch.step(eps, t, x).prev_sample
    return x, c.calls


def bns_run(sde, model, w, prompts_cal, z_cal, score_fn, z, budget, args, costs):
    cal = ss.classifier_free_score(model, w=w, prompt=prompts_cal)
    grid, info = ss.optimize_steps(sde, cal, budget, sampler="bns", calibration=z_cal * sde.prior_std,
                                   return_info=True, reference_steps=args.reference_steps, maxfev=args.maxfev,
                                   iterations=args.bns_iterations)
    costs[budget] = info["cpu_seconds"]
    c = Counted(score_fn)
    x = sde.sample(c, tuple(z.shape), sampler="bns", times=grid, weights=info["weights"], x_init=z * sde.prior_std)
    return x, c.calls


class Scorer:
    """Prompt accuracy and digits FID of digit-pair canvases (FID on both halves' 8x8 glyphs)."""

    def __init__(self, n_ref: int):
        ref = digitpairs(n_ref, torch.Generator().manual_seed(2), split="test")
        self.fid = DigitsFID(torch.cat(pair_glyphs(ref.x)))
        self.n_ref = n_ref

    def __call__(self, x, prompts):
        if not torch.isfinite(x).all():
            return {"prompt_accuracy": float("nan"), "full_accuracy": float("nan"), "fid": float("inf")}
        r = prompt_accuracy(x, prompts)
        return {**r, "fid": self.fid(torch.cat(pair_glyphs(x)))}


ACCURACY_GOAL = 0.95


def pick_weight(sweep: dict) -> float:
    """The guidance weight of the sweep {w: scores}: the lowest FID among those at the accuracy goal, else the
    most accurate (lowest FID among equals)."""
    ok = [k for k, v in sweep.items() if v["prompt_accuracy"] >= ACCURACY_GOAL]
    if ok:
        return min(ok, key=lambda k: sweep[k]["fid"])
    return max(sweep, key=lambda k: (sweep[k]["prompt_accuracy"], -sweep[k]["fid"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12000, help="training steps of the latent text model (batch 32)")
    ap.add_argument("--ae-steps", type=int, default=1000, help="training steps of the autoencoder (batch 64)")
    ap.add_argument("--size", type=int, default=5000, help="digitpairs training canvases")
    ap.add_argument("--prompts", type=int, default=32, help="test captions sampled")
    ap.add_argument("--per-prompt", type=int, default=4, help="samples per caption")
    ap.add_argument("--weights", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0], help="guidance weights tried")
    ap.add_argument("--calib", type=int, default=16, help="calibration draws of the bns fits")
    ap.add_argument("--bns-iterations", type=int, default=60)
    ap.add_argument("--reference-steps", type=int, default=100)
    ap.add_argument("--maxfev", type=int, default=30)
    ap.add_argument("--fid-draws", type=int, default=4, help="more prior draws of the FID goal (dpm_solver 20)")
    ap.add_argument("--n-ref", type=int, default=1000, help="test-split canvases of the FID reference")
    ap.add_argument("--cache", default=str(ROOT / "runs" / "bench_text2image"))
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--no-peers", action="store_true", help="skip the diffusers rows")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, numbers meaningless")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.ae_steps, args.size, args.prompts, args.per_prompt, args.weights = 30, 20, 500, 17, 2, [2.0]
        args.calib, args.bns_iterations, args.reference_steps, args.maxfev, args.n_ref = 4, 3, 20, 6, 200
        args.fid_draws = 1
        args.cache = str(Path(args.cache).with_name(Path(args.cache).name + "_quick"))
    if args.prompts * args.per_prompt * 2 <= 64:
        ap.error("--prompts x --per-prompt: expected more than 32 canvases (FID in 64 features over both halves)")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    wall0, cpu0 = time.time(), time.process_time()

    run, budget, args.ae_cpu = train_text(args)
    model, sde = ss.load(run)
    decode = torch.no_grad()(model.autoencoder.decode)                       # latents -> canvases

    test = digitpairs(args.prompts, torch.Generator().manual_seed(1), split="test")
    prompts = [p for p in test.texts for _ in range(args.per_prompt)]           # (P S,) each caption S times
    z = torch.randn(len(prompts), *model.data_shape, generator=torch.Generator().manual_seed(3))
    cal = digitpairs(args.calib, torch.Generator().manual_seed(4), split="test").texts
    z_cal = torch.randn(args.calib, *model.data_shape, generator=torch.Generator().manual_seed(5))
    score = Scorer(args.n_ref)
    real = digitpairs(len(prompts), torch.Generator().manual_seed(6), split="train")
    floor = score(real.x, real.texts)

    # the guidance weight
    sweep = {}
    for w in args.weights:
        fn = ss.classifier_free_score(model, w=w, prompt=prompts)
        x, _ = ours(sde, fn, z, "dpm_solver", {"order": 2}, 20)
        sweep[w] = score(decode(x), prompts)
        print(f"w = {w}: prompt accuracy {sweep[w]['prompt_accuracy']:.3f}, FID {sweep[w]['fid']:.2f}", flush=True)
    w = pick_weight(sweep)
    guided = ss.classifier_free_score(model, w=w, prompt=prompts)

    # the table
    runs = {f"ours {k}": (lambda b, s=s, o=o: ours(sde, guided, z, s, o, b)) for k, (s, o) in OURS.items()}
    costs: dict[int, float] = {}
    runs["ours bns [fitted, guided]"] = lambda b: bns_run(sde, model, w, cal, z_cal, guided, z, b, args, costs)
    if not args.no_peers:
        runs.update({k: (lambda b, c=c, o=o: diffusers_run(sde, guided, z, c, o, b)) for k, (c, o) in PEERS.items()})
    table, last = {}, {}
    for name, go in runs.items():
        row = []
        for b in BUDGETS:
            x, calls = go(b)
            if calls > b:
                raise RuntimeError(f"{name} used {calls} > {b} guided evaluations")
            x = decode(x)
            row.append((score(x, prompts), calls))
            last[name] = x
        table[name] = row
        print(f"  {name:30s}" + "".join(f"  {r['prompt_accuracy']:.3f}/{r['fid']:6.2f}({n})" for r, n in row),
              flush=True)

    # the class-conditional baseline on single digits, trained for the text model's CPU seconds
    base_run, base_cpu, base_steps = train_baseline(args, budget)
    base, base_sde = ss.load(base_run)
    train8, _, x_test, _ = digits_split()
    n8 = 2 * len(prompts)                             # as many 8x8 digits as the pairs' FID scores (two per canvas)
    labels = torch.arange(n8) % 10
    fid8 = DigitsFID(x_test)
    base_guided = ss.classifier_free_score(base, y=labels, w=w)

    def base_draw(seed: int) -> torch.Tensor:
        zb = torch.randn(n8, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
        return ours(base_sde, base_guided, zb, "dpm_solver", {"order": 2}, 20)[0]

    base_fid, base_floor = fid8(base_draw(3)), fid8(train8[:n8])
    # the FID goal again on fresh prior draws (seeds 10, 11, ...): 128 canvases give a noisy FID
    args.fid_ratios = []
    for seed in range(10, 10 + args.fid_draws):
        zs = torch.randn(len(prompts), *model.data_shape, generator=torch.Generator().manual_seed(seed))
        xt, _ = ours(sde, guided, zs, "dpm_solver", {"order": 2}, 20)
        xs = base_draw(seed)
        args.fid_ratios.append(score(decode(xt), prompts)["fid"] / fid8(xs))

    # the prompts x samples figure (the best 20-evaluation run of ours)
    OUT.mkdir(exist_ok=True)
    best20 = min((k for k in table if k.startswith("ours")), key=lambda k: table[k][-1][0]["fid"])
    shown = min(8, args.prompts)
    save_prompt_grid(str(OUT / f"text2image{'_quick' if args.quick else ''}_prompts.png"),
                     last[best20][: shown * args.per_prompt].reshape(shown, args.per_prompt, *test.x.shape[1:]),
                     test.texts[:shown], title=f"{best20}, 20 guided evaluations, w = {w}")

    md = report(args, table, sweep, w, floor, budget, base_cpu, base_steps, base_fid, base_floor, costs,
                time.time() - wall0, time.process_time() - cpu0)
    print("\n" + md)
    (OUT / f"text2image{'_quick' if args.quick else ''}.md").write_text(md + "\n")


def report(args, table, sweep, w, floor, budget, base_cpu, base_steps, base_fid, base_floor, costs, wall, cpu):
    head = "| sampler | " + " | ".join(f"{b} evals" for b in BUDGETS) + " |"
    lines = ["# Text-to-image on digitpairs: prompt accuracy / digits FID at equal guided evaluations", "",
             "One evaluation = one call of the classifier-free guided score = ONE network call on a doubled batch "
             "(conditional and unconditional halves); the same for the diffusers schedulers, driven by that "
             "score. Cells: prompt accuracy / digits FID of both halves' glyphs (lower FID is better); (n): "
             "evaluations actually used when fewer than the budget.", "",
             f"Model: latent text-conditional U-Net (v-prediction, spatial transformer with place embeddings) + "
             f"jointly trained transformer text encoder, {args.steps} steps on the 2x8x16 latents of {args.size} "
             f"train-split canvases, after {args.ae_steps} steps of its autoencoder; {budget:.0f} process CPU s in "
             f"all ({args.ae_cpu:.0f} of them the autoencoder's); {args.prompts} test captions x "
             f"{args.per_prompt} samples; guidance weight w = {w} (the lowest FID of the weights at prompt accuracy "
             f">= {ACCURACY_GOAL}, else the most accurate; "
             + ", ".join(f"w={k}: {v['prompt_accuracy']:.3f}/{v['fid']:.2f}" for k, v in sweep.items())
             + " with dpm_solver, 20 evaluations).", "", head, "|---|" + "---:|" * len(BUDGETS)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{r['prompt_accuracy']:.3f} / {r['fid']:.2f}" + ("" if n == b else f" ({n})")
            for (r, n), b in zip(row, BUDGETS)) + " |")
    lines.append(f"| *floor: train-split canvases* | {floor['prompt_accuracy']:.3f} / {floor['fid']:.2f} |"
                 + " |" * (len(BUDGETS) - 1))
    ours_rows = {k: v for k, v in table.items() if k.startswith("ours")}
    peers = {k: v for k, v in table.items() if not k.startswith("ours")}
    j5, j20 = BUDGETS.index(5), BUDGETS.index(20)
    best = lambda rows, j: max(((v[j][0]["prompt_accuracy"], -v[j][0]["fid"], k) for k, v in rows.items()),  # noqa
                               default=None)
    acc_best = max(v["prompt_accuracy"] for r in table.values() for v, _ in r)
    lines += ["", f"Goal: prompt accuracy >= 95% at the best guidance weight: best {acc_best:.3f}: "
              f"{'reached' if acc_best >= ACCURACY_GOAL else 'NOT reached'}."]
    text_fid = min(r[j20][0]["fid"] for r in ours_rows.values())
    lines.append(f"Goal: FID within 2x of the class-conditional model on single digits at equal training budget: "
                 f"text model (best of ours at 20 evaluations) {text_fid:.2f} vs class-conditional {base_fid:.2f} "
                 f"({base_steps} steps, {base_cpu:.0f} CPU s vs {budget:.0f}; its floor {base_floor:.2f}, the "
                 f"pairs' floor {floor['fid']:.2f}): {text_fid / base_fid:.2f}x: "
                 f"{'reached' if text_fid <= 2 * base_fid else 'NOT reached'}.")
    if args.fid_ratios:
        r = args.fid_ratios
        lines.append(f"  The same ratio (dpm_solver, 20 evaluations) on {len(r)} more prior draws of both models: "
                     f"mean {sum(r) / len(r):.2f}x (from {min(r):.2f}x to {max(r):.2f}x).")
    if peers:
        o5, p20 = best(ours_rows, j5), best(peers, j20)
        ok = o5[0] >= p20[0] and -o5[1] <= -p20[1]
        lines.append(f"Goal: at 5 evaluations our best ({o5[2]}: {o5[0]:.3f} / {-o5[1]:.2f}) reaches diffusers' best "
                     f"at 20 ({p20[2]}: {p20[0]:.3f} / {-p20[1]:.2f}): {'reached' if ok else 'NOT reached'}.")
    if costs:
        lines.append("bns fits (CPU s): " + ", ".join(f"{b} evals {c:.0f}" for b, c in sorted(costs.items())))
    load = os.getloadavg()
    lines.append(f"\n({wall:.0f} s wall, {cpu:.0f} s CPU; load average {load[0]:.1f} on {os.cpu_count()} cores; "
                 f"torch {torch.__version__})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
