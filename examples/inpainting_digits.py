"""Inpainting 8x8 digits by imputation with the replacement method (Song et al. 2021, arXiv:2011.13456, App. I.2).

Trains a small unconditional score model on scikit-learn's digits (scaled to [-1, 1], shape
(1, 8, 8); the first 1597 images, the last 200 are held out), or loads one with --checkpoint, then
fills in (a) the bottom half and (b) a random half of the pixels of held-out digits with
`scoresde.impute`, checks that the known pixels are exact, and saves a grid
(rows: original, masked, inpainted; red = unknown) to out/inpainting_digits/inpainting_digits.png (git-ignored;
--out benchmarks/results regenerates the tracked figure).
As a plausibility check it reports the accuracy of a logistic-regression digit classifier (fit on
the training images) on the inpainted images, next to the masked images filled with the mean image.

    OMP_NUM_THREADS=1 python examples/inpainting_digits.py [--train-steps 4000] [--model mlp|ddpm_unet]
    python examples/inpainting_digits.py --checkpoint RUN_DIR       # a model trained on digits
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import scoresde as ss

N_TRAIN = 1597


def load_digits():
    from sklearn.datasets import load_digits as sk_digits
    bunch = sk_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32)).unsqueeze(1) / 8.0 - 1.0   # 0..16 -> [-1, 1]
    return x, torch.from_numpy(bunch.target.astype(np.int64))


def train(x, model_name: str, steps: int, seed: int):
    torch.manual_seed(seed)
    sde = ss.VPSDE()
    if model_name == "mlp":
        net = ss.get_model("mlp", data_shape=(1, 8, 8), width=512, depth=4)
    else:
        net = ss.get_model("ddpm_unet", data_shape=(1, 8, 8), ch=32, ch_mult=(1, 2), num_res_blocks=1,
                           attn_resolutions=(), dropout=0.0, num_groups=8)
    model = ss.ScoreModel(net, sde)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    ema = ss.EMA(model, decay=0.999)
    g = torch.Generator().manual_seed(seed + 1)
    start = time.perf_counter()
    for i in range(steps):
        x0 = x[torch.randint(0, len(x), (128,), generator=g)]
        loss = ss.dsm_loss(model, sde, x0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ema.update(model)
        if (i + 1) % 1000 == 0:
            print(f"  step {i + 1}: loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)")
    ema.copy_to(model)
    return model.eval(), sde


def masks(n: int, seed: int) -> dict[str, torch.Tensor]:
    bottom = torch.ones(1, 1, 8, 8)
    bottom[..., 4:, :] = 0                                            # rows 4..7 unknown
    g = torch.Generator().manual_seed(seed)
    random = (torch.rand(n, 1, 8, 8, generator=g) < 0.5).float()     # half the pixels known, per image
    return {"bottom half": bottom, "random pixels": random}


# a fresh folder of its own by default (git-ignored); --out benchmarks/results regenerates the tracked figures
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "out", "inpainting_digits")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None, help="run directory of a model trained on digits")
    ap.add_argument("--model", choices=["mlp", "ddpm_unet"], default="mlp")
    ap.add_argument("--train-steps", type=int, default=4000)
    ap.add_argument("--n", type=int, default=12, help="held-out digits to inpaint (shown)")
    ap.add_argument("--n-eval", type=int, default=200, help="held-out digits for the accuracy check")
    ap.add_argument("--steps", type=int, default=500, help="PC steps (reverse diffusion + Langevin)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=OUT, help="output folder (default: out/inpainting_digits/ in the repository)")
    return ap.parse_args(argv)


def main():
    args = parse_args()
    x, labels = load_digits()
    x_train, x_test, y_test = x[:N_TRAIN], x[N_TRAIN:][:args.n_eval], labels[N_TRAIN:][:args.n_eval]
    if args.checkpoint:
        model, sde = ss.load(args.checkpoint)
    else:
        model, sde = train(x_train, args.model, args.train_steps, args.seed)
    from sklearn.linear_model import LogisticRegression
    clf = LogisticRegression(max_iter=2000).fit(x_train.flatten(1).numpy(), labels[:N_TRAIN].numpy())
    mean_image = x_train.mean(0, keepdim=True)
    rows, print_rows = [], []
    for i, (name, mask) in enumerate(masks(len(x_test), args.seed + 7).items()):
        start = time.perf_counter()
        out = ss.impute(sde, model, x_test, mask, steps=args.steps, snr=0.16,
                        generator=torch.Generator().manual_seed(args.seed + 10 + i))
        m = mask.expand_as(x_test).bool()
        assert torch.equal(out[m], x_test[m]), "known pixels must be exact"
        mean_fill = torch.where(m, x_test, mean_image.expand_as(x_test))
        acc = (clf.predict(out.clamp(-1, 1).flatten(1).numpy()) == y_test.numpy()).mean()
        acc_mean = (clf.predict(mean_fill.flatten(1).numpy()) == y_test.numpy()).mean()
        mse = (out.clamp(-1, 1) - x_test)[~m].square().mean().item()
        mse_mean = (mean_fill - x_test)[~m].square().mean().item()
        print_rows.append(f"| {name} | {m.float().mean().item():.2f} | {acc:.3f} | {acc_mean:.3f} | {mse:.3f} | "
                          f"{mse_mean:.3f} | {time.perf_counter() - start:.0f} |")
        k = slice(0, args.n)
        rows.append((name, x_test[k], torch.where(m, x_test, torch.nan)[k], out[k]))
    acc_full = (clf.predict(x_test.flatten(1).numpy()) == y_test.numpy()).mean()
    print(f"\ninpainting {len(x_test)} held-out digits, {args.steps} PC steps; known pixels exact: yes")
    print(f"classifier accuracy on the original images: {acc_full:.3f}")
    print("| mask | known fraction | accuracy (inpainted) | accuracy (mean fill) | MSE unknown (inpainted) "
          "| MSE unknown (mean fill) | seconds |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(print_rows))
    save_grid(rows, os.path.join(args.out, "inpainting_digits.png"))


def save_grid(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(os.path.dirname(path), exist_ok=True)
    n = rows[0][1].shape[0]
    fig, axes = plt.subplots(3 * len(rows), n, figsize=(0.8 * n, 0.9 * 3 * len(rows)))
    for r, (name, orig, masked, filled) in enumerate(rows):
        for j, (title, imgs) in enumerate([("original", orig), ("masked", masked), ("inpainted", filled)]):
            for c in range(n):
                ax = axes[3 * r + j, c]
                img = ((imgs[c, 0].clamp(-1, 1) + 1) / 2).numpy()                  # [0, 1], NaN = unknown
                rgb = 1 - np.stack([img, img, img], -1)                             # dark ink on white
                rgb[np.isnan(img)] = (0.85, 0.2, 0.2)                             # unknown pixels in red
                ax.imshow(rgb, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(f"{title}\n({name})" if j == 0 else title, fontsize=6)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=130)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
