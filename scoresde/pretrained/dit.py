"""Official DiT checkpoints (facebookresearch/DiT; Peebles & Xie 2023, arXiv:2212.09748) as score models.

    model, sde = ss.load_dit("DiT-XL-2-256x256.pt")                 # the official defaults: DiT-XL/2, 32x32x4
    model, sde = ss.load_dit("DiT-XL-2-512x512.pt", input_size=64)
    eps_and_v = model.net(z, t, y)            # the raw network, called as the official one (t in 0..999)
    x = sde.sample(ss.classifier_free_score(model, y=207, w=4.0), (8, 4, 32, 32), sampler="dpm_solver", steps=50)

The released models predict eps in the SD VAE latent space (4 x 32 x 32 for 256 x 256 images), with
learned variances (learn_sigma: 8 output channels, the last 4 ignored for the score), trained on
DDPM's 1000-step linear schedule beta_i = linspace(1e-4, 0.02, 1000), class-conditional on the
1000 ImageNet classes with the null label 1000 (class_dropout_prob 0.1). That schedule is exactly
the discretisation of `VPSDE(beta_min=0.1, beta_max=20, N=1000)`, the SDE returned.

The timestep. The continuous VP marginal x_t = alpha(t) x0 + sigma(t) z is not DDPM's at t = i/999
(sigma(0) = 0 against DDPM's sigma_0 = 0.01; 29 % apart at i = 1, 5 % at t = (i+1)/1000), so the
network is not fed 999 t. It is fed the fractional timestep whose DDPM noise level is the SDE's,
    c(t) = i + (log sigma(t) - log sigma_i) / (log sigma_{i+1} - log sigma_i),
    sigma_i^2 = 1 - prod_{j<=i} (1 - beta_j),   sigma_i <= sigma(t) <= sigma_{i+1},
(interpolation in log sigma, as k-diffusion's DiscreteSchedule), so the score
-eps(x, c(t), y) / sigma(t) is exactly the official network's score at each of its 1000 noise
levels (t_i = 0.00091, 0.0019, ..., t_999 = 1.0034; t = 1 is timestep 995.6). Elsewhere the
network sees fractional timesteps it never saw in training (its sinusoidal embedding is smooth in
them), and below sigma_0 (t < 0.00091, e.g. the likelihood's eps = 1e-5) the timestep is clamped to
0, where the score -eps(x, 0) / sigma(t) is an extrapolation. c(t) is computed in float64 (float32
on MPS), one table search per call, no host synchronisation.

Reading never unpickles anything beyond tensors and plain containers (`torch.load(weights_only=True)`,
with argparse.Namespace allowed for the `args` of the official train.py checkpoints, whose `ema`
weights are taken, as the official `find_model` does); `.safetensors` files are read directly. The
file's tensor shapes (a `.safetensors` header, a memory-mapped `.pt`) are compared with DiT built on the
meta device, its arguments bounded first, before DiT is built for real: a tiny or mismatched file is
refused without allocating DiT-XL/2.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
from typing import Any, Mapping

import torch

from scoresde._common.headers import safetensors_shapes
from scoresde._common.limits import check_sizes
from scoresde.models.nets.dit import DIT_PRESETS, DiT
from scoresde.models.prebuild import check_footprint, skeleton
from scoresde.models.score_model import ScoreModel
from scoresde.sde.linear import VPSDE


__all__ = ["load_dit", "DiscreteTimestepScoreModel", "OFFICIAL_DEFAULTS"]

# the official DiT constructor's defaults (models.DiT: DiT-XL/2 on 32x32x4 latents, 1000 classes)
OFFICIAL_DEFAULTS = dict(input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                         mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True)
_ARCH = ("depth", "hidden_size", "num_heads", "patch_size")


class DiscreteTimestepScoreModel(ScoreModel):
    """A ScoreModel whose network takes DDPM's (fractional) timestep c(t) of the noise level sigma(t).

    `alphas_cumprod` (N,) is the network's discrete schedule prod_{j<=i} (1 - beta_j); the network
    is fed c(t) in [0, N-1] with sigma_disc(c(t)) = sigma(t), interpolated linearly in log sigma
    between the N levels and clamped at both ends (see the module docstring).
    """

    def __init__(self, net: Any, sde: Any, alphas_cumprod: torch.Tensor, parameterization: str = "eps"):
        super().__init__(net, sde, parameterization=parameterization, conditioning="t")
        self.conditioning = "discrete_timestep"
        ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        ok = ab.ndim == 1 and ab.numel() >= 2 and bool(((ab > 0) & (ab < 1)).all()) and bool((ab[1:] < ab[:-1]).all())
        if not ok:
            raise ValueError("alphas_cumprod: expected a decreasing (N,) schedule in (0, 1), N >= 2")
        self._log_sigmas = 0.5 * torch.log1p(-ab)                 # (N,) increasing log sigma_i
        self._tables: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def _knots(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        if key not in self._tables:                                # copied to a device once
            self._tables[key] = self._log_sigmas.to(device=device, dtype=dtype)
        return self._tables[key]

    def condition(self, t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        dtype = torch.float32 if t.device.type == "mps" else torch.float64
        _, sig = self.sde.marginal_coefs(t.to(dtype))             # sigma(t) in float64: t near 1 needs it
        log_sigma, knots = sig.log(), self._knots(t.device, dtype)
        n = knots.numel()
        j = torch.searchsorted(knots, log_sigma).clamp(1, n - 1)  # knots[j-1] < log sigma <= knots[j]
        lo, hi = knots[j - 1], knots[j]
        c = (j - 1).to(dtype) + (log_sigma - lo) / (hi - lo)      # linear in log sigma
        return c.clamp(0, n - 1).to(t.dtype)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "timesteps": self._log_sigmas.numel()}


def _read(path_or_state_dict: Any) -> dict[str, torch.Tensor]:
    """The state dict of a path (.pt / .pth / .safetensors) or a mapping, unwrapped from train.py's
    {"model", "ema", "opt", "args"} and from a DDP `module.` prefix. A `.safetensors` file gives its
    header only (meta tensors: shapes, no memory; `_materialise` reads them); a `.pt` file is mapped
    into memory (torch.load(mmap=True)), not read, where its format allows."""
    src = path_or_state_dict
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"path_or_state_dict: no such file {path!r}")
        if path.endswith(".safetensors"):
            try:
                sd = {k: torch.empty(s, device="meta") for k, s in safetensors_shapes(path).items()}
            except Exception as e:     # safetensors reports damaged headers with several exception types
                raise ValueError(f"path_or_state_dict: {path!r} is not a readable safetensors file "
                                 f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        else:
            sd = _torch_load(path)
    elif isinstance(src, Mapping):
        sd = src
    else:
        raise TypeError(f"path_or_state_dict: expected a path to a .pt/.pth/.safetensors file or a state dict, "
                        f"found {type(src).__name__}")
    if not isinstance(sd, Mapping):
        raise ValueError(f"path_or_state_dict: expected a state dict, found a {type(sd).__name__}")
    for wrapper in ("ema", "model"):                             # official train.py checkpoints
        if isinstance(sd.get(wrapper), Mapping):
            sd = sd[wrapper]
            break
    sd = dict(sd)
    if sd and all(k.startswith("module.") for k in sd):          # saved from a DDP wrapper
        sd = {k[len("module."):]: v for k, v in sd.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"path_or_state_dict: expected a state dict of tensors, found non-tensors at {bad[:3]}")
    return sd


def _torch_load(path: str) -> Any:
    """torch.load(weights_only=True) with argparse.Namespace allowed, memory-mapped when the file's format
    allows (the zip format of torch >= 1.6): the tensors' shapes are known before their bytes are read."""
    allowed = getattr(torch.serialization, "safe_globals", None)
    ctx = allowed([argparse.Namespace]) if allowed is not None else contextlib.nullcontext()
    try:
        with ctx:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)    # the legacy format
    except Exception as e:     # pickle.UnpicklingError, RuntimeError (not a torch file), ...
        raise ValueError(f"path_or_state_dict: {path!r} is not a torch file of tensors and plain "
                         f"containers ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _materialise(path_or_state_dict: Any, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`sd` with the tensors of a `.safetensors` file read (the checks passed on its header)."""
    if not any(v.is_meta for v in sd.values()):
        return sd
    from safetensors.torch import load_file
    full = load_file(os.fspath(path_or_state_dict))
    prefix = "module." if full and all(k.startswith("module.") for k in full) else ""
    return {k: full[prefix + k] for k in sd}


def _args(model: str | None, given: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(OFFICIAL_DEFAULTS))
    if unknown:
        raise TypeError(f"load_dit: unexpected argument(s) {unknown}; expected the official DiT constructor's "
                        f"{list(OFFICIAL_DEFAULTS)} or model=")
    args = dict(OFFICIAL_DEFAULTS)
    if model is not None:
        if model not in DIT_PRESETS:
            raise ValueError(f"model: expected one of {list(DIT_PRESETS)}, found {model!r}")
        clash = [k for k in _ARCH if k in given]
        if clash:
            raise ValueError(f"model: {model!r} sets {', '.join(_ARCH)}; found {', '.join(clash)} given as well")
        args.update(DIT_PRESETS[model])
    args.update(given)
    p = args["class_dropout_prob"]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"class_dropout_prob: expected a probability in [0, 1], found {p!r}")
    return args


def _mismatch(net: DiT, sd: Mapping[str, torch.Tensor], args: Mapping[str, Any]) -> str | None:
    """A readable account of how `sd` differs from `net`'s state dict, with hints; None if it fits."""
    own = net.state_dict()
    missing, unexpected = [k for k in own if k not in sd], [k for k in sd if k not in own]
    shapes = [(k, tuple(own[k].shape), tuple(sd[k].shape)) for k in own if k in sd and own[k].shape != sd[k].shape]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append(f"missing keys {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    if unexpected:
        parts.append(f"unexpected keys {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
    if shapes:
        parts.append("shapes (expected, found) " + ", ".join(f"{k} {a} vs {b}" for k, a, b in shapes[:3]))
    hints = []
    if "pos_embed" in sd and sd["pos_embed"].ndim == 3 and sd["pos_embed"].shape != own["pos_embed"].shape:
        tokens, width = sd["pos_embed"].shape[1:]
        side = math.isqrt(tokens)
        if side * side == tokens and width == own["pos_embed"].shape[2]:
            hints.append(f"input_size={side * args['patch_size']} (the file has {tokens} tokens of patch "
                         f"{args['patch_size']})")
    if "y_embedder.embedding_table.weight" in sd and "y_embedder.embedding_table.weight" in own:
        rows = sd["y_embedder.embedding_table.weight"].shape[0]
        if rows != own["y_embedder.embedding_table.weight"].shape[0]:
            hints.append(f"num_classes={rows - 1} with class_dropout_prob > 0, or num_classes={rows} with "
                         f"class_dropout_prob=0 (the table has {rows} rows)")
    if "final_layer.linear.weight" in sd:
        out = sd["final_layer.linear.weight"].shape[0] // args["patch_size"] ** 2
        if out != net.out_channels and out in (args["in_channels"], 2 * args["in_channels"]):
            hints.append(f"learn_sigma={out == 2 * args['in_channels']}")
    if "blocks.0.attn.qkv.weight" in sd and sd["blocks.0.attn.qkv.weight"].ndim == 2:
        width = sd["blocks.0.attn.qkv.weight"].shape[1]
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        named = [n for n, a in DIT_PRESETS.items() if a["hidden_size"] == width and a["depth"] == depth]
        if width != args["hidden_size"] or depth != args["depth"]:
            hints.append(f"the file holds depth {depth}, hidden_size {width}"
                         + (f" (model={named[0].rsplit('/', 1)[0]}/<patch>)" if named else ""))
    return "; ".join(parts) + (f" (hint: {'; '.join(hints)})" if hints else "")


def load_dit(path_or_state_dict: Any, *, model: str | None = None, **official_args: Any):
    """(score model, VP SDE) of official DiT weights: `model(x, t, y=labels)` is the score, `model.net` the DiT.

    Args:
        path_or_state_dict: a `.pt` / `.pth` file (a state dict, or a train.py checkpoint whose `ema` is
            used), a `.safetensors` file, or the state dict itself.
        model: an official preset name, "DiT-S/2" ... "DiT-XL/8" (sets depth, hidden_size, num_heads
            and patch_size; default DiT-XL/2's).
        **official_args: the official constructor's arguments, with its defaults: input_size=32,
            patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16, mlp_ratio=4.0,
            class_dropout_prob=0.1 (> 0: the label table has the null row num_classes),
            num_classes=1000, learn_sigma=True.
    Returns:
        (model, sde): a `DiscreteTimestepScoreModel` in eval mode on the CPU, eps-parameterised (the
        learned-variance channels are dropped from the score), and `VPSDE(0.1, 20, N=1000)`.
        `model.net(x, t, y)` is the network as the official `DiT.forward(x, t, y)`: t the timestep
        (0..999, int or float), y the labels (num_classes = null), returning all output channels.
    Shapes that do not fit the arguments raise ValueError naming the keys and the likely argument.
    """
    args = _args(model, official_args)
    check_sizes(args, "")                                       # depth, hidden_size, input_size, ... bounded
    sd = _read(path_or_state_dict)                              # a .safetensors file: its header only

    def build() -> DiT:
        return DiT(data_shape=(args["in_channels"], args["input_size"], args["input_size"]), depth=args["depth"],
                   hidden_size=args["hidden_size"], num_heads=args["num_heads"], patch_size=args["patch_size"],
                   mlp_ratio=args["mlp_ratio"], num_classes=args["num_classes"], learn_sigma=args["learn_sigma"],
                   null_label=args["class_dropout_prob"] > 0)

    bare = skeleton(build)                                      # shapes only: compared before any memory
    problem = _mismatch(bare, sd, args)
    if problem:
        given = ", ".join(f"{k}={v!r}" for k, v in args.items())
        src = f" in {os.fspath(path_or_state_dict)!r}" if isinstance(path_or_state_dict, (str, os.PathLike)) else ""
        raise ValueError(f"path_or_state_dict: the weights{src} do not fit DiT({given}): {problem}")
    check_footprint(bare, "path_or_state_dict")
    net = build()
    net.load_state_dict(_materialise(path_or_state_dict, sd), strict=True)
    sde = VPSDE(beta_min=0.1, beta_max=20.0, N=1000)   # beta_i = linspace(1e-4, 0.02, 1000), DiT's schedule
    score_model = DiscreteTimestepScoreModel(net, sde, sde.alphas_cumprod, parameterization="eps")
    return score_model.eval(), sde
