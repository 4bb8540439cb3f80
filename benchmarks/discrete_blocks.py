"""Block diffusion (BD3-LM) and the remasking samplers against an autoregressive transformer, on CPU (issue 32).

    OMP_NUM_THREADS=1 python benchmarks/discrete_blocks.py --data brackets --budget 30 --out brackets.md --plot b.png
    (also run by `benchmarks/discrete.py --parts blocks`, with --blocks-data)

For one data set (`brackets`: depth <= 3, L = 17; `sums`: a+b=c with 2 digits, L = 10; `text`: the docstring
corpus of `discrete.py` in rows of L = 48), models of the same width / depth / batch / learning rate are each
trained through the engine for `--budget` seconds of CPU time of the process (1 thread, `discrete.train_for`):
the autoregressive baseline (`causal_transformer`), block diffusion with block sizes 1, 2, 4, 8
(`--task masked --set discrete.block_size=b`, the vectorised x_t (+) x_0 pass: twice the tokens per step) and
the full-length masked model (block_size 0, today's MDLM/LLaDA model). Then

- the held-out bound (the block NELBO, 8 mask draws per sequence; block size 1 is exact, one draw) against the
  AR model's exact NLL, bits per token and the perplexity ratio (goal: <= 1.2 for some block size on text);
- on the languages, samples of each masked model with the samplers (llada entropy, llada margin, llada
  low_confidence with order temperature 0.05, remdm cap eta = 0.02, mdlm) at 16 / 32 / 64 / 128 steps:
  valid %, distinct valid samples, distinct among valid %, network calls per sample (rows evaluated / n: block
  models drop a row once a finished block holds EOS) and sampling CPU s; the AR model's samples (L calls each);
  the goal: some masked / block sampler with valid >= 0.9 x AR's, at least as many distinct valid samples, at
  no more calls per sample;
- a plot of valid % against calls per sample, one line per (model, sampler).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from discrete import stdlib_corpus, train_for  # noqa: E402
from scoresde.data.tokens import load_tokens  # noqa: E402
from scoresde.data.tokenizer import CharTokenizer  # noqa: E402
from scoresde.nets import count_parameters  # noqa: E402

LOG2 = math.log(2)
BLOCKS = (1, 2, 4, 8, 0)                   # 0: the full-length masked model
SAMPLERS = [("llada (entropy)", "llada", {"remasking": "entropy"}),
            ("llada (margin)", "llada", {"remasking": "margin"}),
            ("llada (low_confidence, tau 0.05)", "llada", {"remasking": "low_confidence", "order_temperature": 0.05}),
            ("remdm (cap, eta 0.02)", "remdm", {"eta": 0.02, "schedule": "cap"}),
            ("mdlm", "mdlm", {})]


def data(name: str, root: str):
    """(config data/discrete sections, held-out tokens (N, L), has a language)."""
    if name == "brackets":
        return ({"data": {"name": "brackets", "size": 50000}, "discrete": {"seq_len": 17, "max_depth": 3, "holdout": 0.0}},
                load_tokens("brackets", seq_len=17, max_depth=3, size=1000, seed=12345).x, True)
    if name == "sums":
        return ({"data": {"name": "sums", "size": 50000}, "discrete": {"digits": 2, "holdout": 0.0}},
                load_tokens("sums", digits=2, size=1000, seed=12345).x, True)
    corpus = stdlib_corpus()
    held, train = corpus[9::10], [ln for i, ln in enumerate(corpus) if i % 10 != 9]
    path = os.path.join(root, "train.txt")
    with open(path, "w") as f:
        f.write("\n".join(train))
    tok = CharTokenizer.from_text("\n".join(train))
    ids = tok.encode("\n".join(ln for ln in held if set(ln) <= set(tok.alphabet)))
    hold = torch.tensor(ids[:len(ids) // 48 * 48]).reshape(-1, 48)[:500]
    return {"data": {"name": path}, "discrete": {"seq_len": 48, "text_mode": "stream", "holdout": 0.0}}, hold, False


def label(b: int, L: int) -> str:
    return f"full length (masked, L = {L})" if b == 0 else f"block size {b}"


def run(name: str, budget: float, n: int, steps_list, root: str):
    sections, hold, language = data(name, root)
    L = hold.shape[1]
    base = {"device": "cpu", "seed": 0, "model": {"width": 64, "depth": 2, "heads": 4},
            "train": {"steps": 10 ** 6, "batch_size": 64, "lr": 3e-3, "warmup": 100, "log_every": 50,
                      "ckpt_every": 10 ** 6, "progress": False, "ema_decay": 0.999},
            "sample": {"n": 1, "steps": 1}, **sections}
    models = {}
    for key in ("ar",) + BLOCKS:
        if key == "ar":
            cfg = {**base, "task": "autoregressive", "model": {**base["model"], "name": "causal_transformer"}}
        else:
            cfg = {**base, "task": "masked", "model": {**base["model"], "name": "seq_transformer"},
                   "discrete": {**base["discrete"], "block_size": key}}
        r, cpu, wall = train_for(cfg, os.path.join(root, f"{name}_{key}"), budget)
        models[key] = (r.model.eval(), r.step, cpu)
        print(f"[{name}] {key}: {r.step} steps in {cpu:.0f} CPU s ({wall:.0f} s wall)", flush=True)
    ar = models["ar"][0]
    nll = float(ar.nll(hold).double().mean())
    out = [f"### {name} (L = {L}, {len(hold)} held-out sequences, {budget:.0f} CPU s of training per model)", "",
           "| model | parameters | train steps | CPU ms / step | held-out bits/token | perplexity | ratio to AR |",
           "|---|---:|---:|---:|---:|---:|---:|",
           f"| autoregressive (exact NLL) | {count_parameters(ar)} | {models['ar'][1]} | "
           f"{1000 * models['ar'][2] / models['ar'][1]:.1f} | {nll / LOG2:.4f} | {math.exp(nll):.3f} | 1 |"]
    for b in BLOCKS:
        m, steps, cpu = models[b]
        g = torch.Generator().manual_seed(0)
        v = float(m.nelbo(hold, draws=1 if b == 1 else 8, generator=g).double().mean())
        kind = "exact NLL" if b == 1 else "NELBO bound"
        out.append(f"| {label(b, L)} ({kind}) | {count_parameters(m)} | {steps} | {1000 * cpu / steps:.1f} | "
                   f"{v / LOG2:.4f} | {math.exp(v):.3f} | {math.exp(v - nll):.3f} |")
        print(out[-1], flush=True)
    out.append("")
    points = {}
    if language:
        out += ["| model | sampler | steps | valid % | distinct valid | distinct among valid % | calls / sample | "
                "sampling CPU s |", "|---|---|---:|---:|---:|---:|---:|---:|"]

        def row(model_label, sampler_label, steps, model, x, calls, cpu):
            valid = model.is_valid(x)
            texts = model.decode(x)
            dv = len({t for t, ok in zip(texts, valid) if ok})
            nv = sum(valid)
            out.append(f"| {model_label} | {sampler_label} | {steps} | {100 * nv / len(x):.1f} | {dv} | "
                       f"{100 * dv / max(nv, 1):.1f} | {calls:.1f} | {cpu:.1f} |")
            print(out[-1], flush=True)
            return 100 * nv / len(x), dv
        st, t0 = {}, time.process_time()
        x = ar.sample(n, generator=torch.Generator().manual_seed(1), stats=st)
        ar_valid, ar_dv = row("autoregressive", "left to right", L, ar, x, st["nfe_per_sequence"],
                              time.process_time() - t0)
        points["autoregressive"] = [(st["nfe_per_sequence"], ar_valid)]
        best = []
        for b in BLOCKS:
            m = models[b][0]
            for s_label, sampler, kw in SAMPLERS:
                if b == 1 and s_label != SAMPLERS[0][0]:
                    continue                                  # one position per block: every sampler is the same
                for steps in steps_list if b != 1 else [L]:
                    st, t0 = {}, time.process_time()
                    x = m.sample(n, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(1),
                                 stats=st, **(kw if b != 1 else {}))
                    calls = st["nfe_per_sequence"]
                    v, dv = row(label(b, L), s_label if b != 1 else "one token per block", steps, m, x, calls,
                                time.process_time() - t0)
                    points.setdefault(f"{label(b, L)}: {s_label if b != 1 else 'one token per block'}",
                                      []).append((calls, v))
                    if ar_valid > 0 and v >= 0.9 * ar_valid and dv >= ar_dv and calls <= L:
                        best.append(f"{label(b, L)}, {s_label}, {steps} steps: {v:.1f}% valid, {dv} distinct valid, "
                                    f"{calls:.1f} calls")
        out += ["", f"Goal (valid >= 0.9 x AR's {ar_valid:.1f}%, distinct valid >= AR's {ar_dv}, calls <= {L}): "
                + ("reached by " + "; ".join(best) if best else "not reached"), ""]
    return out, points


def plot(points: dict, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(12, 5))
    for name, pts in points.items():
        pts = sorted(pts)
        ax.plot(*zip(*pts), marker="*" if name == "autoregressive" else "o", ms=9 if name == "autoregressive" else 3,
                lw=1, label=name)
    ax.set(xscale="log", xlabel="network calls per sample", ylabel="valid %", title=title)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))          # outside: the AR star stays visible
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=["brackets", "sums", "text"], choices=["brackets", "sums", "text"])
    ap.add_argument("--budget", type=float, default=30.0, help="training CPU seconds per model (process time)")
    ap.add_argument("--samples", type=int, default=200, help="samples per (model, sampler, steps)")
    ap.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--out", help="write the markdown tables here")
    ap.add_argument("--plot", help="write valid %% against calls per sample here (.png; one per data set, suffixed)")
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    lines = [f"# benchmarks/discrete_blocks.py (budget {a.budget:.0f} CPU s per model, {a.samples} samples per row, "
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average "
             f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)", "",
             f"Command: `OMP_NUM_THREADS=1 python benchmarks/discrete_blocks.py {' '.join(sys.argv[1:])}`.", ""]
    with tempfile.TemporaryDirectory() as root:
        for name in a.data:
            out, points = run(name, a.budget, a.samples, a.steps, root)
            lines += out
            if a.plot and points:
                stem, ext = os.path.splitext(a.plot)
                plot(points, f"{stem}_{name}{ext or '.png'}", f"{name}: valid % vs network calls per sample")
    text = "\n".join(lines)
    print("\n" + text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
