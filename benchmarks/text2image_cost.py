"""The cost of cross-attention in a training step of the digits U-Net (configs/digits.toml) against the same
U-Net without it, side by side (issue 28's goal: at most 1.25x on CPU).

    python benchmarks/text2image_cost.py [--batch 64] [--steps 10] [--rounds 5] [--shape 1,16,32] [--learning]
    python benchmarks/text2image_cost.py --shape 2,8,16       # the recipe's latents (configs/digitpairs.toml)

One step = the DSM loss of a batch (`ss.dsm_loss`), its backward pass and an Adam update, on the two-digit
canvas (1 x 16 x 32) by default. The variants alternate step by step (process CPU seconds, one thread), so
that a loaded machine slows all of them alike; each round's ratio is paired, the table gives their median:
  - plain:        the digits U-Net, unconditional;
  - xattn:        the same U-Net with `context_dim=64` (the default placement: an LDM spatial transformer in
                  the middle block, feed-forward x2) attending to a fixed (B, 32, 64) context, padding masked;
  - xattn+text:   the whole text-conditional step: the prompts (about 30 characters) encoded by the jointly
                  trained `TransformerTextEncoder` (2 blocks, width 64, 32 tokens) inside the step;
  - recipe:       xattn+text with configs/digitpairs.toml's options: the pooled prompt in the time embedding
                  (`context_pool`) and place embeddings on the spatial transformer's tokens (`context_pos`);
  - ldm-lowest:   LDM-like placement, what the default avoids: also after every block of the lowest resolution
                  (context_resolutions = [H / 2]), feed-forward x4.
Printed: the median ms per step of each, and the median of its per-round ratio to `plain`.

With `--learning`, also a check that the text path learns what only word order tells: 8x8 images with the
left or the right half bright, captioned "one left of zero" or "zero left of one" (the same characters);
a small U-Net with the default cross-attention and a jointly trained encoder, 400 steps; printed: the
fraction of 64 guided samples per prompt whose bright half is the one the prompt names, for w = 0, 1, 3
(0.5 is chance).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import scoresde as ss
from scoresde._common.toml import load_toml
from scoresde.data.datasets import Dataset
from scoresde.models.conditioning import Cond
from scoresde.models.text import TransformerTextEncoder

try:
    from common import ROOT
except ImportError:                       # imported as benchmarks.text2image_cost
    from benchmarks.common import ROOT

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digits_unet() -> dict:
    """The [model] keys of configs/digits.toml (its U-Net), without the name."""
    model = dict(load_toml(str(ROOT / "configs" / "digits.toml"))["model"])
    model.pop("name")
    return model


def variants(shape: tuple[int, ...], batch: int, dim: int = 64, length: int = 32) -> dict:
    """name -> (model, score_fn(model) -> the callable dsm_loss trains)."""
    g = torch.Generator().manual_seed(0)
    prompts = [f"a small {WORDS[i % 10]} right of a bold {WORDS[(3 * i) % 10]}"[:length - 1] for i in range(batch)]
    ctx = torch.randn(batch, length, dim, generator=g)
    mask = torch.arange(length)[None] < torch.randint(8, length + 1, (batch, 1), generator=g)
    cond = Cond(context=ctx, context_mask=mask)
    sde, kw = ss.VPSDE(), digits_unet()
    out = {}
    for name, extra, text in (("plain", {}, False), ("xattn", {"context_dim": dim}, False),
                              ("xattn+text", {"context_dim": dim}, True),
                              ("recipe", {"context_dim": dim, "context_pool": True, "context_pos": True}, True),
                              ("ldm-lowest", {"context_dim": dim, "context_resolutions": [shape[1] // 2],
                                              "context_ff_mult": 4.0}, False)):
        torch.manual_seed(0)
        net = ss.get_model("ddpm_unet", data_shape=shape, **kw, **extra)
        enc = TransformerTextEncoder(dim, max_len=length, depth=2, heads=4) if text else None
        model = ss.ScoreModel(net, sde, text_encoder=enc)
        if text:
            fn = (lambda m: lambda x, t: m(x, t, prompts))
        elif extra:
            fn = (lambda m: lambda x, t: m(x, t, cond))
        else:
            fn = (lambda m: m)
        out[name] = (model, fn)
    return out


class Stepper:
    """One variant's training steps (loss, backward, Adam), each timed in process CPU seconds."""

    def __init__(self, model, fn, x: torch.Tensor, seed: int = 0):
        self.model, self.score, self.x = model, fn(model), x
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        self.g = torch.Generator().manual_seed(seed)

    def step(self) -> float:
        """CPU ms of one step."""
        t0 = time.process_time()
        loss = ss.dsm_loss(self.score, self.model.sde, self.x, generator=self.g)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return 1000 * (time.process_time() - t0)


def learning_check(steps: int = 400) -> None:
    """Prompt accuracy of a tiny text model on captions that differ only in word order (see the docstring)."""
    g = torch.Generator().manual_seed(0)
    n = 512
    side = torch.randint(0, 2, (n,), generator=g)                     # 0: left half bright, 1: right half
    x = -torch.ones(n, 1, 8, 8) + 0.1 * torch.randn(n, 1, 8, 8, generator=g)
    x[side == 0, :, :, :4] += 2
    x[side == 1, :, :, 4:] += 2
    prompts = ("one left of zero", "zero left of one")
    ds = Dataset(x, "halves", kind="images", texts=[prompts[s] for s in side.tolist()])
    with tempfile.TemporaryDirectory() as d:
        t0 = time.process_time()
        ss.train({"model": {"name": "ddpm_unet", "ch": 16, "ch_mult": [1, 2], "num_groups": 4, "context_dim": 32,
                            "text_depth": 1, "text_heads": 2},
                  "train": {"steps": steps, "batch_size": 32, "progress": False, "log_every": 100, "ckpt_every": steps,
                            "warmup": 20, "lr": 1e-3}, "sample": {"n": 2, "steps": 2}, "device": "cpu"},
                 data=ds, out=d)
        cpu = time.process_time() - t0
        model, sde = ss.load(d)
    print(f"\nword order: {steps} steps ({cpu:.0f} CPU s); fraction of 64 samples (dpm_solver, 20 steps) whose bright "
          "half is the prompt's\n\n| prompt | w = 0 | w = 1 | w = 3 |\n|---|---:|---:|---:|")
    for want, p in enumerate(prompts):
        row = []
        for w in (0.0, 1.0, 3.0):
            with torch.no_grad():
                s = sde.sample(ss.classifier_free_score(model, w=w, prompt=p), 64, sampler="dpm_solver", steps=20,
                               generator=torch.Generator().manual_seed(1))
            left = s[..., :4].mean((1, 2, 3)) > s[..., 4:].mean((1, 2, 3))
            row.append((left if want == 0 else ~left).float().mean().item())
        print(f"| {p} | " + " | ".join(f"{v:.2f}" for v in row) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="steps timed per variant and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--shape", default="1,16,32", help="C,H,W of the images (the two-digit canvas)")
    ap.add_argument("--learning", action="store_true", help="also the word-order learning check (about 30 CPU s)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    shape = tuple(int(s) for s in a.shape.split(","))
    x = torch.rand(a.batch, *shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    runs = {name: Stepper(model, fn, x) for name, (model, fn) in variants(shape, a.batch).items()}
    for st in runs.values():                              # warm-up
        st.step()
    ms: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(a.rounds):                             # the variants alternate step by step
        spent = dict.fromkeys(runs, 0.0)
        for _ in range(a.steps):
            for name, st in runs.items():
                spent[name] += st.step()
        for name in runs:
            ms[name].append(spent[name] / a.steps)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in ms.items()) + " ms", flush=True)
    print(f"\nbatch {a.batch}, images {'x'.join(map(str, shape))}, digits U-Net (configs/digits.toml), 1 thread, "
          f"{a.rounds} rounds of {a.steps} steps, the variants alternating step by step\n")
    print("| variant | parameters | ms per step (median) | ratio to plain (median of the rounds' ratios) |\n"
          "|---|---:|---:|---:|")
    for name, st in runs.items():
        ratio = statistics.median(m / b for m, b in zip(ms[name], ms["plain"]))
        n = sum(p.numel() for p in st.model.parameters())
        print(f"| {name} | {n:,} | {statistics.median(ms[name]):.1f} | {ratio:.3f} |")
    if a.learning:
        learning_check()

if __name__ == "__main__":
    main()
