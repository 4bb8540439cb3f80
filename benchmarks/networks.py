"""Throughput and peak memory of the 32x32 U-Nets: training steps and sampling-loop evaluations.

    python benchmarks/networks.py                       # CUDA if available, else CPU
    python benchmarks/networks.py --device cpu --batch 8 --iters 3
    python benchmarks/networks.py --config cifar10 --batch 128   # the papers' CIFAR-10 sizes

On CUDA every model runs in three modes: fp32, bf16 autocast, and bf16 autocast + torch.compile
(channels_last throughout); the sampling loop is also run once under
`torch.cuda.set_sync_debug_mode("error")` to confirm it never synchronises with the host.
On CPU only fp32 runs, by default with the "small" configuration (ch=32, the papers' depths) at
batch 8, since batch 128 with the 36-108M-parameter CIFAR-10 networks is too slow on a few cores;
the images/s and per-image figures from those few iterations are what is printed.

train img/s: AdamW steps on a denoising loss ||net(x + sigma z, log sigma) - z||^2.
sample img/s: network evaluations per second per image in a sampler-like loop
(x <- x - h * net(x, c)); a sampler with N steps produces img/s / N images per second.
peak mem: torch.cuda.max_memory_allocated on CUDA, the process's peak RSS on CPU.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from scoresde.nets import count_parameters, get_model  # noqa: E402
from scoresde.nets.cuda import autocast, prepare_model, to_channels_last  # noqa: E402

CONFIGS = {
    "cifar10": {"ddpm_unet": {}, "ddpmpp": {}, "ncsnpp": {}},
    "small": {"ddpm_unet": {"ch": 32}, "ddpmpp": {"ch": 32}, "ncsnpp": {"ch": 32}},
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench(name, cfg, mode, device, batch, iters, warmup, check_sync):
    torch.manual_seed(0)
    net = get_model(name, data_shape=(3, 32, 32), **cfg)
    nparams = count_parameters(net)
    run = prepare_model(net, device, channels_last=True, compile=(mode == "bf16+compile"))
    amp = mode != "fp32"
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4)
    x0 = to_channels_last(torch.randn(batch, 3, 32, 32, device=device))
    sigma = torch.exp(torch.randn(batch, device=device))  # (B,)
    z = to_channels_last(torch.randn_like(x0))

    def train_step():
        with autocast(device, amp):
            loss = (run(x0 + sigma[:, None, None, None] * z, sigma.log()) - z).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def sample_loop(n):
        x, c = x0.clone(), sigma.log()
        for _ in range(n):  # no .item() / host reads in the loop
            with autocast(device, amp):
                x = x - 0.01 * run(x, c)
        return x

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
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
    return nparams, train_ips, sample_ips, peak_mb(device), sync_ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--config", choices=sorted(CONFIGS), default=None, help="default: cifar10 on CUDA, small on CPU")
    p.add_argument("--batch", type=int, default=None, help="default: 128 on CUDA, 8 on CPU")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default 20 CUDA, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations (default 5 CUDA / 1 CPU)")
    p.add_argument("--models", default="ddpm_unet,ddpmpp,ncsnpp")
    p.add_argument("--modes", default=None, help="comma list of fp32,bf16,bf16+compile (CUDA default: all)")
    a = p.parse_args(argv)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    cuda = device.type == "cuda"
    config = a.config or ("cifar10" if cuda else "small")
    batch = a.batch or (128 if cuda else 8)
    iters = a.iters or (20 if cuda else 3)
    warmup = a.warmup if a.warmup is not None else (5 if cuda else 1)
    modes = a.modes.split(",") if a.modes else (["fp32", "bf16", "bf16+compile"] if cuda else ["fp32"])
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # true fp32
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = f"CPU, {torch.get_num_threads()} threads"
    print(f"# networks benchmark: {dev_name}, torch {torch.__version__}, 32x32x3, batch {batch}, "
          f"config '{config}', {iters} timed iterations after {warmup} warm-up")
    if not cuda:
        print("# CPU: fp32 only; figures are per-image throughputs from a few iterations"
              + (" of the small (ch=32) configuration, not the CIFAR-10 sizes" if config == "small" else ""))
    hdr = f"{'model':<10} {'params':>9} {'mode':<13} {'train img/s':>11} {'sample img/s':>12} {'peak mem MB':>11} {'no-sync':>7}"
    print(hdr)
    print("-" * len(hdr))
    for name in a.models.split(","):
        for mode in modes:
            try:
                n, tr, sa, mem, ok = bench(name, CONFIGS[config][name], mode, device, batch, iters, warmup, True)
                print(f"{name:<10} {n / 1e6:>8.2f}M {mode:<13} {tr:>11.1f} {sa:>12.1f} {mem:>11.0f} {ok:>7}", flush=True)
            except Exception as e:  # e.g. torch.compile unavailable: report and go on
                print(f"{name:<10} {'':>9} {mode:<13} failed: {type(e).__name__}: {str(e)[:80]}", flush=True)


if __name__ == "__main__":
    main()
