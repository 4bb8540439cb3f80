"""Masked diffusion language models against an autoregressive transformer of the same size, on CPU.

    OMP_NUM_THREADS=1 python benchmarks/discrete.py --budget 300 --parts exact brackets --out brackets.md
    OMP_NUM_THREADS=1 python benchmarks/discrete.py --budget 300 --parts text --out text.md   # (in parallel)

Five parts (`--parts exact oracle brackets text blocks`); `blocks` is `discrete_blocks.py` (issue 32: block
diffusion with block sizes 1, 2, 4, 8 and full length against the autoregressive model at equal CPU budget on
`--blocks-data` brackets sums text, the remasking samplers at 16 / 32 / 64 / 128 steps, calls per sample, a
plot of validity against calls per sample).

1. Exact denoiser (V = 3, L = 3, a correlated law): total variation between the samplers' output and
   the law, against the steps, 20000 samples. One token per step is exact (in any order: random
   remasking, MDLM with many steps); several tokens per step draw from products of conditionals;
   confidence-ordered remasking is biased at any step count.
1b. `oracle`: the samplers driven by the exact denoiser of the brackets data (`SupportDenoiser` over
   all its strings): valid and distinct fractions with a perfect model, the samplers' own error.
2. The `brackets` language (two kinds, depth <= 3, length <= 16, L = 17 with EOS) and 3. a small text
   (the lower-cased docstring lines of 30 standard-library modules, about 200 kB, every tenth line held
   out, cut into rows of L = 48 characters, `text_mode = "stream"`; a quarter of the samples per row):
   a masked diffusion model (`seq_transformer`) and an autoregressive one (`causal_transformer`, the same
   parameter count, the same data, batch, learning rate, warm-up and EMA) are each trained through the
   engine for `--budget` seconds of CPU time of the process (1 thread; an ITIMER_PROF timer sends SIGTERM;
   the engine stops at a step boundary), the masked model with the default `count` loss, then
   - the held-out bound: the masked model's NELBO (LLaDA's count estimator, 8 mask draws per sequence)
     against the autoregressive model's exact NLL, in bits per token and perplexity, and their ratio;
   - the learning curves: the held-out bound / NLL of every `curve_every`-th checkpoint against CPU s;
   - sample quality against sampling steps (8 ... 256) for mdlm, llada (random) and llada
     (low_confidence) at temperature 1, llada (low_confidence) at 0 (LLaDA's default), and mdlm / random
     at lower temperatures with 64 steps: on brackets the exact fraction of valid samples and the fraction
     of distinct ones; on the text the autoregressive model's NLL of the samples (generative perplexity, as MDLM scores samples
     with GPT-2) and the distinct fraction (always beside validity: collapse is not quality); with
     network calls per sequence and CPU time.
Goals (issue 18): >= 99% valid at 64 steps on brackets; a bound within 1.2x of the autoregressive
perplexity at equal training compute. Machines here are shared: times are CPU time of the process.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import math
import os
import signal
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import scoresde as ss  # noqa: E402
from scoresde.discrete import MaskedProcess, sample_llada, sample_mdlm  # noqa: E402
from scoresde.data.tokens import load_tokens
from scoresde.evaluation.token_exact import ExactDenoiser, SupportDenoiser, empirical_law, total_variation
from scoresde.data.tokenizer import EOS, CharTokenizer
from scoresde.nets import count_parameters  # noqa: E402

LOG2 = math.log(2)
SAMPLERS = [("mdlm", {}, 1.0), ("llada", {"remasking": "random"}, 1.0), ("llada", {"remasking": "low_confidence"}, 1.0),
            ("llada", {"remasking": "low_confidence"}, 0.0)]           # (sampler, options, temperature)
SWEEP = (0.8, 0.6, 0.4)                                                # temperatures of mdlm / random at 64 steps
MODULES = ["os", "re", "json", "collections", "itertools", "functools", "argparse", "random", "string", "textwrap",
           "math", "statistics", "csv", "pathlib", "subprocess", "logging", "unittest", "datetime", "decimal",
           "fractions", "heapq", "bisect", "shutil", "tempfile", "typing", "dataclasses", "enum", "inspect", "ast",
           "difflib"]


def stdlib_corpus() -> list[str]:
    """Distinct lower-cased docstring lines (printable ASCII) of 30 standard-library modules (about 200 kB)."""
    lines = []
    for name in MODULES:
        m = importlib.import_module(name)
        objs = [m] + [getattr(m, k) for k in sorted(dir(m)) if not k.startswith("_")]
        for o in objs:
            if o is m or inspect.isfunction(o) or inspect.isclass(o) or inspect.isbuiltin(o):
                for ln in (inspect.getdoc(o) or "").splitlines():
                    ln = " ".join(ln.split())
                    if ln and ln.isascii() and ln.isprintable() and not ln.startswith(">>>"):
                        lines.append(ln.lower())
    return list(dict.fromkeys(lines))


def train_for(cfg: dict, out: str, cpu_seconds: float):
    """Train through the engine until this process has spent `cpu_seconds` of CPU time (an ITIMER_PROF
    timer, which counts the process's user + system time, raises SIGTERM; the engine stops at a step
    boundary with a checkpoint); (result, CPU s, wall s). With 1 thread on a shared machine, CPU time
    gives both models the same compute whatever the load. The kernel charges ITIMER_PROF by sampled ticks,
    which can fire a few percent before `time.process_time()` (the exact clock) reaches the budget: the
    handler re-arms the timer for what is left, so the run never stops early."""
    def expired(*_):
        left = cpu_seconds - (time.process_time() - c0)
        if left > 0:                                                        # a tick-sampled early expiry
            signal.setitimer(signal.ITIMER_PROF, max(left, 1e-3))
        elif signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):  # the engine's handler is not set yet:
            signal.setitimer(signal.ITIMER_PROF, 0.05)                     # ask again a little later
        else:
            os.kill(os.getpid(), signal.SIGTERM)

    old = signal.signal(signal.SIGPROF, expired)
    c0, t0 = time.process_time(), time.perf_counter()
    signal.setitimer(signal.ITIMER_PROF, cpu_seconds)
    try:
        r = ss.train(cfg, out=out, progress=False)
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)
    return r, time.process_time() - c0, time.perf_counter() - t0


def exact_table(n: int = 20000) -> list[str]:
    V, L = 3, 3
    g = torch.Generator().manual_seed(1)
    p = torch.rand(V ** L, generator=g, dtype=torch.float64) ** 3
    p[::4] = 0
    p = p / p.sum()
    den, proc = ExactDenoiser(p, V, L), MaskedProcess(V)
    rows = ["| sampler | steps | TV to the law | network calls |", "|---|---:|---:|---:|"]
    for name, fn, kw, steps in [("mdlm", sample_mdlm, {}, (1, 2, 4, 16, 64, 256)),
                                ("llada random", sample_llada, {"remasking": "random"}, (1, 2, 3)),
                                ("llada low_confidence", sample_llada, {}, (1, 2, 3))]:
        for s in steps:
            st = {}
            x = fn(den, torch.full((n, L), V), proc, steps=s, generator=torch.Generator().manual_seed(0), stats=st, **kw)
            rows.append(f"| {name} | {s} | {total_variation(empirical_law(x, V), p):.4f} | {st['nfe']} |")
    return rows


def brackets_support(max_depth: int, max_len: int, seq_len: int):
    """Every string of the brackets data as EOS-padded tokens (N, seq_len), with its probability (a uniform
    length among the even ones, then a uniform string of that length): the exact law of the data."""
    from scoresde.data.languages import Brackets
    lang, tok = Brackets(max_depth, max_len), CharTokenizer("()[]")
    rows, probs, lengths = [], [], range(2, lang.max_len + 1, 2)

    def grow(prefix: str, stack: str, n: int, out: list):
        if len(prefix) == n:
            out.append(prefix)
            return
        if len(stack) < max_depth and len(stack) < n - len(prefix):
            for o, c in ("()", "[]"):
                grow(prefix + o, stack + c, n, out)
        if stack:
            grow(prefix + stack[-1], stack[:-1], n, out)

    for n in lengths:
        found: list[str] = []
        grow("", "", n, found)
        rows += [tok.encode(w) + [EOS] * (seq_len - n) for w in found]
        probs += [1 / len(lengths) / len(found)] * len(found)
    return torch.tensor(rows), torch.tensor(probs, dtype=torch.float64), lang, tok


def oracle_table(n: int, max_depth: int = 3, max_len: int = 16) -> list[str]:
    """Samplers driven by the exact denoiser of the brackets data (L = 17): their own error, apart from the
    model's (one token per step is exact; mdlm at T steps reveals several tokens at once in some steps)."""
    L = max_len + 1
    seqs, probs, lang, tok = brackets_support(max_depth, max_len, L)
    den, proc = SupportDenoiser(seqs, probs, tok.vocab_size), MaskedProcess(tok.vocab_size)
    rows = [f"### brackets with the exact denoiser ({len(seqs)} strings, L = {L}, {n} samples per row)", "",
            "| sampler | temperature | steps | valid % | distinct % | calls / sequence | TV of the length law |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, fn, kw, temp, steps in [("mdlm", sample_mdlm, {}, 1.0, 64),
                                      ("mdlm", sample_mdlm, {}, 1.0, 256), ("llada (random)", sample_llada,
                                      {"remasking": "random"}, 1.0, 64),
                                      ("llada (low_confidence)", sample_llada, {}, 1.0, 64),
                                      ("llada (low_confidence)", sample_llada, {}, 0.0, 64)]:
        st = {}
        x = fn(den, torch.full((n, L), proc.mask_id), proc, steps=steps, temperature=temp,
               generator=torch.Generator().manual_seed(0), stats=st, **kw)
        texts = [tok.decode(r) for r in x.tolist()]
        valid = [EOS in r and lang.is_valid(w) for r, w in zip(x.tolist(), texts)]
        lens = torch.bincount(torch.tensor([len(w) for w in texts]), minlength=L)[:L].double() / n
        law = torch.zeros(L, dtype=torch.float64)
        law[2::2] = 1 / len(law[2::2])
        rows.append(f"| {name} | {temp:g} | {steps} | {100 * sum(valid) / n:.1f} | {100 * len(set(texts)) / n:.1f} | "
                    f"{st['nfe_per_sequence']:.1f} | {total_variation(lens, law):.3f} |")
        print(rows[-1], flush=True)
    return rows + [""]


def brackets_entropy(max_depth: int, max_len: int, seq_len: int) -> float:
    """The exact entropy of the brackets data in bits per token: a uniform length n among the even lengths,
    then a uniform string among the c(n) valid ones: log2(#lengths) + mean_n log2 c(n), over seq_len tokens."""
    from scoresde.data.languages import Brackets
    lang = Brackets(max_depth, max_len)
    ns = range(2, lang.max_len + 1, 2)
    return (math.log2(len(ns)) + sum(math.log2(float(lang._completions(n)[0, 0])) for n in ns) / len(ns)) / seq_len


def brackets_nll(x: torch.Tensor, max_depth: int, max_len: int) -> float:
    """The data law's own NLL of the sequences x (EOS-padded brackets), in bits per token: -log2 p(x) / L with
    p(x) = 1 / (#lengths c(n)) for a string of length n (the floor any model can reach on these sequences)."""
    from scoresde.data.languages import Brackets
    lang, n_len = Brackets(max_depth, max_len), max_len // 2
    n = (x != EOS).sum(1).tolist()
    return sum(math.log2(n_len) + math.log2(float(lang._completions(k)[0, 0])) for k in n) / (len(n) * x.shape[1])


def compare(name: str, cfg: dict, hold: torch.Tensor, budget: float, root: str, quality, steps_list, n_samples: int,
            entropy: float | None = None, curve_every: int = 1000, curves: dict | None = None,
            floor: float | None = None):
    """Train both models for `budget` CPU s, then the bound table, the learning curves (the held-out bound
    of each checkpoint, every `curve_every` steps) and the quality-vs-steps table."""
    from scoresde.runs.checkpoint import list_checkpoints
    runs = {}
    for task, net in (("masked", "seq_transformer"), ("autoregressive", "causal_transformer")):
        c = {**cfg, "task": task, "model": {**cfg["model"], "name": net},
             "train": {**cfg["train"], "ckpt_every": curve_every, "keep": 10 ** 6}}
        out_dir = os.path.join(root, f"{name}_{task}")
        r, cpu, wall = train_for(c, out_dir, budget)
        runs[task] = (r.model.eval(), r.step, cpu, wall, out_dir)
        print(f"[{name}] {task}: {r.step} steps in {cpu:.0f} CPU s ({wall:.0f} s wall, {1000 * cpu / r.step:.1f} "
              f"CPU ms/step), {count_parameters(r.model)} parameters", flush=True)
    masked, ar = runs["masked"][0], runs["autoregressive"][0]
    g = torch.Generator().manual_seed(0)
    bound = float(masked.nelbo(hold, draws=8, generator=g).double().mean())
    nll = float(ar.nll(hold).double().mean())
    def row(label, task, v):
        m, steps, cpu = runs[task][:3]
        return (f"| {label} | {count_parameters(m)} | {steps} | {cpu:.0f} | {1000 * cpu / steps:.1f} | {v / LOG2:.4f} | "
                f"{math.exp(v):.3f} |")
    out = [f"### {name}", "",
           "| model | parameters | train steps | train CPU s | CPU ms / step | held-out bits/token | perplexity |",
           "|---|---:|---:|---:|---:|---:|---:|",
           row("masked diffusion (NELBO bound)", "masked", bound),
           row("autoregressive (exact NLL)", "autoregressive", nll),
           *([f"| the data (exact entropy) | | | | | {entropy:.4f} | {2 ** entropy:.3f} |"] if entropy else []),
           *([f"| the data law's NLL of these held-out sequences | | | | | {floor:.4f} | {2 ** floor:.3f} |"]
             if floor else []), "",
           f"Perplexity ratio masked / autoregressive: **{math.exp(bound - nll):.3f}** (goal <= 1.2); "
           f"{len(hold)} held-out sequences of {hold.shape[1]} tokens (8 mask draws each for the bound).", ""]
    # learning curves: every checkpoint (EMA weights) on the first 500 held-out sequences
    sub, curve = hold[:500], {}
    for task in ("masked", "autoregressive"):
        per_step = runs[task][2] / runs[task][1]
        for step, path in list_checkpoints(runs[task][4]):
            m, _ = ss.load(path)
            m.eval()
            v = (m.nelbo(sub, draws=4, generator=torch.Generator().manual_seed(0)) if task == "masked" else m.nll(sub))
            curve.setdefault(task, []).append((step * per_step, float(v.double().mean()) / LOG2))
    if curves is not None:
        curves[name] = (curve, entropy)
    out += ["Learning curves (held-out bits/token of each checkpoint's EMA weights, 500 sequences; CPU s = step x "
            "the run's mean CPU s per step):", "",
            "| model | " + " | ".join(f"{c:.0f} s" for c, _ in curve["masked"]) + " |",
            "|---|" + "---:|" * len(curve["masked"]),
            "| masked (bound) | " + " | ".join(f"{v:.3f}" for _, v in curve["masked"]) + " |",
            "| model | " + " | ".join(f"{c:.0f} s" for c, _ in curve["autoregressive"]) + " |",
            "| autoregressive (NLL) | " + " | ".join(f"{v:.3f}" for _, v in curve["autoregressive"]) + " |", ""]
    cols = quality(None, None)
    out += ["| sampler | temperature | steps | " + " | ".join(cols) + " | distinct % | calls / sequence | CPU s |",
            "|---|---:|---:|" + "---:|" * (len(cols) + 3)]
    rows = [(s, kw, temp, steps) for s, kw, temp in SAMPLERS for steps in steps_list]
    rows += [(s, kw, temp, 64) for temp in SWEEP for s, kw, _ in SAMPLERS[:2]]     # lower temperatures, 64 steps
    for sampler, kw, temp, steps in rows:
        label = sampler + (f" ({kw['remasking']})" if kw else "")
        st = {}
        t0 = time.process_time()
        x = masked.sample(n_samples, sampler=sampler, steps=steps, temperature=temp,
                          generator=torch.Generator().manual_seed(1), stats=st, **kw)
        cpu = time.process_time() - t0
        q = quality(masked, x, ar)
        distinct = 100 * len(set(masked.decode(x))) / len(x)
        out.append(f"| {label} | {temp:g} | {steps} | " + " | ".join(q) + f" | {distinct:.1f} | "
                   f"{st['nfe_per_sequence']:.1f} | {cpu:.1f} |")
        print(out[-1], flush=True)
    st = {}
    t0 = time.process_time()
    x = ar.sample(n_samples, generator=torch.Generator().manual_seed(1), stats=st)
    cpu = time.process_time() - t0
    out.append(f"| autoregressive | 1 | {hold.shape[1]} | " + " | ".join(quality(ar, x, ar)) +
               f" | {100 * len(set(ar.decode(x))) / len(x):.1f} | {st['nfe_per_sequence']:.1f} | {cpu:.1f} |")
    return out + [""]


def validity(model, x, ar=None):
    if model is None:
        return ["valid %"]
    v = model.is_valid(x)
    return [f"{100 * sum(v) / len(v):.1f}"]


def gen_nll(model, x, ar=None):
    if model is None:
        return ["AR bits/token of samples"]
    return [f"{float(ar.nll(x).double().mean()) / LOG2:.3f}"]


def plot_curves(curves: dict, path: str) -> None:
    """Held-out bits/token against training CPU s, one panel per data set."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    for ax, (name, (curve, entropy)) in zip(axes[0], curves.items()):
        for task, label in (("masked", "masked diffusion (NELBO bound)"), ("autoregressive", "autoregressive (NLL)")):
            ax.plot(*zip(*curve[task]), marker="o", ms=3, label=label)
        if entropy:
            ax.axhline(entropy, color="k", ls=":", lw=1, label="data entropy")
        ax.set(title=name, xlabel="training CPU s", ylabel="held-out bits / token")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=60.0, help="training CPU seconds per model (process time)")
    ap.add_argument("--samples", type=int, default=256, help="samples per (sampler, steps)")
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    ap.add_argument("--parts", nargs="+", default=["exact", "oracle", "brackets", "text"])
    ap.add_argument("--out", help="write the markdown tables here")
    ap.add_argument("--plot", help="write the learning curves (bits/token against CPU s) here (.png)")
    ap.add_argument("--blocks-data", nargs="+", default=["brackets", "sums", "text"], help="data sets of part blocks")
    a = ap.parse_args()
    if "blocks" in a.parts:                       # block diffusion and the remasking samplers (discrete_blocks.py)
        import discrete_blocks
        steps = [s for s in a.steps if s in (16, 32, 64, 128)] or [16, 32, 64, 128]
        discrete_blocks.main(["--data", *a.blocks_data, "--budget", str(a.budget), "--samples", str(a.samples),
                              "--steps", *map(str, steps), *(["--out", a.out] if a.out else []),
                              *(["--plot", a.plot] if a.plot else [])])
        a.parts = [p for p in a.parts if p != "blocks"]
        if not a.parts:
            return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])      # imports done before any timed run
    import matplotlib.pyplot  # noqa: F401
    lines = [f"# benchmarks/discrete.py (budget {a.budget:.0f} CPU s per model, {a.samples} samples per row, "
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s))", "",
             "Budgets and costs are CPU time of this process (`time.process_time`, 1 thread: an ITIMER_PROF timer "
             "stops each training run), so both models get the same compute on a shared machine; load average "
             f"at the start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores. Command: `OMP_NUM_THREADS=1 python "
             f"benchmarks/discrete.py {' '.join(sys.argv[1:])}`.", ""]
    curves: dict = {}
    base = {"device": "cpu", "seed": 0, "model": {"width": 64, "depth": 2, "heads": 4},
            "train": {"steps": 10 ** 6, "batch_size": 64, "lr": 3e-3, "warmup": 100, "log_every": 50,
                      "ckpt_every": 10 ** 6, "progress": False, "ema_decay": 0.999},
            "sample": {"n": 1, "steps": 1}}
    with tempfile.TemporaryDirectory() as root:
        if "exact" in a.parts:
            lines += ["### exact denoiser (V = 3, L = 3)", "", *exact_table(), ""]
            print("\n".join(lines[-12:]), flush=True)
        if "oracle" in a.parts:
            lines += oracle_table(a.samples)
        if "brackets" in a.parts:
            cfg = {**base, "data": {"name": "brackets", "size": 50000},
                   "discrete": {"seq_len": 17, "max_depth": 3, "holdout": 0.0}}
            hold = load_tokens("brackets", seq_len=17, max_depth=3, size=1000, seed=12345).x
            lines += compare("brackets (depth <= 3, L = 17)", cfg, hold, a.budget, root, validity, a.steps, a.samples,
                             entropy=brackets_entropy(3, 16, 17), curves=curves, floor=brackets_nll(hold, 3, 16))
        if "text" in a.parts:
            corpus = stdlib_corpus()
            held = corpus[9::10]                                    # every tenth line held out
            train = [ln for i, ln in enumerate(corpus) if i % 10 != 9]
            path = os.path.join(root, "train.txt")
            with open(path, "w") as f:
                f.write("\n".join(train))
            tok = CharTokenizer.from_text("\n".join(train))
            ids = tok.encode("\n".join(ln for ln in held if set(ln) <= set(tok.alphabet)))
            hold = torch.tensor(ids[:len(ids) // 48 * 48]).reshape(-1, 48)
            cfg = {**base, "data": {"name": path}, "discrete": {"seq_len": 48, "text_mode": "stream", "holdout": 0.0}}
            kb = os.path.getsize(path) // 1000
            lines += compare(f"text ({kb} kB of docstrings, rows of L = 48 characters)",
                             cfg, hold, a.budget, root, gen_nll, a.steps, max(a.samples // 4, 16), curve_every=500,
                             curves=curves)
    lines.append(f"Load average at the end {os.getloadavg()[0]:.1f}.")
    text = "\n".join(lines)
    if a.plot and curves:
        plot_curves(curves, a.plot)
    print("\n" + text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
