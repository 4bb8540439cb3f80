"""A corpus of small hostile inputs, written at run time (no bomb is committed), and a runner that feeds
them to scoresde's loaders in a subprocess under an address-space limit (RLIMIT_AS), so that a loader
that allocates what a file claims fails there instead of exhausting the machine.

Every file is at most a few hundred KB but claims gigabytes: in an `.npy`/`.npz` header or a zip
directory, an image header, a checkpoint's metadata, a diffusers config, or a weights file too small for
the network its arguments describe.

    python tests/hostile.py DIR                 # write the corpus into DIR and list it
    python tests/hostile.py DIR --measure       # and run each file's loader alone: outcome and peak RSS

`--python "PYTHONPATH=/old /venv/bin/python -P"` measures another checkout (only the public API is used).
`tests/test_hostile.py` runs every loader on every file and asserts a clean one-line refusal.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

LIMIT = 2 << 30           # RLIMIT_AS of the child: 2 GiB of address space
HERE = os.path.dirname(os.path.abspath(__file__))

# loader name -> the expression the child evaluates on the path `p` (the public API, plus load_mask)
LOADERS = {
    "load_dataset": "ss.load_dataset(p)",
    "load_tokens": "ss.discrete.load_tokens(p)",
    "load_stats": "ss.metrics.load_stats(p)",
    "load": "ss.load(p)",
    "load_autoencoder": "ss.load_autoencoder(p)",
    "load_dit": "ss.load_dit(p)",
    "from_diffusers": "ss.from_diffusers(p)",
    "load_mask": "load_mask(p, (1, 3, 8, 8))",
    "train": "train_auto(p)",
}


@dataclass(frozen=True)
class Attack:
    name: str        # the file (or folder) name in the corpus
    loader: str      # the loader it targets
    expect: str      # a regular expression the targeted loader's one-line refusal matches
    claim: str       # what it claims, for the report


# --- writers ---------------------------------------------------------------------------------------------
def _npy_header(shape, descr: str) -> bytes:
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def _npz(path: str, members: dict[str, bytes | np.ndarray]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for key, v in members.items():
            if isinstance(v, np.ndarray):
                with z.open(f"{key}.npy", "w") as f:
                    np.lib.format.write_array(f, v, allow_pickle=v.dtype.hasobject)
            else:
                z.writestr(f"{key}.npy", v)


def _zeros_npz(path: str, shape, dtype=np.uint8) -> None:
    """A real deflate bomb: an array of zeros, streamed (nothing large is held while writing)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open("x.npy", "w", force_zip64=True) as f:
            f.write(_npy_header(shape, np.dtype(dtype).str))
            chunk = bytes(1 << 24)
            for i in range(0, nbytes, len(chunk)):
                f.write(chunk[:min(len(chunk), nbytes - i)])


def _png(path: str, w: int, h: int, rows: int | None = None) -> None:
    """An 8-bit grey PNG of w x h: all `rows` of zeros deflated (a real bomb), or a few (a header only)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    comp, row = zlib.compressobj(9), bytes(w + 1)                  # filter byte 0, then w zeros
    idat = b"".join(comp.compress(row) for _ in range(h if rows is None else rows)) + comp.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _checkpoints(root: str) -> None:
    import copy
    import torch
    from scoresde.runs.checkpoint import find_checkpoint, read_checkpoint, save_checkpoint
    # the fixture run predates metadata digests: read it with the opt-in; the files written here carry digests
    tensors, meta = read_checkpoint(find_checkpoint(os.path.join(HERE, "fixtures", "main_run")), verify=False)

    def save(name, edit, t=tensors):
        m = copy.deepcopy(meta)
        edit(m)
        save_checkpoint(os.path.join(root, name), t, m)
    save("ckpt_sde_N.safetensors", lambda m: m["sde"]["config"].update(N=500_000_000))
    save("ckpt_depth.safetensors", lambda m: m["model"]["config"].update(depth=1_000_000))
    save("ckpt_width.safetensors", lambda m: m["model"]["config"].update(width=60_000))

    def tokens(m):
        m.update(task="masked", tokens={"vocab_size": 20_000_000, "eos_id": None},
                 process={"schedule": "linear", "eps": 1e-3})
        m["model"] = {"name": "seq_transformer", "config": {"vocab_size": 20_000_001, "seq_len": 16,
                                                            "num_outputs": 20_000_000, "width": 32, "depth": 1,
                                                            "heads": 2}}
    save("ckpt_vocab.safetensors", tokens)

    def autoencoder(m):
        m.update(task="autoencoder", autoencoder={"scale_factor": 1.0})
        m["model"] = {"name": "vae", "config": {"data_shape": [1, 8, 8], "ch": 1_000_000, "ch_mult": [1, 2],
                                                "num_res_blocks": 1, "z_channels": 2, "num_groups": 1}}
    save("ckpt_autoencoder_ch.safetensors", autoencoder, {"model/vae.x": torch.zeros(4)})


def _diffusers(root: str) -> None:
    import torch
    from diffusers import AutoencoderKL, DDPMPipeline, DDPMScheduler, UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(4, 8),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=2)

    def pipeline(name, sched_edit=None, unet_edit=None):
        d = os.path.join(root, name)
        DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(d)
        for sub, edit in (("scheduler/scheduler_config.json", sched_edit), ("unet/config.json", unet_edit)):
            if edit:
                p = os.path.join(d, sub)
                with open(p) as f:
                    cfg = json.load(f)
                edit(cfg)
                with open(p, "w") as f:
                    json.dump(cfg, f)
    pipeline("ddpm_timesteps_1e9", sched_edit=lambda c: c.update(num_train_timesteps=1_000_000_000))
    pipeline("unet_layers_per_block_1e5", unet_edit=lambda c: c.update(layers_per_block=100_000))
    pipeline("unet_block_out_channels_1e6", unet_edit=lambda c: c.update(block_out_channels=[1_000_000, 1_000_000]))
    pipeline("unet_wider_than_its_weights", unet_edit=lambda c: c.update(block_out_channels=[256, 512],
                                                                          norm_num_groups=32))
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=2,
                        norm_num_groups=2, sample_size=8)
    d = os.path.join(root, "vae_layers_per_block_1e5")
    vae.save_pretrained(d)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    cfg["layers_per_block"] = 100_000
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)


def make_corpus(root: str, diffusers: bool = True) -> list[Attack]:
    """Write the corpus into `root`; the attacks it holds (diffusers ones only when diffusers is importable)."""
    import torch
    os.makedirs(root, exist_ok=True)
    j = lambda name: os.path.join(root, name)   # noqa: E731
    attacks = []

    def add(name, loader, expect, claim):
        attacks.append(Attack(name, loader, expect, claim))

    # arrays (.npy / .npz)
    _npz(j("forged_header.npz"), {"x": _npy_header((100_000, 10_000), "<f4") + os.urandom(4000)})
    add("forged_header.npz", "load_dataset", r"claims .* but the file holds", "4 KB .npz, header claims 3.7 GiB")
    _zeros_npz(j("zeros_bomb.npz"), (256, 1 << 20))
    add("zeros_bomb.npz", "load_dataset", r"memory budget", "256 KB .npz = 256 MiB of deflated zeros")
    with open(j("values_1e12.npy"), "wb") as f:
        f.write(_npy_header((1_000_000, 1_000_000), "<f8"))
    add("values_1e12.npy", "load_dataset", r"claims .* but the file holds", ".npy header claims 1e12 values")
    np.save(j("objects.npy"), np.array([[1, "a"]], dtype=object), allow_pickle=True)
    add("objects.npy", "load_dataset", r"object", ".npy of Python objects")
    np.savez(j("nan_labels.npz"), x=np.zeros((4, 2), np.float32), y=np.array([0, np.nan, 1, 2]))
    add("nan_labels.npz", "load_dataset", r"NaN", "labels with a NaN")
    np.savez(j("label_1e9.npz"), x=np.zeros((4, 2), np.float32), y=np.array([0, 1, 2, 1_000_000_000]))
    add("label_1e9.npz", "train", r"num_classes.*1000000000", "a label 1e9 with num_classes = auto")
    # FID statistics
    _npz(j("stats_mismatched.npz"), {"mu": np.zeros(2048), "sigma": _npy_header((25_000, 25_000), "<f8")})
    add("stats_mismatched.npz", "load_stats", r"expected mu \(F,\) and sigma \(F, F\)", "stats: 25000^2 sigma, 2048 mu")
    _npz(j("stats_forged.npz"), {"mu": np.zeros(60_000), "sigma": _npy_header((60_000, 60_000), "<f8")})
    add("stats_forged.npz", "load_stats", r"claims .* but the file holds", "stats: sigma header claims 27 GiB")
    _npz(j("stats_objects.npz"), {"mu": np.array([1, "a"], dtype=object), "sigma": np.zeros((2, 2))})
    add("stats_objects.npz", "load_stats", r"object", "stats: object array mu")
    # token ids and masks
    np.save(j("token_id_2e7.npy"), np.array([[0, 1, 2, 20_000_000]] * 4, dtype=np.int64))
    add("token_id_2e7.npy", "load_tokens", r"largest vocabulary", "384-byte token .npy holding id 2e7")
    np.save(j("mask_objects.npy"), np.full((1, 3, 8, 8), None, dtype=object), allow_pickle=True)
    add("mask_objects.npy", "load_mask", r"object", "mask .npy of Python objects")
    with open(j("mask_truncated.npy"), "wb") as f:
        f.write(_npy_header((1, 3, 8, 8), "|b1"))
    add("mask_truncated.npy", "load_mask", r"claims .* but the file holds", "mask .npy header without its data")
    # images
    os.makedirs(j("png_30000"), exist_ok=True)
    _png(j("png_30000/bomb.png"), 30_000, 30_000, rows=16)
    add("png_30000", "load_dataset", r"decompression bomb", "a PNG header of 30000^2")
    os.makedirs(j("png_13000x4"), exist_ok=True)
    _png(j("png_13000x4/0.png"), 13_000, 13_000)
    for i in range(1, 4):
        shutil.copyfile(j("png_13000x4/0.png"), j(f"png_13000x4/{i}.png"))
    add("png_13000x4", "load_dataset", r"pixel budget", "four 165 KB PNGs of 13000^2 zeros")
    os.makedirs(j("png_4096x64"), exist_ok=True)
    _png(j("png_4096x64/0.png"), 4096, 4096)
    for i in range(1, 64):
        shutil.copyfile(j("png_4096x64/0.png"), j(f"png_4096x64/{i}.png"))
    add("png_4096x64", "load_dataset", r"memory budget", "64 PNGs of 4096^2 zeros (1.1 Gpx)")
    # checkpoints
    _checkpoints(root)
    add("ckpt_sde_N.safetensors", "load", r"sde\.config\.N", "checkpoint metadata sde.N = 5e8")
    add("ckpt_depth.safetensors", "load", r"model\.config\.depth", "checkpoint metadata depth = 1e6")
    add("ckpt_width.safetensors", "load", r"has shape .* in the file", "checkpoint metadata width 32 -> 60000")
    add("ckpt_vocab.safetensors", "load", r"vocab_size", "token checkpoint vocab_size = 2e7")
    add("ckpt_autoencoder_ch.safetensors", "load_autoencoder", r"model\.config\.ch", "autoencoder ch = 1e6")
    # DiT weights too small for the network their arguments describe
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(4)}, j("dit_tiny.safetensors"))
    add("dit_tiny.safetensors", "load_dit", r"do not fit DiT", "a 100-byte DiT-XL/2 .safetensors")
    torch.save({"x": torch.zeros(4)}, j("dit_tiny.pt"))
    add("dit_tiny.pt", "load_dit", r"do not fit DiT", "a 1 KB DiT-XL/2 .pt")
    if diffusers:
        _diffusers(root)
        add("ddpm_timesteps_1e9", "from_diffusers", r"num_train_timesteps", "scheduler num_train_timesteps = 1e9")
        add("unet_layers_per_block_1e5", "from_diffusers", r"layers_per_block", "UNet layers_per_block = 1e5")
        add("unet_block_out_channels_1e6", "from_diffusers", r"block_out_channels", "UNet block_out_channels 1e6")
        add("unet_wider_than_its_weights", "from_diffusers", r"has shape .* in the file", "UNet config 64x wider than its weights")
        add("vae_layers_per_block_1e5", "load_autoencoder", r"layers_per_block", "AutoencoderKL layers_per_block 1e5")
    return attacks


# --- the child: run loaders, one JSON line per (loader, path) --------------------------------------------
_CHILD = r"""
import json, os, resource, sys, tempfile
import scoresde as ss
try:
    from scoresde.data.masks import load_mask
except ImportError:
    load_mask = None
CLEAN = (ValueError, TypeError, KeyError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
         PermissionError, ModuleNotFoundError)
tmp = tempfile.mkdtemp()

def peak_rss_kb():
    # this process image's own peak (VmHWM): ru_maxrss also carries the parent's peak across fork + exec
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def train_auto(p):
    return ss.train({"data": {"name": p}, "model": {"name": "mlp", "num_classes": "auto", "width": 8, "depth": 1},
                     "train": {"steps": 1, "batch_size": 2, "progress": False, "log_every": 1},
                     "sample": {"n": 2, "steps": 1}, "eval": {"n": 2}}, out=os.path.join(tmp, "run"))

loaders, pairs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for loader, p in pairs:
    out = {"loader": loader, "path": p}
    try:
        eval(loaders[loader], {"ss": ss, "load_mask": load_mask, "train_auto": train_auto, "p": p})
        out["outcome"] = "loaded"
    except MemoryError:
        out["outcome"] = "MemoryError"
    except BaseException as e:
        out.update(outcome="clean" if isinstance(e, CLEAN) else "other", type=type(e).__name__,
                   message=str(e.args[0] if isinstance(e, KeyError) and e.args else e))
    out["maxrss_kb"] = peak_rss_kb()
    print(json.dumps(out), flush=True)
"""


def _limit(limit: int):
    def apply():
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def run_loaders(pairs: list[tuple[str, str]], *, python: str | None = None, limit: int = LIMIT,
                timeout: float = 600) -> tuple[list[dict], int, str]:
    """Run each (loader, path) in one child under RLIMIT_AS = `limit`: (its JSON records, return code, the
    tail of its stderr). `python`: a shell-style command ("VAR=x /path/python -P") instead of this one."""
    env, argv = dict(os.environ), [sys.executable]
    if python:
        words = shlex.split(python)
        while words and "=" in words[0] and not words[0].startswith("/"):
            k, v = words.pop(0).split("=", 1)
            env[k] = v
        argv = words
    env.setdefault("OMP_NUM_THREADS", "1")
    p = subprocess.run([*argv, "-c", _CHILD, json.dumps(LOADERS), json.dumps(pairs)], capture_output=True, text=True,
                       preexec_fn=_limit(limit), env=env, timeout=timeout, cwd=HERE)
    records = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    return records, p.returncode, p.stderr[-2000:]


def measure(attack: Attack, root: str, *, python: str | None = None, limit: int = LIMIT, timeout: float = 120) -> dict:
    """One attack alone in a fresh child: its record, with the peak RSS the parent sees for that child
    (RUSAGE_CHILDREN, measured by a driver process so that no other child counts)."""
    driver = (f"import json, resource, sys; sys.path.insert(0, {HERE!r}); import hostile; "
              f"r, rc, err = hostile.run_loaders([({attack.loader!r}, {os.path.join(root, attack.name)!r})], "
              f"python={python!r}, limit={limit}, timeout={timeout}); "
              "print(json.dumps({'records': r, 'rc': rc, 'err': err.strip().splitlines()[-1:] , "
              "'children_maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    try:
        p = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=timeout + 30)
        out = json.loads(p.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"outcome": f"timeout > {timeout:.0f} s"}
    rec = out["records"][0] if out["records"] else {"outcome": f"died (rc {out['rc']}): {' '.join(out['err'])}"}
    return {**rec, "children_maxrss_kb": out["children_maxrss_kb"]}


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--measure", action="store_true", help="run each file's loader alone and report peak RSS")
    ap.add_argument("--python", help='the interpreter to measure, e.g. "PYTHONPATH=/work/old /venv/bin/python -P"')
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args()
    corpus = make_corpus(args.dir)
    for a in corpus:
        if not args.measure:
            print(f"{a.name:34s} {a.loader:17s} {a.claim}")
            continue
        r = measure(a, args.dir, python=args.python, timeout=args.timeout)
        what = r.get("type", "") + (": " + r["message"].splitlines()[0][:110] if r.get("message") else "")
        print(f"| {a.claim} | {a.loader} | {r.get('children_maxrss_kb', 0) / 1024:.0f} MB | {r['outcome']} {what} |",
              flush=True)
