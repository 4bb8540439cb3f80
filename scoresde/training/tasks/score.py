"""The score-model task: a `ScoreModel` over an SDE trained by the config's recipe (scoresde.training.recipes).

Loss: by default (`train.recipe = "dsm"`) Song et al. (2021), "Score-Based Generative Modeling through SDEs",
arXiv:2011.13456, eq. 7 (`dsm_loss`); EDM's (`edm`) or flow matching's (`flow`) otherwise; with labels, the
class-conditional form with label dropout for classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598),
or, on captioned data (`Dataset.texts`), its text-conditional form: a text encoder (`model.text_encoder`,
`scoresde.models.text`) trained jointly with a network that cross-attends to its tokens (`model.context_dim`),
each caption replaced by the empty prompt "" with probability `train.p_uncond` (prompt dropout: the null
condition of guidance). With `model.image_shape = [C, h, w]`, a super-resolution stage: p(x | x_low) with the
batch's area downsample as the condition, noise-conditioning augmentation and blur (scoresde.training.superres).
Samples come from the config's [sample] sampler; evaluation is the exact mode statistics for mixture data.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from scoresde._common.limits import MAX_CLASSES
from scoresde.data.datasets import Dataset, from_array, load_dataset, check_data_source, example_shape
from scoresde.training.tasks.base import TASKS, Task
from scoresde.models.conditioning import ConditionedScore
from scoresde.models.nets import MODELS, model_arguments
from scoresde.models.text import TEXT_KEYS, text_encoder_config
from scoresde.samplers.core import SAMPLERS, describe_estimate, estimate_sampling
from scoresde.sde.base import SDES
from scoresde.evaluation.metrics.runs import run_metric_name, run_metrics
from scoresde.runs.load import build_model
from scoresde.training.recipes import RECIPES, recipe_defaults, recipe_loss, recipe_meta
from scoresde.runs.plots import image_grid, is_image_shape, plot_samples
from scoresde.training.superres import SuperResolution


__all__ = ["ScoreTask", "fast_draw"]

_SCORE_KEYS = ("parameterization", "conditioning", "scale_by_sigma")   # model.* keys for ScoreModel
_IMAGE_KEYS = ("image_shape", "image_upsample")    # model.* keys of an image condition (not sizes of the net)
_TEXT_DEFAULT_DIM = 64     # model.context_dim of a text-conditional run that sets none
_EVAL_FIELDS = {"mode_weight_tv": ("mode_weight_tv", "within_mode_std_error"), "fid": ("fid", "kid"),
                "kid": ("kid", "kid_std")}
_TEXT_FIELDS = ("prompt_accuracy",)   # logged after FID by a text-conditional run on digitpairs

# Defaults for image data (`data_defaults`; each applies only where the user set nothing, and a resumed run
# keeps its own values). The built-in [sample] (euler_maruyama, 200 steps, 4000 samples) fits the 2-D
# default job; on images it means 200 network calls on 4000 images after training.
#   - The final draw and the plots: DPM-Solver++(2M) at 20 steps (digits FID 2.68 at 20 NFE against the
#     converged flow's 2.66, benchmarks/results/fast_samplers_digits.md), 64 samples (the plot's grid), or
#     256 where the run's metric is the digits FID (it needs more samples than its 64 features; 256 is what
#     the benchmarks score). A sampler set by the user keeps its own step default.
#   - The network: a DDPM U-Net unless one is named, trained at batch 64 with 200 warm-up steps at lr 2e-4
#     (score_sde's for images). Every network's own defaults are CIFAR-10's (a 35.7M-parameter U-Net;
#     DiT-S/2, 33M), 33 s per step of batch 512 on the 8x8 digits on 2 CPU cores; on images of at most
#     16 x 16 pixels they are sized down to under 1M parameters (configs/digits.toml, configs/digits_dit.toml):
_IMAGE_DRAW = {"sampler": "dpm_solver", "steps": 20}
_GRID, _FID_N = 64, 256
_SMALL_UNET = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
_SMALL_NETS: dict[str, tuple[dict[str, Any], float]] = {     # name -> (model keys, lr)
    "ddpm_unet": ({**_SMALL_UNET, "num_groups": 8}, 1e-3),     # 0.65M parameters
    "ncsnpp": (_SMALL_UNET, 1e-3), "ddpmpp": (_SMALL_UNET, 1e-3),   # 0.72M
    "dit": ({"patch_size": 2, "hidden_size": 96, "depth": 4, "num_heads": 4}, 5e-4),   # 16 tokens, 0.72M
}
_DIT_ARCH = ("preset", "depth", "hidden_size", "num_heads", "patch_size")   # any of them: the user sizes the DiT
# A super-resolution stage (model.image_shape set) of images of at most 32 x 32 (the digits32 8 -> 32 stage): one
# level more than the 16-pixel nets (32 -> 16 -> 8), 1.08M parameters, 0.97 CPU s per step of batch 64 on one
# thread (benchmarks/superres_step.py; the 8x8 base: 0.08 s); 32 x 32 images without an image condition keep the
# network's own (CIFAR-10) size (35.7M, 22 s per step).
_SR32_UNET = {**_SMALL_UNET, "ch_mult": [1, 2, 2]}
_SR32_NETS: dict[str, tuple[dict[str, Any], float]] = {
    "ddpm_unet": ({**_SR32_UNET, "num_groups": 8}, 1e-3), "ncsnpp": (_SR32_UNET, 1e-3), "ddpmpp": (_SR32_UNET, 1e-3),
    "dit": ({"patch_size": 4, "hidden_size": 96, "depth": 4, "num_heads": 4}, 5e-4),     # 64 tokens
}


def _sr_parameterization(view: Mapping[str, Any], out: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A super-resolution stage (model.image_shape set) trained by a recipe without a preconditioner of its own
    (dsm) predicts v (Salimans & Ho 2022, arXiv:2202.00512; Imagen's super-resolution stages) unless the user set
    model.parameterization. Measured on digits32 8 -> 32 (600 steps, the same net and draws): an eps stage's data
    prediction at t = 1 is off by MSE 60 (its error sigma/alpha = 150 times amplified), so every probability-flow
    sampler ends at wrong images (ddim 20 MSE 4.4 against the true images), where the v stage gives ddim 20 MSE
    0.00027 and dpm_solver 20 0.00033 (the reverse SDE at 50 steps: eps 0.090, v 0.0024)."""
    user = view.get("user", {})
    user_model = user.get("model") if isinstance(user.get("model"), Mapping) else {}
    recipe = view.get("train", {}).get("recipe") if isinstance(view.get("train"), Mapping) else None
    if (user_model.get("image_shape") is None or "parameterization" in user_model
            or (recipe in RECIPES and RECIPES[recipe].parameterization is not None)):
        return out
    model = out.get("model") or {k: v for k, v in view["model"].items() if k not in user_model}
    return {**out, "model": {**model, "parameterization": "v"}}


def fast_draw(view: Mapping[str, Any], n: int) -> dict[str, Any]:
    """The [sample] defaults of image-like data (images, latents): a fast sampler and `n` samples, under the
    keys the user set (view["user"]); a sampler the user named keeps the built-in step count."""
    user = view["user"].get("sample", {}) if isinstance(view["user"].get("sample"), Mapping) else {}
    return {"n": n} if "sampler" in user else {**_IMAGE_DRAW, "n": n}


def _data_shape(view: Mapping[str, Any], data: Any) -> tuple[tuple[int, ...] | None, str]:
    """(shape of one example, data name) of the in-memory `data` or of the source the config names."""
    if data is not None:
        x = data.x if isinstance(data, Dataset) else data
        shape = tuple(x.shape[1:]) if hasattr(x, "shape") else None
        return shape, data.name if isinstance(data, Dataset) else ""
    d = view["data"]
    if not isinstance(d.get("name"), str) or not isinstance(d.get("image_size", 0), int):
        return None, ""
    return example_shape(d["name"], d.get("image_size", 0)), d["name"]


@TASKS.register("score")
class ScoreTask(Task):
    """A score network trained by DSM on the config's data and SDE."""

    name = "score"

    @classmethod
    def check_config(cls, cfg: dict[str, Any]) -> None:
        """Registry names of the config exist (KeyError listing the known names otherwise)."""
        SDES[cfg["sde"]["name"]], MODELS[cfg["model"]["name"]], SAMPLERS[cfg["sample"]["sampler"]]
        check_data_source(cfg["data"]["name"])              # a bad --data fails before anything runs

    @classmethod
    def data_defaults(cls, view: dict[str, Any], data: Any = None) -> dict[str, dict[str, Any]]:
        """Images: a fast final draw of as many samples as the plot and the run's metric need; for (C, H, W) images
        also a U-Net unless a network is named (or keys of the default network are set), batch 64, and a
        network sized to small images (the table above). Any data: the SDE, preconditioner and noise input of
        the `train.recipe` (scoresde.training.recipes) where the user set none."""
        return recipe_defaults(view, _sr_parameterization(view, cls._image_defaults(view, data)))

    @classmethod
    def _image_defaults(cls, view: dict[str, Any], data: Any = None) -> dict[str, dict[str, Any]]:
        shape, name = _data_shape(view, data)
        if shape is None or not is_image_shape(shape):
            return {}
        user_model = view["user"].get("model", {}) if isinstance(view["user"].get("model"), Mapping) else {}
        sizes_set = [k for k in user_model if k not in (*_SCORE_KEYS, *TEXT_KEYS, *_IMAGE_KEYS, "num_classes",
                                                         "context_dim")]
        if len(shape) != 3 or ("name" not in user_model and sizes_set):   # (H, W) arrays; keys of the default net
            return {"sample": fast_draw(view, _FID_N if name == "digits" else _GRID)}
        net = user_model.get("name", "ddpm_unet")
        model = {"name": net, **{k: v for k, v in view["model"].items() if k not in user_model and k != "name"}}
        out: dict[str, dict[str, Any]] = {"sample": fast_draw(view, _FID_N if name == "digits" else _GRID)}
        if net == "mlp" or not isinstance(net, str):
            return {**out, "model": model}
        small = _SMALL_NETS if max(shape[-2:]) <= 16 else _SR32_NETS if (
            user_model.get("image_shape") is not None and max(shape[-2:]) <= 32) else {}
        sized, lr = small.get(net, ({}, 2e-4))
        if net == "dit" and any(k in user_model for k in _DIT_ARCH):
            sized = {}
        return {**out, "model": {**model, **sized}, "train": {"batch_size": 64, "warmup": 200, "lr": lr}}

    @property
    def eval_fields(self) -> tuple[str, ...]:
        """The run's metric (`scoresde.metrics.run_metrics`): mixture mode statistics, digits FID/KID,
        KID of other point sets; the first is the figure of merit."""
        fields = _EVAL_FIELDS.get(run_metric_name(self.ds), ())
        text = getattr(self, "text", None) is not None and getattr(self.ds, "name", None) == "digitpairs"
        return fields + _TEXT_FIELDS if fields and text else fields

    # --- data and model ------------------------------------------------------------------------------
    def prepare(self) -> None:
        d, data = self.cfg["data"], self.data
        if data is None:
            self.ds = load_dataset(d["name"], size=d["size"], seed=self.cfg["seed"], normalize=d["normalize"],
                                   image_size=d["image_size"], labels=d["labels"])
        elif isinstance(data, Dataset):
            self.ds = data
        else:
            self.ds = from_array(data, name=d["name"], normalize=d["normalize"])
        self.K = self._num_classes()
        self.text = self._text_encoder()
        self.sr = SuperResolution.from_config(self.cfg, self.ds.shape, self.ds.name)
        if self.sr is not None and self.text is not None:
            raise ValueError("config model.image_shape with a text encoder: a super-resolution model is trained "
                             "with class labels or unconditionally, not on captions yet; set "
                             "model.text_encoder = \"\"")

    @property
    def example_numel(self) -> int:
        return self.ds.x[0].numel()

    def _num_classes(self) -> int:
        """K of a class-conditional model (0: unconditional), checked against the data's labels;
        "auto" is resolved in the config (K = the number of classes the labels name)."""
        ds, K = self.ds, self.cfg["model"].get("num_classes", 0)
        if not K:
            return 0
        if ds.labels is None:
            raise ValueError(f"model.num_classes = {K!r} needs labelled data, but data {ds.name!r} has no labels "
                             "(built-in mixture/moons/rings/digits, .npz key y or labels, image sub-folders); "
                             "set model.num_classes = 0 for an unconditional model")
        lo, hi = int(ds.labels.min()), int(ds.labels.max())
        if K == "auto" and hi >= MAX_CLASSES:          # K sizes the label embedding: bounded before it exists
            raise ValueError(f"model.num_classes = \"auto\": data {ds.name!r} has a label {hi}, which would make "
                             f"{hi + 1} classes, over the bound of {MAX_CLASSES}; labels must be class indices "
                             "0 .. K-1")
        if K == "auto":
            K = self.cfg["model"]["num_classes"] = max(hi + 1, len(ds.classes))
        if lo < 0 or hi >= K:
            raise ValueError(f"model.num_classes = {K}: data {ds.name!r} has labels in [{lo}, {hi}], expected "
                             f"[0, {K - 1}]; raise model.num_classes or use \"auto\"")
        return K

    def _text_encoder(self) -> dict[str, Any] | None:
        """{"name", "config"} of the run's text encoder, or None. Captioned data and a network that cross-attends
        (a `context_dim` argument) make one unless model.text_encoder = "" says not; model.context_dim defaults
        to 64, model.text_len to the longest caption + BOS (both written to the run's config)."""
        model, texts = self.cfg["model"], self.ds.texts
        name = model.get("text_encoder")
        takes = "context_dim" in (model_arguments(model["name"]) or [])
        if name is None:
            name = "transformer" if texts is not None and takes and not self.K else ""
        if not name:
            return None
        if texts is None:
            raise ValueError(f"config model.text_encoder = {name!r}: needs captioned data (texts aligned with the "
                             f"examples), but data {self.ds.name!r} has none; set model.text_encoder = \"\"")
        if not takes:
            raise ValueError(f"config model.text_encoder = {name!r}: model {model['name']!r} has no cross-attention "
                             "(no context_dim); use ddpm_unet or dit")
        if self.K:
            raise ValueError("config model.num_classes and model.text_encoder: a model is conditioned on labels or "
                             "on text, found both; set model.num_classes = 0 or model.text_encoder = \"\"")
        if len(texts) != len(self.ds):
            raise ValueError(f"data {self.ds.name!r}: {len(texts)} captions for {len(self.ds)} examples")
        model["text_encoder"] = name
        model.setdefault("context_dim", _TEXT_DEFAULT_DIM)
        out = text_encoder_config(model, texts)
        model["text_len"] = out["config"]["max_len"]
        return out

    def build(self, device: torch.device) -> torch.nn.Module:
        cfg, shape = self.cfg, list(self.ds.shape)
        model_kw = {k: v for k, v in cfg["model"].items() if k != "name" and k not in _SCORE_KEYS
                    and k not in TEXT_KEYS and not (k == "num_classes" and not v)}   # num_classes = 0: unconditional
        meta = {"sde": {"name": cfg["sde"]["name"], "config": {k: v for k, v in cfg["sde"].items() if k != "name"}},
                "model": {"name": cfg["model"]["name"], "config": {**model_kw, "data_shape": shape},
                          "score_config": self._score_config()},
                "data_shape": shape}
        if self.text is not None:
            meta["model"]["text_encoder"] = self.text
        model, self.sde = build_model(meta)
        self.model = model.to(device)
        self.x_all = self.ds.x.to(device)
        self.y_all = self.ds.labels.to(device) if self.K else None
        if self.sr is not None:
            self.sr.check_sde(self.sde)
            self.sr_images = self._sr_images().to(device)
        return self.model

    def _sr_images(self) -> torch.Tensor:
        """The images a super-resolution condition is the low-res view of (here the data; a latent run: its pixels)."""
        return self.ds.x

    def _score_config(self) -> dict[str, Any]:
        """The ScoreModel's settings of the config: the [model] keys of `_SCORE_KEYS`, and EDM's
        `train.sigma_data` for its preconditioner."""
        out = {k: v for k, v in self.cfg["model"].items() if k in _SCORE_KEYS}
        if out.get("parameterization") == "edm":
            out["sigma_data"] = self.cfg["train"]["sigma_data"]
        return out

    def meta(self) -> dict[str, Any]:
        ds = self.ds
        text = {} if self.text is None else {"text_encoder": {"name": self.text["name"],
                                                              "config": self.model.text_encoder.config()}}
        return {"model": {"name": self.cfg["model"]["name"], "config": self.model.net.config,
                          "score_config": self.model.config(), **text},
                "sde": {"name": self.cfg["sde"]["name"], "config": self.sde.config()},
                "recipe": recipe_meta(self.cfg["train"]),
                "data_shape": list(ds.shape), "data": {"name": ds.name, "kind": ds.kind, "classes": ds.classes},
                **({"superres": self.sr.meta()} if self.sr is not None else {})}

    # --- one step --------------------------------------------------------------------------------------
    def loss(self, model, data_gen, noise_gen) -> torch.Tensor:
        T = self.cfg["train"]
        idx = torch.randint(len(self.ds), (T["batch_size"],), generator=data_gen).to(self.x_all.device)
        return self.batch_loss(model, self.x_all[idx], idx, noise_gen)

    def batch_loss(self, model, x0: torch.Tensor, idx: torch.Tensor, noise_gen) -> torch.Tensor:
        """The recipe's loss of the batch x0 (examples `idx` of the data): unconditional, with label dropout, or
        with prompt dropout (captions replaced by "" with probability p_uncond); the dropout draws from
        noise_gen first, so resume stays exact."""
        texts = [self.ds.texts[i] for i in idx.tolist()] if self.text is not None else None
        cond = None if self.sr is None else self.sr.condition(model, self.sr_images[idx], noise_gen)
        return recipe_loss(model, self.sde, x0, self.cfg["train"], labels=self.y_all[idx] if self.K else None,
                           num_classes=self.K, texts=texts, cond=cond, generator=noise_gen)

    # --- hooks -----------------------------------------------------------------------------------------
    def sample(self, model, generator, n, progress=False) -> torch.Tensor:
        """`n` samples with the [sample] sampler and steps; with `progress` (the final draw) the count and the
        time it will take (one score evaluation timed, times the sampler's NFE) are printed first."""
        s = self.cfg["sample"]
        device = next(model.parameters()).device
        score = model
        if self.text is not None:           # a text model draws for the data's captions, in turn
            with torch.no_grad():
                cond = model.text_encoder.encode(self._prompts(n))
            score = ConditionedScore(model, cond)
        if self.sr is not None:             # super-resolutions of the low-res views of n examples, at s = 0
            idx = SuperResolution.shown(len(self.ds), n).to(device)
            cond, self.sr_low = self.sr.sample_cond(model, self.sr_images[idx], self.y_all[idx] if self.K else None)
            score = ConditionedScore(model, cond)
        if progress:
            self.estimate = estimate_sampling(self.sde, score, (n, *self.ds.shape), sampler=s["sampler"],
                                              steps=s["steps"], device=device)
            self.say("final draw: " + describe_estimate(self.estimate, "samples"))
        return self.sde.sample(score, (n, *self.ds.shape), sampler=s["sampler"], steps=s["steps"],
                               generator=generator, device=device, progress=progress).cpu()

    def plot(self, x, path, title) -> None:
        if self.sr is not None and len(getattr(self, "sr_low", ())) == len(x):
            image_grid(self.sr.grid(self.sr_low, x), path, nrow=8,
                       title=f"{self.ds.name}: {title}: low-res inputs above their super-resolutions")
            return
        plot_samples(x, path, data=self.ds.x, title=f"{self.ds.name}: {title}")

    def evaluate(self, model, generator) -> dict[str, float]:
        if not self.eval_fields:
            return {}
        n = self.cfg["eval"]["n"]
        return run_metrics(self.ds, self.sample(model, generator, n), prompts=self._prompts(n), seed=self.cfg["seed"])

    def _prompts(self, n: int) -> list[str] | None:
        """The captions `sample` draws n samples for (the data's, in turn), or None (no text)."""
        return [self.ds.texts[i % len(self.ds)] for i in range(n)] if self.text is not None else None

    def final_metrics(self, x) -> dict[str, Any]:
        out = self.draw_metrics()
        if self.sr is not None and len(getattr(self, "sr_low", ())) == len(x):
            out["sr_psnr"] = round(self.sr.psnr(self.sr_low, x), 3)     # downsampled output against its input
        per = 2 if getattr(self.ds, "name", None) == "digitpairs" else 1       # a canvas gives two glyphs
        if not self.eval_fields or (self.eval_fields[0] == "fid" and per * len(x) <= 64):   # FID needs N > F = 64
            return out
        m = run_metrics(self.ds, x, prompts=self._prompts(len(x)), seed=self.cfg["seed"])
        return {**out, **{k: round(float(v), 4) for k, v in m.items()}}
