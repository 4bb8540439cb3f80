"""Train the `digits` feature network on the fixed train split and report its held-out accuracy and floors.

    python -m scoresde.evaluation.metrics.train_digits                   # writes scoresde/metrics/digits_classifier.safetensors
    python -m scoresde.evaluation.metrics.train_digits --out /tmp/c.safetensors --epochs 5

Adam with a cosine learning rate, weight decay, and random shifts of up to one pixel (zero padding
is -1, the background) as augmentation; deterministic for a seed on CPU. After training it prints
the held-out accuracy and the floor of each metric: the held-out split against the train split
in the new features.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from scoresde.evaluation.metrics.digits import DIGITS_WEIGHTS, DigitsClassifier, digits_split
from scoresde.evaluation.metrics.evaluate import floor_metrics


__all__ = ["train_digits_classifier", "main"]


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image moved by up to one pixel in each direction, the uncovered border filled with -1."""
    B, _, H, W = x.shape
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2, B), generator=g)
    rows = (dy[:, None] + torch.arange(H))[:, None, :, None].expand(B, 1, H, W + 2)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(W))[:, None, None, :].expand(B, 1, H, W)
    return out.gather(3, cols)


def train_digits_classifier(x, y, *, epochs: int = 100, batch_size: int = 64, lr: float = 3e-3,
                            weight_decay: float = 1e-3, seed: int = 0, progress: bool = True,
                            **net_config) -> DigitsClassifier:
    """A `DigitsClassifier` trained on images x (N, 1, 8, 8) in [-1, 1] with labels y (N,).

    Afterwards the features are rescaled by one constant so that their mean variance over `x` is 1
    (the logits are unchanged: ReLU(c f) = c ReLU(f) and the head's weights are divided by c), which
    keeps KID's polynomial kernel (x.y / d + 1)^3 in the range it was designed for.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = DigitsClassifier(**net_config)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    net.train()
    with tqdm(total=steps, desc="digits classifier", disable=not progress) as bar:
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=g).split(batch_size):
                _, logits = net(_shift(x[idx], g))
                loss = F.cross_entropy(logits, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    net.requires_grad_(False).eval()
    with torch.no_grad():
        c = net(x)[0].var(0).mean().rsqrt()                       # mean feature variance -> 1
        net.body[-1].weight.mul_(c), net.body[-1].bias.mul_(c), net.head[-1].weight.div_(c)
    return net


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DIGITS_WEIGHTS, help="safetensors file to write")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    from safetensors.torch import save_file
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = digits_split()
    start = time.perf_counter()
    net = train_digits_classifier(x_train, y_train, epochs=args.epochs, seed=args.seed, progress=args.progress)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        acc = (net(x_test)[1].argmax(1) == y_test).double().mean().item()
        train_acc = (net(x_train)[1].argmax(1) == y_train).double().mean().item()
    meta = {"config": json.dumps(net.config), "heldout_accuracy": f"{acc:.4f}", "train_accuracy": f"{train_acc:.4f}",
            "split": "sklearn load_digits; first 359 held out, last 1438 train", "epochs": str(args.epochs),
            "seed": str(args.seed), "torch": torch.__version__}
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, args.out, metadata=meta)
    floors = floor_metrics(net, x_train, x_test)
    report = {"heldout_accuracy": acc, "train_accuracy": train_acc, "train_seconds": round(seconds, 1), **floors}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
