"""Where the CPU time of one training step goes, pixel (1x32x32) against latent (4x8x8) space, same network.

    OMP_NUM_THREADS=1 python benchmarks/latent_step_profile.py --batch 32 --rounds 10

The step is the engine's (DSM loss, backward, gradient clipping at 1 with its one host sync, Adam, EMA
update), timed by phase with time.process_time; three optimiser variants alternate in one process:
torch's default Adam (a per-tensor loop on CPU: the engine before `scoresde.training.engine.make_adam`), the
engine's foreach Adam (bit-identical on CPU), and torch's fused Adam (about 1 ulp different). Then the
network's own convolution, GroupNorm and linear calls (shapes recorded by hooks) are timed one by one,
forward + backward: the kernels a step cannot do without. Medians in CPU ms; ratios side by side.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch import nn

import scoresde as ss
from scoresde.models.ema import EMA
from scoresde.training.engine import make_adam

UNET = {"ch": 16, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0, "num_groups": 8}
ADAM = {"lr": 1e-4, "beta1": 0.9, "beta2": 0.999, "adam_eps": 1e-8, "weight_decay": 0.0}
SHAPES = {"pixel": (1, 32, 32), "latent": (4, 8, 8)}
PHASES = ("forward+loss", "backward", "clip+sync", "adam", "ema")


def build(shape, variant):
    torch.manual_seed(0)
    m = ss.ScoreModel(ss.get_model("ddpm_unet", data_shape=shape, **UNET), ss.VPSDE())
    opt = {"default": lambda p: torch.optim.Adam(p, lr=ADAM["lr"]), "foreach": lambda p: make_adam(p, ADAM),
           "fused": lambda p: torch.optim.Adam(p, lr=ADAM["lr"], fused=True)}[variant](m.parameters())
    return m, opt, EMA(m, 0.99), list(m.parameters()), torch.randn(256, *shape)


def step(obj, batch, g, rec):
    m, opt, ema, params, data = obj
    c = [time.process_time()]
    loss = ss.dsm_loss(m, m.sde, data[torch.randint(len(data), (batch,), generator=g)], generator=g)
    c.append(time.process_time())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    c.append(time.process_time())
    gnorm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    torch.stack([loss.detach(), gnorm.detach()]).tolist()
    c.append(time.process_time())
    opt.step()
    c.append(time.process_time())
    ema.update(m)
    c.append(time.process_time())
    if rec is not None:
        for name, a, b in zip(PHASES, c, c[1:]):
            rec[name].append(1e3 * (b - a))
        rec["total"].append(1e3 * (c[-1] - c[0]))


def kernels(shape, batch, reps) -> dict[str, tuple[float, int]]:
    """CPU ms (sum of medians) and count of the network's conv / GroupNorm / linear calls, fwd + bwd each."""
    torch.manual_seed(0)
    net = ss.get_model("ddpm_unet", data_shape=shape, **UNET)
    calls = []
    hooks = [mod.register_forward_hook(lambda mod, i, o: calls.append((mod, i[0].shape, o.shape)))
             for mod in net.modules() if isinstance(mod, (nn.Conv2d, nn.GroupNorm, nn.Linear))]
    net(torch.randn(batch, *shape), torch.rand(batch) * 999)
    for h in hooks:
        h.remove()
    out = defaultdict(lambda: [0.0, 0])
    for mod, si, so in calls:
        x, gy, ts = torch.randn(si, requires_grad=True), torch.randn(so), []
        for i in range(reps + 2):
            t0 = time.process_time()
            mod(x).backward(gy)
            if i >= 2:
                ts.append(time.process_time() - t0)
        k = type(mod).__name__
        out[k][0] += 1e3 * statistics.median(ts)
        out[k][1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=10, help="rounds of 3 steps per space and variant, alternating")
    a = ap.parse_args()
    torch.set_num_threads(1)
    variants = ("default", "foreach", "fused")
    objs = {(s, v): build(shape, v) for s, shape in SHAPES.items() for v in variants}
    g = torch.Generator().manual_seed(0)
    rec = {k: defaultdict(list) for k in objs}
    for k in objs:
        for _ in range(2):
            step(objs[k], a.batch, g, None)
    for _ in range(a.rounds):
        for k in objs:
            for _ in range(3):
                step(objs[k], a.batch, g, rec[k])
    med = {k: {p: statistics.median(v) for p, v in r.items()} for k, r in rec.items()}
    print(f"## One training step, batch {a.batch}, CPU ms (median of {3 * a.rounds}), 1 thread\n")
    print("| space, Adam | " + " | ".join(PHASES) + " | total |")
    print("|---|" + "---:|" * (len(PHASES) + 1))
    for k, m in med.items():
        print(f"| {k[0]}, {k[1]} | " + " | ".join(f"{m[p]:.2f}" for p in (*PHASES, "total")) + " |")
    print("\n| Adam | pixel / latent |\n|---|---:|")
    for v in variants:
        print(f"| {v} | {med['pixel', v]['total'] / med['latent', v]['total']:.2f}x |")
    print(f"\n## The network's kernels alone, forward + backward, batch {a.batch}, CPU ms (sum of per-call medians)\n")
    ks = {s: kernels(shape, a.batch, 10) for s, shape in SHAPES.items()}
    print("| kernel | calls | pixel | latent | pixel / latent |\n|---|---:|---:|---:|---:|")
    for k in ks["pixel"]:
        p, l_ = ks["pixel"][k], ks["latent"][k]
        print(f"| {k} | {p[1]} | {p[0]:.1f} | {l_[0]:.1f} | {p[0] / l_[0]:.1f}x |")


if __name__ == "__main__":
    main()
