"""The score-model task: continuous-time denoising score matching of a `ScoreModel` over an SDE.

Loss: Song et al. (2021), "Score-Based Generative Modeling through SDEs", arXiv:2011.13456, eq. 7
(`dsm_loss`), or its class-conditional form with label dropout for classifier-free guidance
(Ho & Salimans 2022, arXiv:2207.12598; `conditional_dsm_loss`). Samples come from the config's
[sample] sampler; evaluation is the exact mode statistics for mixture data.
"""
from __future__ import annotations

from typing import Any

import torch

from scoresde._common.limits import MAX_CLASSES
from scoresde.data.datasets import Dataset, from_array, load_dataset, check_data_source
from scoresde.training.tasks.base import TASKS, Task
from scoresde.models.nets import MODELS
from scoresde.samplers.core import SAMPLERS
from scoresde.sde.base import SDES
from scoresde.evaluation.metrics.runs import run_metric_name, run_metrics
from scoresde.runs.load import build_model
from scoresde.training.losses import conditional_dsm_loss
from scoresde.training import losses
from scoresde.runs.plots import plot_samples


__all__ = ["ScoreTask"]

_SCORE_KEYS = ("parameterization", "conditioning", "scale_by_sigma")   # model.* keys for ScoreModel
_EVAL_FIELDS = {"mode_weight_tv": ("mode_weight_tv", "within_mode_std_error"), "fid": ("fid", "kid"),
                "kid": ("kid", "kid_std")}


@TASKS.register("score")
class ScoreTask(Task):
    """A score network trained by DSM on the config's data and SDE."""

    name = "score"

    @classmethod
    def check_config(cls, cfg: dict[str, Any]) -> None:
        """Registry names of the config exist (KeyError listing the known names otherwise)."""
        SDES[cfg["sde"]["name"]], MODELS[cfg["model"]["name"]], SAMPLERS[cfg["sample"]["sampler"]]
        check_data_source(cfg["data"]["name"])              # a bad --data fails before anything runs

    @property
    def eval_fields(self) -> tuple[str, ...]:
        """The run's metric (`scoresde.metrics.run_metrics`): mixture mode statistics, digits FID/KID,
        KID of other point sets; the first is the figure of merit."""
        return _EVAL_FIELDS.get(run_metric_name(self.ds), ())

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

    def build(self, device: torch.device) -> torch.nn.Module:
        cfg, shape = self.cfg, list(self.ds.shape)
        model_kw = {k: v for k, v in cfg["model"].items() if k != "name" and k not in _SCORE_KEYS
                    and not (k == "num_classes" and not v)}           # num_classes = 0: unconditional
        meta = {"sde": {"name": cfg["sde"]["name"], "config": {k: v for k, v in cfg["sde"].items() if k != "name"}},
                "model": {"name": cfg["model"]["name"], "config": {**model_kw, "data_shape": shape},
                          "score_config": {k: v for k, v in cfg["model"].items() if k in _SCORE_KEYS}},
                "data_shape": shape}
        model, self.sde = build_model(meta)
        self.model = model.to(device)
        self.x_all = self.ds.x.to(device)
        self.y_all = self.ds.labels.to(device) if self.K else None
        return self.model

    def meta(self) -> dict[str, Any]:
        ds = self.ds
        return {"model": {"name": self.cfg["model"]["name"], "config": self.model.net.config,
                          "score_config": self.model.config()},
                "sde": {"name": self.cfg["sde"]["name"], "config": self.sde.config()},
                "data_shape": list(ds.shape), "data": {"name": ds.name, "kind": ds.kind, "classes": ds.classes}}

    # --- one step --------------------------------------------------------------------------------------
    def loss(self, model, data_gen, noise_gen) -> torch.Tensor:
        T = self.cfg["train"]
        idx = torch.randint(len(self.ds), (T["batch_size"],), generator=data_gen).to(self.x_all.device)
        kw = dict(likelihood_weighting=T["likelihood_weighting"], eps=T["loss_eps"], generator=noise_gen)
        if self.K:           # label dropout draws from noise_gen first, so resume stays exact
            return conditional_dsm_loss(model, self.sde, self.x_all[idx], self.y_all[idx], p_uncond=T["p_uncond"],
                                        num_classes=self.K, **kw)
        return losses.dsm_loss(model, self.sde, self.x_all[idx], **kw)

    # --- hooks -----------------------------------------------------------------------------------------
    def sample(self, model, generator, n, progress=False) -> torch.Tensor:
        s = self.cfg["sample"]
        device = next(model.parameters()).device
        return self.sde.sample(model, (n, *self.ds.shape), sampler=s["sampler"], steps=s["steps"],
                               generator=generator, device=device, progress=progress).cpu()

    def plot(self, x, path, title) -> None:
        plot_samples(x, path, data=self.ds.x, title=f"{self.ds.name}: {title}")

    def evaluate(self, model, generator) -> dict[str, float]:
        if not self.eval_fields:
            return {}
        return run_metrics(self.ds, self.sample(model, generator, self.cfg["eval"]["n"]), seed=self.cfg["seed"])

    def final_metrics(self, x) -> dict[str, Any]:
        if not self.eval_fields or (self.eval_fields[0] == "fid" and len(x) <= 64):   # FID needs N > F = 64
            return {}
        return {k: round(float(v), 4) for k, v in run_metrics(self.ds, x, seed=self.cfg["seed"]).items()}
