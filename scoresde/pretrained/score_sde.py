"""Official score_sde checkpoints (Song et al. 2021, "Score-Based Generative Modeling through Stochastic
Differential Equations", arXiv:2011.13456; github.com/yang-song/score_sde_pytorch), loaded exactly.

    model, sde = load_score_sde("checkpoint_26.pth", "ve/cifar10_ncsnpp_continuous")
    x = sde.sample(model, 16, sampler="deis", steps=20)          # in the model's data space
    images = model.to_unit(x)                                     # [0, 1], score_sde's inverse scaler

`config` is a preset name (`list_configs()`, every NCSN++ / DDPM++ / DDPM config of the official
`configs/`) or a config dict in score_sde's nested layout (`{"data": ..., "model": ..., "training": ...}`,
as `ml_collections` resolves it), so shrunk or custom configs load too.

The `.pth` file is read with `torch.load(weights_only=True)`: nothing beyond tensors and plain
containers is unpickled, and a file that needs more is refused. score_sde saves
`{"model": DataParallel(net).state_dict(), "ema": {"shadow_params": [...], ...}, "optimizer", "step"}`;
the EMA weights (an unnamed list in the order of the trainable parameters) are used by default, the
non-trainable tensors (the Fourier frequencies W, the noise-level table `sigmas`) always come from
`checkpoint["model"]`. The returned `model` is a `ScoreSDEModel` (a `ScoreModel`): `model(x, t)` is the
score exactly as score_sde's `get_score_fn` computes it, and `model.net(x, labels)` the raw network
called with score_sde's own labels:

| SDE, training.continuous | labels (`model.labels(t)`)              | score                        |
|--------------------------|-----------------------------------------|------------------------------|
| VP / sub-VP, continuous  | 999 t (float; sub-VP always)            | -net / std(t), marginal std  |
| VP, discrete             | t (N - 1) (float, not rounded)          | -net / sqrt(1 - alpha_bar)[floor(labels)] |
| VE, continuous           | sigma(t) = sigma_min (sigma_max / sigma_min)^t | net (NCSN++ divides by sigma) |
| VE, discrete             | round((1 - t)(N - 1)), an index into the descending sigma table | net |

Data space: models with `data.centered=True` (VP / sub-VP configs) work on [-1, 1], the others (VE)
on [0, 1] (the network maps to 2 x - 1 itself). Samples come out in that space; `model.to_unit(x)`
is score_sde's inverse scaler to [0, 1], `model.from_unit(x)` its scaler, `model.data_range` the range.
"""
from __future__ import annotations

import os
import pickle
from typing import Any

import torch
from torch import nn

from scoresde.models.nets.ncsnpp import NCSNpp
from scoresde.models.nets.unet import DDPMUNet
from scoresde.models.prebuild import check_footprint
from scoresde.models.score_model import ScoreModel
from scoresde.sde.linear import SubVPSDE, VESDE, VPSDE
from scoresde._common.tensors import append_dims, as_time
from scoresde.pretrained.score_sde_configs import describe_configs, list_configs, refused_configs, resolve_config
from scoresde.pretrained.score_sde_keys import official_entries


__all__ = ["load_score_sde", "list_configs", "refused_configs", "describe_configs", "resolve_config", "build_network",
           "build_sde", "read_checkpoint", "load_weights", "ScoreSDEModel"]

_PREDICTORS = {"euler_maruyama": "euler_maruyama", "reverse_diffusion": "reverse_diffusion",
               "ancestral_sampling": "ancestral", "none": "none"}
_CORRECTORS = {"langevin": "langevin", "ald": "annealed_langevin", "none": "none"}


def build_network(cfg: dict) -> nn.Module:
    """Our network for a validated score_sde config: NCSNpp (ncsnpp) or DDPMUNet (ddpm)."""
    d, m = cfg["data"], cfg["model"]
    shape = (int(d["num_channels"]), int(d["image_size"]), int(d["image_size"]))
    common = dict(ch=m["nf"], ch_mult=tuple(m["ch_mult"]), num_res_blocks=m["num_res_blocks"],
                  attn_resolutions=tuple(m["attn_resolutions"]), dropout=float(m.get("dropout", 0.1)),
                  centered=bool(d["centered"]), scale_by_sigma=bool(m["scale_by_sigma"]))
    if str(m["name"]).lower() == "ddpm":
        # DDPM ignores model.embedding_type; its labels index the sigma table when it scales by sigma
        return DDPMUNet(shape, embedding="sinusoidal", num_groups=32, attn_each_up_block=False,
                        num_scales=m["num_scales"] if m["scale_by_sigma"] else None, **common)
    fourier = str(m["embedding_type"]).lower() == "fourier"
    return NCSNpp(shape, embedding="fourier" if fourier else "sinusoidal",
                  fourier_scale=float(m.get("fourier_scale") or 16.0), fir=bool(m["fir"]),
                  skip_rescale=bool(m["skip_rescale"]), progressive_input=str(m["progressive_input"]).lower(),
                  progressive=str(m["progressive"]).lower(), progressive_combine=str(m["progressive_combine"]).lower(),
                  resblock=str(m["resblock_type"]).lower(), fir_kernel=tuple(m["fir_kernel"]),
                  resample_with_conv=bool(m.get("resamp_with_conv", True)), pyramid_conv="strided",
                  init_scale=float(m["init_scale"]), conditional=bool(m["conditional"]), embed_log=fourier,
                  num_scales=m["num_scales"] if (m["scale_by_sigma"] and not fourier) else None, **common)


def build_sde(cfg: dict):
    """The SDE of a config, as score_sde's run_lib builds it."""
    m, sde = cfg["model"], str(cfg["training"]["sde"]).lower()
    if sde == "vesde":
        return VESDE(sigma_min=float(m["sigma_min"]), sigma_max=float(m["sigma_max"]), N=int(m["num_scales"]))
    cls = VPSDE if sde == "vpsde" else SubVPSDE
    return cls(beta_min=float(m["beta_min"]), beta_max=float(m["beta_max"]), N=int(m["num_scales"]))


# --- the score model ------------------------------------------------------------------------------
class ScoreSDEModel(ScoreModel):
    """A score_sde network with its reference's labels and score relation (see the module docstring).

    Attributes: `preset` (name or None), `score_sde_config` (the nested config), `continuous`,
    `centered`, `data_range` ((-1, 1) or (0, 1)), `reference_sampling` (the config's sampler, in our
    names). `labels(t)` gives the network's labels, `to_unit` / `from_unit` map to / from [0, 1].
    """

    def __init__(self, net: nn.Module, sde: Any, cfg: dict, preset: str | None = None):
        self.kind = str(cfg["training"]["sde"]).lower()
        vp = self.kind != "vesde"
        super().__init__(net, sde, parameterization="eps" if vp else "score", conditioning="t" if vp else "sigma",
                         scale_by_sigma=False)
        m = cfg["model"]
        self.preset, self.score_sde_config = preset, cfg
        self.continuous = bool(cfg["training"]["continuous"]) or self.kind == "subvpsde"
        self.centered = bool(cfg["data"]["centered"])
        self.data_range = (-1.0, 1.0) if self.centered else (0.0, 1.0)
        self.N = int(m["num_scales"])
        if vp:
            self.beta_0, self.beta_1 = float(m["beta_min"]), float(m["beta_max"])
            # DDPM's discrete schedule in float32, as score_sde's VPSDE builds it
            alphas_cumprod = torch.cumprod(1.0 - torch.linspace(self.beta_0 / self.N, self.beta_1 / self.N, self.N,
                                                                dtype=torch.float32), dim=0)
            self.register_buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt(), persistent=False)
            self.register_buffer("sqrt_1m_alphas_cumprod", (1.0 - alphas_cumprod).sqrt(), persistent=False)
        else:
            self.sigma_min, self.sigma_max = float(m["sigma_min"]), float(m["sigma_max"])
            # score_sde's get_sigmas: geometric, sigma_max down to sigma_min
            table = torch.linspace(torch.log(torch.tensor(self.sigma_max, dtype=torch.float64)),
                                   torch.log(torch.tensor(self.sigma_min, dtype=torch.float64)), self.N).exp()
            self.register_buffer("discrete_sigmas", table, persistent=False)
        s = cfg.get("sampling", {})
        self.reference_sampling = {
            "sampler": "pc", "steps": self.N, "snr": s.get("snr", 0.16), "corrector_steps": s.get("n_steps_each", 1),
            "predictor": _PREDICTORS.get(str(s.get("predictor", "none")).lower(), s.get("predictor")),
            "corrector": _CORRECTORS.get(str(s.get("corrector", "none")).lower(), s.get("corrector")),
            "denoise": s.get("noise_removal", True)}

    def _reference(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(labels, alpha(t), std(t)) exactly as score_sde's get_score_fn computes them."""
        if self.kind != "vesde":
            if self.continuous:
                labels = t * 999
                # log alpha(t) = -t^2 (beta_1 - beta_0) / 4 - t beta_0 / 2
                lmc = -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
                std = torch.sqrt(1.0 - torch.exp(2.0 * lmc)) if self.kind == "vpsde" else 1 - torch.exp(2.0 * lmc)
                return labels, torch.exp(lmc), std
            labels = t * (self.N - 1)
            i = labels.long()
            return labels, self.sqrt_alphas_cumprod[i].to(t.dtype), self.sqrt_1m_alphas_cumprod[i].to(t.dtype)
        if self.continuous:
            labels = self.sigma_min * (self.sigma_max / self.sigma_min) ** t   # sigma(t)
            return labels, torch.ones_like(t), labels
        labels = torch.round((1 - t) * (self.N - 1)).long()                 # t = 1 -> index 0 = sigma_max
        return labels, torch.ones_like(t), self.discrete_sigmas[labels].to(t.dtype)

    def labels(self, t: Any, x: torch.Tensor) -> torch.Tensor:
        """The labels score_sde passes to the network at time t (a float or (B,) tensor) for input x."""
        return self._reference(as_time(t, x))[0]

    def condition(self, t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self._reference(t)[0]

    def _raw(self, x: torch.Tensor, t: Any, cond: Any = None):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1:
            raise TypeError(f"x: expected a floating-point tensor (B, *D), found "
                            f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
        if cond is not None:
            raise ValueError("cond: score_sde's models are unconditional; pass cond=None")
        labels, alpha, std = self._reference(as_time(t, x))
        out = self.net(x, labels)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            raise ValueError(f"net: expected an output of shape {tuple(x.shape)} like x, found "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        return out, append_dims(alpha, x.ndim), append_dims(std, x.ndim)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """score_sde's inverse scaler: the model's data space -> [0, 1]."""
        return (x + 1.0) / 2.0 if self.centered else x

    def from_unit(self, x: torch.Tensor) -> torch.Tensor:
        """score_sde's scaler: [0, 1] -> the model's data space."""
        return x * 2.0 - 1.0 if self.centered else x

    def extra_repr(self) -> str:
        return f"preset={self.preset!r}, " + super().extra_repr()


# --- reading and loading ------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike) -> Any:
    """torch.load(path, weights_only=True) with one-line errors: refused or not a checkpoint."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"checkpoint {path!r}: expected a score_sde .pth file, found a directory")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Unsupported" in ln), lines[0] if lines else repr(e))
        if "Unsupported global" in why:                  # a class or function to call: never unpickled
            raise ValueError(f"checkpoint {path!r}: refused: loading it would unpickle more than tensors and "
                             f"plain containers ({why.split(' was not')[0]})") from None
        raise ValueError(f"checkpoint {path!r}: not a PyTorch checkpoint that loads with weights_only=True "
                         f"({why})") from None
    except Exception as e:            # anything else torch.load trips over: not a checkpoint file
        first = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
        raise ValueError(f"checkpoint {path!r}: not a PyTorch checkpoint ({first})") from None


def _tensor_dict(obj: Any, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in obj.items()):
        raise ValueError(f"checkpoint: expected {what} to be a state dict (str -> tensor), found "
                         f"{type(obj).__name__ if not isinstance(obj, dict) else 'a dict of other values'}")
    return obj


def _weights(obj: Any, ema: bool) -> tuple[dict[str, torch.Tensor], list | None]:
    """(state dict, EMA shadow list or None) of a score_sde checkpoint dict or a bare state dict."""
    if isinstance(obj, dict) and "model" in obj:
        sd = _tensor_dict(obj["model"], "checkpoint['model']")
        if not ema:
            return sd, None
        shadow = obj.get("ema", {}).get("shadow_params") if isinstance(obj.get("ema"), dict) else None
        if not isinstance(shadow, (list, tuple)) or not all(isinstance(p, torch.Tensor) for p in shadow):
            raise ValueError("checkpoint: no EMA weights (checkpoint['ema']['shadow_params'], a list of tensors); "
                             "pass ema=False (--raw) for the raw weights")
        return sd, list(shadow)
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _tensor_dict(obj, "the checkpoint"), None          # a bare state dict: used as it is
    raise ValueError(f"checkpoint: expected score_sde's {{'model': state_dict, 'ema': ..., ...}} or a state dict, "
                     f"found {type(obj).__name__}" + (f" with keys {list(obj)[:5]}" if isinstance(obj, dict) else ""))


def load_weights(net: nn.Module, state_dict: dict[str, torch.Tensor], shadow: list | None = None, *,
                 num_scales: int | None = None, label: str = "the config") -> None:
    """Copy a score_sde state dict (with or without the `module.` prefix) into our `net`; with `shadow`,
    the trainable parameters come from that list (score_sde's EMA). A key that is missing, has another
    shape or is unexpected raises ValueError naming the key and both shapes (`match_weights`)."""
    entries, values = match_weights(net, state_dict, shadow, num_scales=num_scales, label=label)
    ours = net.state_dict()
    with torch.no_grad():
        for e in entries:
            if e.target:
                dst = ours[e.target] if e.rows is None else ours[e.target][e.rows]
                src = values[e.key]
                dst.copy_(src.t().reshape(dst.shape) if e.nin else src)


def match_weights(net: nn.Module, state_dict: dict[str, torch.Tensor], shadow: list | None = None, *,
                  num_scales: int | None = None, label: str = "the config"):
    """(key map entries, {score_sde key: tensor}) after checking every shape of `state_dict` (and `shadow`)
    against `net`, which may be on the meta device: nothing is copied."""
    prefix = "module." if all(k.startswith("module.") for k in state_dict) else ""
    sd = {k[len(prefix):]: v for k, v in state_dict.items()}
    ours = net.state_dict()
    entries = official_entries(net)
    expected: dict[str, tuple[int, ...]] = {}
    for e in entries:
        if not e.target:                                   # the sigma table ours does not keep
            expected[e.key] = (num_scales,) if num_scales else None
            continue
        t = ours[e.target] if e.rows is None else ours[e.target][e.rows]
        expected[e.key] = (t.shape[1], t.shape[0]) if e.nin else tuple(t.shape)
    fits = f"checkpoint does not fit {label}"
    unused = {e.key for e in entries if not e.target}      # may be absent from a bare state dict
    for key, shape in expected.items():
        if key not in sd and key in unused:
            continue
        if key not in sd:
            raise ValueError(f"{fits}: key {prefix + key!r} is missing (expected shape {shape})")
        if shape is not None and tuple(sd[key].shape) != shape:
            raise ValueError(f"{fits}: {prefix + key!r} has shape {tuple(sd[key].shape)} in the checkpoint, "
                             f"{shape} in the config")
    extra = [k for k in sd if k not in expected]
    if extra:
        raise ValueError(f"{fits}: {prefix + extra[0]!r} (shape {tuple(sd[extra[0]].shape)}) is not in the "
                         f"config's network ({len(extra)} unexpected keys)")
    values = dict(sd)
    if shadow is not None:
        trainable = [e.key for e in entries if e.trainable]
        if len(shadow) != len(trainable):
            raise ValueError(f"{fits}: checkpoint['ema']['shadow_params'] holds {len(shadow)} tensors, the "
                             f"network has {len(trainable)} trainable parameters")
        for i, (key, p) in enumerate(zip(trainable, shadow)):
            if tuple(p.shape) != expected[key]:
                raise ValueError(f"{fits}: ema shadow_params[{i}] ({prefix + key!r}) has shape {tuple(p.shape)}, "
                                 f"{expected[key]} in the config")
            values[key] = p
    covered = {e.target for e in entries if e.target}
    if set(ours) != covered:                               # every tensor of ours is written by load_weights
        raise RuntimeError(f"internal: score_sde key map leaves {sorted(set(ours) - covered)[:3]} unset")
    return entries, values


def load_score_sde(path_or_state: Any, config: Any, ema: bool = True, device: Any = None):
    """(model, sde) from an official score_sde checkpoint.

    Args:
        path_or_state: a `checkpoint_N.pth` path, the dict torch.load returns for it, or a bare state
            dict of the network (keys `all_modules...`, with or without `module.`; used as it is).
        config: a preset name (`list_configs()`) or score_sde's nested config dict.
        ema: use the EMA weights (`checkpoint['ema']['shadow_params']`); False: `checkpoint['model']`.
        device: where to put the model (default CPU).
    Returns:
        (ScoreSDEModel in eval mode, the SDE). See the module docstring for labels and data range.
    """
    if not isinstance(ema, bool):
        raise TypeError(f"ema: expected a bool, found {type(ema).__name__}")
    name, cfg = resolve_config(config)
    obj = read_checkpoint(path_or_state) if isinstance(path_or_state, (str, os.PathLike)) else path_or_state
    state_dict, shadow = _weights(obj, ema)
    with torch.device("meta"):                             # no initialisation: every tensor is loaded below
        net = build_network(cfg)
    # the config (sizes bounded in resolve_config) may not describe more than the checkpoint holds, nor
    # more than the memory budget, before the network gets memory
    label = f"config {name!r}" if name else "the config"
    match_weights(net, state_dict, shadow, num_scales=int(cfg["model"]["num_scales"]), label=label)   # shapes only
    check_footprint(net, label)
    net = net.to_empty(device="cpu")
    load_weights(net, state_dict, shadow, num_scales=int(cfg["model"]["num_scales"]), label=label)
    sde = build_sde(cfg)
    model = ScoreSDEModel(net, sde, cfg, preset=name).eval()
    return (model.to(device) if device is not None else model), sde
