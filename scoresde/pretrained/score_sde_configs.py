"""Presets: the configs of score_sde_pytorch (Song et al. 2021, arXiv:2011.13456, `configs/`) that use
NCSN++, DDPM++ or DDPM, in score_sde's own nested layout, with the fields the loader reads.

Each preset is what the official code resolves for that file (its `get_default_configs()` plus the
file's overrides): the network (`model`), the data format (`data.centered`: False for data in
[0, 1], which NCSN++ / DDPM map to 2 x - 1 themselves), the SDE (`training.sde`, `model.sigma_*`,
`model.beta_*`, `model.num_scales`), discrete or continuous noise conditioning (`training.continuous`)
and the paper's sampler (`sampling`). The NCSN / NCSNv2 (RefineNet) configs and one DDPM config do
not build in the official code and are listed in `REFUSED` with the reason. `resolve_config` turns a
preset name or a nested dict into a checked config (every size bounded before anything is built).
"""
from __future__ import annotations

import copy
from typing import Any

from scoresde._common.limits import check_sizes

__all__ = ["PRESETS", "REFUSED", "list_configs", "refused_configs", "describe_configs", "resolve_config"]

_SAMPLING = dict(method="pc", n_steps_each=1, noise_removal=True, probability_flow=False, snr=0.16)
_VP_SAMPLING = dict(_SAMPLING, predictor="euler_maruyama", corrector="none")
_VE_SAMPLING = dict(_SAMPLING, predictor="reverse_diffusion", corrector="langevin")
_SDE = dict(sigma_min=0.01, sigma_max=50, num_scales=1000, beta_min=0.1, beta_max=20.0, dropout=0.1,
            nonlinearity="swish", conditional=True, resamp_with_conv=True)

# configs/default_*_configs.py + the NCSN++ family's common model fields
_NCSNPP = dict(_SDE, name="ncsnpp", nf=128, ch_mult=[1, 2, 2, 2], num_res_blocks=4, attn_resolutions=[16],
               fir=True, fir_kernel=[1, 3, 3, 1], skip_rescale=True, resblock_type="biggan", progressive="none",
               progressive_input="residual", progressive_combine="sum", init_scale=0.0, fourier_scale=16,
               embedding_type="positional", scale_by_sigma=False)
_DDPMPP = dict(_NCSNPP, fir=False, progressive_input="none")
_DDPM = dict(_SDE, name="ddpm", nf=128, ch_mult=[1, 2, 2, 2], num_res_blocks=2, attn_resolutions=[16],
             scale_by_sigma=False)
_HIRES = dict(_NCSNPP, ch_mult=[1, 1, 2, 2, 2, 2, 2], num_res_blocks=2, dropout=0.0, num_scales=2000,
              embedding_type="fourier", scale_by_sigma=True, progressive="output_skip",
              progressive_input="input_skip")
_MEGA = dict(_HIRES, nf=16, ch_mult=[1, 2, 4, 8, 16, 32, 32, 32], num_res_blocks=1, sigma_max=1348,
             beta_min=None, beta_max=None)


def _preset(dataset: str, size: int, centered: bool, sde: str, continuous: bool, model: dict, sampling: dict,
            **overrides: Any) -> dict:
    cfg = {"data": {"dataset": dataset, "image_size": size, "num_channels": 3, "centered": centered},
           "model": dict(copy.deepcopy(model), **overrides),
           "training": {"sde": sde, "continuous": continuous},
           "sampling": dict(sampling)}
    return cfg


def _cifar(sde: str, continuous: bool, model: dict, sampling: dict | None = None, **overrides) -> dict:
    centered = sde != "vesde"
    sampling = sampling or (_VE_SAMPLING if sde == "vesde" else _VP_SAMPLING)
    return _preset("CIFAR10", 32, centered, sde, continuous, model, sampling, **overrides)


_FOURIER_VE = dict(embedding_type="fourier", scale_by_sigma=True)
_DISCRETE = dict(fourier_scale=None)          # the discrete NCSN++ files never set fourier_scale
_ANCESTRAL = dict(_VP_SAMPLING, predictor="ancestral_sampling")
_LSUN = dict(_VE_SAMPLING, snr=0.075)

PRESETS: dict[str, dict] = {
    # --- VE (SMLD) -------------------------------------------------------------------------------
    "ve/cifar10_ncsnpp_continuous": _cifar("vesde", True, _NCSNPP, **_FOURIER_VE),
    "ve/cifar10_ncsnpp_deep_continuous": _cifar("vesde", True, _NCSNPP, num_res_blocks=8, **_FOURIER_VE),
    "ve/cifar10_ncsnpp": _cifar("vesde", False, _NCSNPP, scale_by_sigma=True, **_DISCRETE),
    "ve/cifar10_ddpm": _cifar("vesde", False, _DDPM, scale_by_sigma=True),
    "ve/celeba_ncsnpp": _preset("CELEBA", 64, False, "vesde", False, _NCSNPP, dict(_VE_SAMPLING, snr=0.17),
                                sigma_max=90.0, scale_by_sigma=True, **_DISCRETE),
    "ve/bedroom_ncsnpp_continuous": _preset("LSUN", 256, False, "vesde", True, _HIRES, _LSUN, sigma_max=378),
    "ve/church_ncsnpp_continuous": _preset("LSUN", 256, False, "vesde", True, _HIRES, _LSUN, sigma_max=380),
    "ve/celebahq_256_ncsnpp_continuous": _preset("CelebAHQ", 256, False, "vesde", True, _HIRES, _LSUN,
                                                 sigma_max=348),
    "ve/ffhq_256_ncsnpp_continuous": _preset("FFHQ", 256, False, "vesde", True, _HIRES, _LSUN, sigma_max=348),
    "ve/celebahq_ncsnpp_continuous": _preset("CelebAHQ", 1024, False, "vesde", True, _MEGA,
                                             dict(_VE_SAMPLING, snr=0.15)),
    "ve/ffhq_ncsnpp_continuous": _preset("FFHQ", 1024, False, "vesde", True, _MEGA, dict(_VE_SAMPLING, snr=0.15)),
    # --- VP (DDPM) -------------------------------------------------------------------------------
    "vp/cifar10_ddpmpp_continuous": _cifar("vpsde", True, _DDPMPP),
    "vp/cifar10_ddpmpp_deep_continuous": _cifar("vpsde", True, _DDPMPP, num_res_blocks=8),
    "vp/cifar10_ddpmpp": _cifar("vpsde", False, _DDPMPP, _ANCESTRAL),
    "vp/cifar10_ncsnpp_continuous": _cifar("vpsde", True, _NCSNPP),
    "vp/cifar10_ncsnpp_deep_continuous": _cifar("vpsde", True, _NCSNPP, num_res_blocks=8),
    "vp/cifar10_ncsnpp": _cifar("vpsde", False, _NCSNPP, dict(_VP_SAMPLING, predictor="reverse_diffusion"),
                                **_DISCRETE),
    "vp/ddpm/cifar10": _cifar("vpsde", False, _DDPM, _ANCESTRAL),
    "vp/ddpm/cifar10_continuous": _cifar("vpsde", True, _DDPM),
    **{f"vp/ddpm/{name}": _preset(dataset, 256, True, "vpsde", False, _DDPM, dict(_ANCESTRAL, snr=0.075),
                                  ch_mult=[1, 1, 2, 2, 4, 4], dropout=0.0, sigma_max=378)
       for name, dataset in (("bedroom", "LSUN"), ("church", "LSUN"), ("celebahq", "CelebAHQ"))},
    # --- sub-VP ----------------------------------------------------------------------------------
    "subvp/cifar10_ddpm_continuous": _cifar("subvpsde", True, _DDPM),
    "subvp/cifar10_ddpmpp_continuous": _cifar("subvpsde", True, _DDPMPP),
    "subvp/cifar10_ddpmpp_deep_continuous": _cifar("subvpsde", True, _DDPMPP, num_res_blocks=8),
    "subvp/cifar10_ncsnpp_continuous": _cifar("subvpsde", True, _NCSNPP),
    "subvp/cifar10_ncsnpp_deep_continuous": _cifar("subvpsde", True, _NCSNPP, num_res_blocks=8),
}

_RAISES = "fails to build in the official code"
_NCSN = (f"NCSN (RefineNet) model, not supported; the config {_RAISES} ('config.data.channels' is read but "
         "only 'data.num_channels' is set, then ConditionalResidualBlock compares dilation=None > 1)")
_NCSNV2 = (f"NCSNv2 (RefineNet) model, not supported; the config {_RAISES} ('config.data.channels' is read but "
           "only 'data.num_channels' is set, then ncsn_conv3x3(bias=False) scales a missing bias)")
REFUSED: dict[str, str] = {
    **{f"ve/ncsn/{n}": _NCSN for n in ("celeba", "celeba_124", "celeba_1245", "celeba_5", "cifar10", "cifar10_124",
                                        "cifar10_1245", "cifar10_5")},
    **{f"ve/ncsnv2/{n}": _NCSNV2 for n in ("bedroom", "celeba", "cifar10")},
    "vp/ddpm/cifar10_unconditional": (f"DDPM with model.conditional=False {_RAISES} (models/ddpm.py never "
                                      "initialises its module list: UnboundLocalError)"),
}


_SDES = ("vpsde", "subvpsde", "vesde")


_REQUIRED = {"data": ("image_size", "num_channels", "centered"), "training": ("sde", "continuous"),
             "model": ("name", "nf", "ch_mult", "num_res_blocks", "attn_resolutions", "num_scales", "scale_by_sigma")}


_NCSNPP_FIELDS = ("resblock_type", "progressive", "progressive_input", "progressive_combine", "fir", "fir_kernel",
                  "skip_rescale", "init_scale", "embedding_type", "conditional")


_SDE_FIELDS = {"vpsde": ("beta_min", "beta_max"), "subvpsde": ("beta_min", "beta_max"),
               "vesde": ("sigma_min", "sigma_max")}


def list_configs() -> list[str]:
    """Names of the presets: score_sde_pytorch's `configs/` files that use NCSN++, DDPM++ or DDPM."""
    return sorted(PRESETS)


def refused_configs() -> dict[str, str]:
    """The other official configs, each with the reason it is refused."""
    return dict(sorted(REFUSED.items()))


def describe_configs() -> list[str]:
    """One line per preset (network, SDE, labels, size, data range), then the refused configs."""
    lines = ["score_sde presets (scoresde sample --checkpoint checkpoint_N.pth --config NAME):"]
    for name in list_configs():
        d, m, t = (PRESETS[name][k] for k in ("data", "model", "training"))
        lines.append(f"  {name:38s} {m['name']:7s} {t['sde']:9s} {'continuous' if t['continuous'] else 'discrete':10s} "
                     f"{d['image_size']}x{d['image_size']}, data in {'[-1, 1]' if d['centered'] else '[0, 1]'}")
    lines.append("refused official configs:")
    lines += [f"  {name:38s} {why.split(';')[0]}" for name, why in refused_configs().items()]
    return lines


# --- config --------------------------------------------------------------------------------------
def resolve_config(config: Any) -> tuple[str | None, dict]:
    """(preset name or None, a validated copy of the nested config) from a preset name or dict."""
    if isinstance(config, str):
        if config in REFUSED:
            raise ValueError(f"config {config!r}: refused: {REFUSED[config]}")
        if config not in PRESETS:
            raise KeyError(f"config: unknown preset {config!r}; the presets are {', '.join(list_configs())}")
        name, cfg = config, copy.deepcopy(PRESETS[config])
    elif isinstance(config, dict):
        name, cfg = None, copy.deepcopy(config)
    else:
        raise TypeError(f"config: expected a preset name (str) or score_sde's nested config dict, "
                        f"found {type(config).__name__}")
    _check_config(cfg)
    for section in ("model", "data"):                      # nf, num_scales, image_size, ... bounded
        check_sizes(cfg[section], f"config {section}.")
    return name, cfg


def _need(cfg: dict, section: str, key: str) -> Any:
    if not isinstance(cfg.get(section), dict) or key not in cfg[section]:
        raise ValueError(f"config: missing {section}.{key} (score_sde's nested layout: "
                         "{'data': {...}, 'model': {...}, 'training': {...}})")
    return cfg[section][key]


def _check_config(cfg: dict) -> None:
    for section, keys in _REQUIRED.items():
        for key in keys:
            _need(cfg, section, key)
    m, sde = cfg["model"], str(cfg["training"]["sde"]).lower()
    name = str(m["name"]).lower()
    if name.startswith("ncsn") and name != "ncsnpp":
        raise ValueError(f"config: model.name {m['name']!r} (NCSN / NCSNv2, RefineNet) is not supported; "
                         "expected ncsnpp or ddpm")
    if name not in ("ncsnpp", "ddpm"):
        raise ValueError(f"config: model.name: expected ncsnpp or ddpm, found {m['name']!r}")
    if sde not in _SDES:
        raise ValueError(f"config: training.sde: expected one of {', '.join(_SDES)}, found {cfg['training']['sde']!r}")
    for key in _SDE_FIELDS[sde]:
        _need(cfg, "model", key)
    if str(m.get("nonlinearity", "swish")).lower() != "swish":
        raise ValueError(f"config: model.nonlinearity: only swish is supported, found {m['nonlinearity']!r}")
    continuous = bool(cfg["training"]["continuous"])
    if name == "ddpm":
        if not m.get("conditional", True):
            raise ValueError("config: model.conditional=False fails to build in the official DDPM (models/ddpm.py "
                             "never initialises its module list)")
        if not m.get("resamp_with_conv", True):
            raise ValueError("config: model.resamp_with_conv=False (DDPM without resampling convs) is not supported")
        if m["scale_by_sigma"] and (sde != "vesde" or continuous):
            raise ValueError("config: DDPM with model.scale_by_sigma indexes its sigma table with the labels, which "
                             "needs integer labels (training.sde=vesde, training.continuous=False)")
        return
    for key in _NCSNPP_FIELDS:
        _need(cfg, "model", key)
    fourier = str(m["embedding_type"]).lower() == "fourier"
    if fourier and not continuous:
        raise ValueError("config: model.embedding_type='fourier' needs training.continuous=True (the official "
                         "NCSN++ asserts it)")
    if fourier:
        _need(cfg, "model", "fourier_scale")
    # layerspp.Upsample (progressive outputs, DDPM-type blocks) fails in the official code without FIR
    # (F.interpolate(x, size, 'nearest') passes 'nearest' as scale_factor) and with FIR and a conv
    # (upsample_conv_2d slices a tensor with a negative step): refuse what cannot have been trained
    prog, ddpm_blocks = str(m["progressive"]).lower(), str(m["resblock_type"]).lower() == "ddpm"
    if (prog != "none" or ddpm_blocks) and len(m["ch_mult"]) > 1:
        if not m["fir"]:
            raise ValueError(f"config: model.progressive={prog!r} / resblock_type={m['resblock_type']!r} with "
                             "fir=False up-samples with layerspp.Upsample, which fails in the official code "
                             "(F.interpolate gets 'nearest' as scale_factor); not supported")
        if prog == "residual" or (ddpm_blocks and m.get("resamp_with_conv", True)):
            raise ValueError("config: a fused FIR up-sampling convolution (progressive='residual', or "
                             "resblock_type='ddpm' with resamp_with_conv) fails in the official code; not supported")
