"""Throughput and peak memory of the score networks: the 32x32 U-Nets, and our DiT beside diffusers'
`DiTTransformer2DModel` of the same configuration.

    python benchmarks/networks.py                       # CUDA if available, else CPU
    python benchmarks/networks.py --device cpu --batch 8 --iters 3
    python benchmarks/networks.py --config cifar10 --batch 128   # the papers' CIFAR-10 sizes
    python benchmarks/networks.py --models dit --dit DiT-S/2     # DiT only: ours vs diffusers, 32x32x4

On CUDA every model runs in three modes: fp32, bf16 autocast, and bf16 autocast + torch.compile
(channels_last for the U-Nets); our sampling loop is also run once under
`torch.cuda.set_sync_debug_mode("error")` to confirm it never synchronises with the host.
On CPU only fp32 runs, by default with the "small" U-Net configuration (ch=32, the papers' depths)
at batch 8, since batch 128 with the 36-108M-parameter CIFAR-10 networks is too slow on a few cores;
the images/s and per-image figures from those few iterations are what is printed.

DiT (Peebles & Xie 2023, arXiv:2212.09748): `--dit` preset (default DiT-S/2) on 4x32x32 latents,
class-conditional on 1000 classes, learn_sigma off; diffusers' model gets the same depth, width,
heads, patch, classes and output channels (it carries its own timestep/label embedder in every
block, so its parameter count differs). Both are built in one process and timed in alternating
iterations (A B B A ...), so that load from other processes hits both alike (on one CPU thread by
the process's CPU time, which leaves out the time other processes get); the table gives the best
(least disturbed) iteration of each, `ratio` is our time over diffusers' (<= 1: ours as fast or
faster), and a line below gives the same ratios of the median times. Their
peak memory comes from one training step and one evaluation of each in a fresh process.

train img/s: AdamW steps on a denoising loss ||net(x + sigma z, c) - z||^2.
sample img/s: network evaluations per second per image in a sampler-like loop
(x <- x - h * net(x, c)); a sampler with N steps produces img/s / N images per second.
peak mem: torch.cuda.max_memory_allocated on CUDA; on CPU the peak RSS above the RSS the process had
before building the model (every case runs in a fresh process, so cases do not share a peak).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from scoresde.nets import count_parameters, get_model  # noqa: E402
from scoresde.models.nets.device import autocast, prepare_model, to_channels_last

CONFIGS = {
    "cifar10": {"ddpm_unet": {}, "ddpmpp": {}, "ncsnpp": {}},
    "small": {"ddpm_unet": {"ch": 32}, "ddpmpp": {"ch": 32}, "ncsnpp": {"ch": 32}},
}
DIT_SHAPE, DIT_CLASSES = (4, 32, 32), 1000


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def rss_mb() -> float:
    """The process's current resident set size (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def peak_mb(device, base: float) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base  # KiB on Linux


def build(name, cfg):
    """(module, adapter(module, x, c, y) -> tensor, data shape, classes or None) for a registry name or
    'diffusers_dit'."""
    if name == "diffusers_dit":
        from diffusers import DiTTransformer2DModel
        arch = get_model("dit", data_shape=DIT_SHAPE, preset=cfg["preset"], num_classes=DIT_CLASSES).config
        net = DiTTransformer2DModel(num_attention_heads=arch["num_heads"],
                                    attention_head_dim=arch["hidden_size"] // arch["num_heads"],
                                    in_channels=DIT_SHAPE[0], out_channels=DIT_SHAPE[0], num_layers=arch["depth"],
                                    sample_size=DIT_SHAPE[1], patch_size=arch["patch_size"],
                                    num_embeds_ada_norm=DIT_CLASSES)
        return net, lambda m, x, c, y: m(x, timestep=c, class_labels=y).sample, DIT_SHAPE, DIT_CLASSES
    if name == "dit":
        net = get_model("dit", data_shape=DIT_SHAPE, num_classes=DIT_CLASSES, **cfg)
        return net, lambda m, x, c, y: m(x, c, y), DIT_SHAPE, DIT_CLASSES
    net = get_model(name, data_shape=(3, 32, 32), **cfg)
    return net, lambda m, x, c, y: m(x, c), (3, 32, 32), None


def bench(name, cfg, mode, device, batch, iters, warmup, check_sync):
    device = torch.device(device)
    torch.manual_seed(0)
    base = rss_mb()
    net, adapter, shape, classes = build(name, cfg)
    nparams = count_parameters(net)
    transformer = "dit" in name
    run = prepare_model(net, device, channels_last=not transformer, compile=(mode == "bf16+compile"))
    call = lambda x, c, y: adapter(run, x, c, y)  # noqa: E731
    amp = mode != "fp32"
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4)
    x0 = torch.randn(batch, *shape, device=device)
    x0 = x0 if transformer else to_channels_last(x0)
    t = torch.rand(batch, device=device)
    sigma = torch.exp(torch.randn(batch, device=device))  # (B,)
    c = 999 * t if transformer else sigma.log()           # DiT timesteps / log sigma
    y = torch.randint(0, classes, (batch,), device=device) if classes else None
    z = torch.randn_like(x0)

    def train_step():
        with autocast(device, amp):
            loss = (call(x0 + sigma[:, None, None, None] * z, c, y) - z).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def sample_loop(n):
        x = x0.clone()
        for _ in range(n):  # no .item() / host reads in the loop
            with autocast(device, amp):
                x = x - 0.01 * call(x, c, y)
        return x

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    net.train()
    for _ in range(warmup):
        train_step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        train_step()
    sync(device)
    train_ips = batch * iters / (time.perf_counter() - t0)
    net.eval()
    sample_loop(warmup)
    sync(device)
    t0 = time.perf_counter()
    sample_loop(iters)
    sync(device)
    sample_ips = batch * iters / (time.perf_counter() - t0)
    sync_ok = "-"
    if check_sync and device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        try:
            sample_loop(2)
            sync_ok = "ok"
        except RuntimeError:
            sync_ok = "SYNC"
        finally:
            torch.cuda.set_sync_debug_mode("default")
        sync(device)
    return nparams, train_ips, sample_ips, peak_mb(device, base), sync_ok


def _isolated(fn):
    """`fn` run in a fresh process (its own peak memory, no state left from other cases)."""
    def call(*args):
        with mp.get_context("spawn").Pool(1) as pool:
            return pool.apply(fn, args)
    return call


isolated = _isolated(bench)


def dit_pair(preset, mode, device, batch, iters, warmup):
    """Ours and diffusers' DiT timed in alternating iterations of one process, so that both see the
    same machine state: {label: (params, [train step s], [sampling evaluation s], no-sync)}."""
    device = torch.device(device)
    amp = mode != "fp32"
    nets, calls, opts, nparams = {}, {}, {}, {}
    for label, name in (("dit (ours)", "dit"), ("diffusers", "diffusers_dit")):
        torch.manual_seed(0)
        net, adapter, shape, classes = build(name, {"preset": preset})
        run = prepare_model(net, device, channels_last=False, compile=(mode == "bf16+compile"))
        nets[label], nparams[label] = net, count_parameters(net)
        calls[label] = (lambda r, ad: lambda x, c, y: ad(r, x, c, y))(run, adapter)
        opts[label] = torch.optim.AdamW(net.parameters(), lr=2e-4)
    x0 = torch.randn(batch, *shape, device=device)
    c = 999 * torch.rand(batch, device=device)
    sigma = torch.exp(torch.randn(batch, device=device))
    y = torch.randint(0, classes, (batch,), device=device)
    z = torch.randn_like(x0)
    state = {label: x0.clone() for label in nets}

    def train_step(label):
        with autocast(device, amp):
            loss = (calls[label](x0 + sigma[:, None, None, None] * z, c, y) - z).square().mean()
        opts[label].zero_grad(set_to_none=True)
        loss.backward()
        opts[label].step()

    @torch.no_grad()
    def sample_step(label):
        with autocast(device, amp):
            state[label] = state[label] - 0.01 * calls[label](state[label], c, y)

    # one CPU thread: process CPU time, which leaves out the time the OS gives other processes on a
    # shared machine (on an idle one it equals wall time); otherwise wall time
    clock = time.process_time if device.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter
    times = {label: {"train": [], "sample": []} for label in nets}
    for kind, step in (("train", train_step), ("sample", sample_step)):
        for label, net in nets.items():
            net.train(kind == "train")
            for _ in range(warmup):
                step(label)
        for i in range(iters):
            for label in (list(nets) if i % 2 == 0 else list(nets)[::-1]):   # ABBA: no order bias
                sync(device)
                t0 = clock()
                step(label)
                sync(device)
                times[label][kind].append(clock() - t0)
    sync_ok = {label: "-" for label in nets}
    if device.type == "cuda":
        label = "dit (ours)"
        torch.cuda.set_sync_debug_mode("error")
        try:
            sample_step(label)
            sync_ok[label] = "ok"
        except RuntimeError:
            sync_ok[label] = "SYNC"
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return {label: (nparams[label], times[label]["train"], times[label]["sample"], sync_ok[label]) for label in nets}


def run_case(label, name, cfg, mode, device, a, check_sync=True, quiet=False):
    try:
        res = (isolated if a.isolate else bench)(name, cfg, mode, str(device), a.batch, a.iters, a.warmup, check_sync)
    except Exception as e:  # e.g. torch.compile unavailable: report and go on
        print(f"{label:<14} {'':>9} {mode:<13} failed: {type(e).__name__}: {str(e)[:80]}", flush=True)
        return None
    if not quiet:
        print_row(label, mode, res)
    return res


def print_row(label, mode, res):
    n, tr, sa, mem, ok = res
    print(f"{label:<14} {n / 1e6:>8.2f}M {mode:<13} {tr:>11.2f} {sa:>12.2f} {mem:>11.0f} {ok:>7}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--config", choices=sorted(CONFIGS), default=None,
                   help="U-Nets; default: cifar10 on CUDA, small on CPU")
    p.add_argument("--batch", type=int, default=None, help="default: 128 on CUDA, 8 on CPU")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default 20 CUDA, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations (default 5 CUDA / 1 CPU)")
    p.add_argument("--models", default="ddpm_unet,ddpmpp,ncsnpp,dit", help="comma list; dit = ours vs diffusers")
    p.add_argument("--dit", default="DiT-S/2", help="DiT preset for the comparison")
    p.add_argument("--dit-iters", type=int, default=None,
                   help="DiT: timed iterations of each model, alternating (default 8 CPU, 20 CUDA)")
    p.add_argument("--modes", default=None, help="comma list of fp32,bf16,bf16+compile (CUDA default: all)")
    p.add_argument("--no-isolate", dest="isolate", action="store_false", help="run every case in this process")
    a = p.parse_args(argv)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    cuda = device.type == "cuda"
    config = a.config or ("cifar10" if cuda else "small")
    a.batch = a.batch or (128 if cuda else 8)
    a.iters = a.iters or (20 if cuda else 3)
    a.warmup = a.warmup if a.warmup is not None else (5 if cuda else 1)
    modes = a.modes.split(",") if a.modes else (["fp32", "bf16", "bf16+compile"] if cuda else ["fp32"])
    models = a.models.split(",")
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # true fp32
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = f"CPU, {torch.get_num_threads()} threads"
    print(f"# networks benchmark: {dev_name}, torch {torch.__version__}, batch {a.batch}, "
          f"{a.iters} timed iterations after {a.warmup} warm-up")
    if not cuda:
        print("# CPU: fp32 only; figures are per-image throughputs from a few iterations")
    hdr = (f"{'model':<14} {'params':>9} {'mode':<13} {'train img/s':>11} {'sample img/s':>12} {'peak mem MB':>11} "
           f"{'no-sync':>7}")
    unets = [m for m in models if m != "dit"]
    if unets:
        print(f"\n## U-Nets, 3x32x32, config '{config}'"
              + (" (ch=32, not the CIFAR-10 sizes)" if config == "small" else ""))
        print(hdr)
        print("-" * len(hdr))
        for name in unets:
            for mode in modes:
                run_case(name, name, CONFIGS[config][name], mode, device, a)
    if "dit" in models:
        import statistics

        import diffusers
        iters = a.dit_iters or (20 if cuda else 8)
        print(f"\n## {a.dit}, 4x32x32 latents, 1000 classes: ours vs diffusers {diffusers.__version__} "
              f"DiTTransformer2DModel; best of {iters} alternating iterations after {a.warmup} warm-up"
              + ("; timed by process CPU time (1 thread)" if not cuda and torch.get_num_threads() == 1 else ""))
        print(hdr + f" {'ratio train':>11} {'ratio sample':>12}")
        print("-" * (len(hdr) + 25))
        for mode in modes:
            try:
                pair = (_isolated(dit_pair) if a.isolate else dit_pair)(a.dit, mode, str(device), a.batch, iters,
                                                                      a.warmup)
            except Exception as e:  # e.g. torch.compile unavailable: report and go on
                print(f"{'dit pair':<14} {'':>9} {mode:<13} failed: {type(e).__name__}: {str(e)[:80]}", flush=True)
                continue
            best = {label: (min(r[1]), min(r[2])) for label, r in pair.items()}
            med = {label: (statistics.median(r[1]), statistics.median(r[2])) for label, r in pair.items()}
            for label, name in (("dit (ours)", "dit"), ("diffusers", "diffusers_dit")):
                # peak memory of one training step and one evaluation, in a fresh process of its own
                mem = run_case(label, name, {"preset": a.dit}, mode, device,
                               argparse.Namespace(**{**vars(a), "iters": 1, "warmup": 0}), check_sync=False, quiet=True)
                n, _, _, ok = pair[label]
                line = (f"{label:<14} {n / 1e6:>8.2f}M {mode:<13} {a.batch / best[label][0]:>11.2f} "
                        f"{a.batch / best[label][1]:>12.2f} {mem[3] if mem else float('nan'):>11.0f} {ok:>7}")
                if label == "dit (ours)":                                   # our time / diffusers' time
                    line += (f" {best[label][0] / best['diffusers'][0]:>11.3f} "
                             f"{best[label][1] / best['diffusers'][1]:>12.3f}")
                print(line, flush=True)
            o, d = med["dit (ours)"], med["diffusers"]
            print(f"{'':<14} {'':>9} {mode:<13} median times, ours / diffusers: train {o[0] / d[0]:.3f}, "
                  f"sample {o[1] / d[1]:.3f}", flush=True)

if __name__ == "__main__":
    main()
