"""Training recipes of a score model: what the network predicts, the loss, and the training-time distribution.

A recipe is selected by `train.recipe` in the config; each is one class registered in `RECIPES`:

| recipe | preconditioner (model.parameterization) | loss (scoresde.training.losses) | times | default SDE |
|--------|-----------------------------------------|----------------------------------|-------|-------------|
| `dsm`  | the config's (default `eps`)            | `dsm_loss`: ||sigma s + z||^2, or g^2 weighted (`train.likelihood_weighting`) | t ~ U(loss_eps, T) | the config's (`vp`) |
| `edm`  | `edm` (EDMPrediction, `train.sigma_data`), c_noise = ln(s) / 4 | `edm_loss`: (s^2 + s_d^2) / (s s_d)^2 ||D - x0||^2 | ln s ~ N(`train.p_mean`, `train.p_std`^2) | `edm` |
| `flow` | `flow` (FlowPrediction: u = z - x0)   | `flow_matching_loss`: ||u - (z - x0)||^2 | tau ~ U or logit-normal(`train.logit_mean`, `train.logit_std`) (`train.t_dist`), SD3 shift `train.shift` | `flow` |

Karras et al. (2022), arXiv:2206.00364 (EDM); Liu et al. (2022), arXiv:2209.03003 and Lipman et al. (2022),
arXiv:2210.02747 (flow matching); Esser et al. (2024), arXiv:2403.03206 (SD3: logit-normal t, shift).

A recipe's preconditioner, noise input and SDE are defaults of a new run: a `model.parameterization`,
`model.conditioning` or [sde] the user sets wins (every preconditioner gives the prediction each loss takes,
D for EDM's, u = eps - D for flow matching's). Noise levels are drawn on the scale s = sigma / alpha and mapped
to the SDE's time of the same half log-SNR, so `edm` and `flow` train on any linear SDE (on VP too).
Adding a recipe is one class here.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import torch

from scoresde._common.registry import Registry
from scoresde.models.conditioning import Cond, check_labels
from scoresde.training import losses

__all__ = ["Recipe", "RECIPES", "recipe_loss", "recipe_defaults", "recipe_meta"]

RECIPES = Registry("recipe")


class Recipe:
    """A training recipe: the defaults it brings (`parameterization`, `conditioning`, `sde`; None: the config's),
    the model prediction its loss takes (`output`, a `ScoreModel(..., output=...)` name), the `train.*` keys it
    reads (`keys`, recorded in checkpoints), and `loss(fn, sde, x0, train, generator)` of one batch."""

    name = ""
    parameterization: str | None = None
    conditioning: str | None = None
    sde: str | None = None
    output = "score"
    keys: tuple[str, ...] = ()

    def loss(self, fn: Callable, sde: Any, x0: torch.Tensor, train: Mapping[str, Any],
             generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError


@RECIPES.register("dsm")
class DSMRecipe(Recipe):
    """Denoising score matching (Song et al. 2021, eq. 7): t ~ U(loss_eps, T), lambda = sigma^2 or g^2."""

    name = "dsm"
    keys = ("likelihood_weighting", "loss_eps")

    def loss(self, fn, sde, x0, train, generator):
        return losses.dsm_loss(fn, sde, x0, likelihood_weighting=train["likelihood_weighting"], eps=train["loss_eps"],
                               generator=generator)


@RECIPES.register("edm")
class EDMRecipe(Recipe):
    """EDM (Karras et al. 2022): EDM's preconditioner, lambda(s) = (s^2 + s_d^2) / (s s_d)^2, ln s ~ N(P_mean, P_std^2)."""

    name = "edm"
    parameterization, conditioning, sde, output = "edm", "edm", "edm", "x0"
    keys = ("p_mean", "p_std", "sigma_data", "loss_eps")

    def loss(self, fn, sde, x0, train, generator):
        return losses.edm_loss(fn, sde, x0, p_mean=train["p_mean"], p_std=train["p_std"],
                               sigma_data=train["sigma_data"], eps=train["loss_eps"], generator=generator)


@RECIPES.register("flow")
class FlowRecipe(Recipe):
    """Flow matching / rectified flow: velocity prediction u = z - x0, t uniform or logit-normal, SD3's shift."""

    name = "flow"
    parameterization, sde, output = "flow", "flow", "u"
    keys = ("t_dist", "logit_mean", "logit_std", "shift", "loss_eps")

    def loss(self, fn, sde, x0, train, generator):
        return losses.flow_matching_loss(fn, sde, x0, t_dist=train["t_dist"], logit_mean=train["logit_mean"],
                                         logit_std=train["logit_std"], shift=train["shift"], eps=train["loss_eps"],
                                         generator=generator)


def recipe_loss(model: Callable, sde: Any, x0: torch.Tensor, train: Mapping[str, Any], *,
                labels: torch.Tensor | None = None, num_classes: int = 0, texts: list[str] | None = None,
                cond: Cond | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The loss of one batch `x0` under the recipe `train["recipe"]` (the [train] section of a config).

    `model` is a `ScoreModel` (or a DDP wrapper of one: it is only called, with `output=` the recipe's
    prediction). With `num_classes` K > 0, `labels` (B,) are dropped to the null label with probability
    `train["p_uncond"]` first (one uniform draw per row from `generator`), as `conditional_dsm_loss` does; with
    `texts` (one caption per row, a text-conditional model), the captions are replaced by the empty prompt ""
    with that probability (prompt dropout), drawn the same way. `cond`: a `Cond` of the batch beyond labels (an
    image condition: `ScoreModel.image_cond`, a super-resolution model) every call of the loss gets; `labels`
    ride along in it and label dropout nulls the labels only (`Cond.null_like` keeps the image)."""
    recipe = RECIPES[train["recipe"]]()
    if cond is not None:
        if not isinstance(cond, Cond):
            raise TypeError(f"cond: expected a Cond (e.g. model.image_cond(...)), found {type(cond).__name__}")
        if texts is not None:
            raise ValueError("cond: a Cond with prompts (texts) is not supported; pass one of them")
        if num_classes:
            y = check_labels(labels, x0.shape[0], num_classes, allow_null=True, device=x0.device)
            cond = Cond(**{**dict(cond.items()), "labels": y})
        return _cond_loss(recipe, model, sde, x0, train, cond.expand(x0.shape[0]), num_classes, generator)
    if texts is not None:
        keep = torch.rand(len(texts), generator=generator, device=x0.device) >= train["p_uncond"]
        model = functools.partial(model, cond=[s if k else "" for s, k in zip(texts, keep.tolist())])
    if recipe.name == "dsm":           # the calls of before recipes existed: the same draws, bit for bit
        kw = dict(likelihood_weighting=train["likelihood_weighting"], eps=train["loss_eps"], generator=generator)
        if num_classes:
            return losses.conditional_dsm_loss(model, sde, x0, labels, p_uncond=train["p_uncond"],
                                               num_classes=num_classes, **kw)
        return losses.dsm_loss(model, sde, x0, **kw)
    fn = model if recipe.output == "score" else functools.partial(model, output=recipe.output)
    if num_classes:
        y = check_labels(labels, x0.shape[0], num_classes, allow_null=True, device=x0.device)
        y_in = losses.label_dropout(y, train["p_uncond"], num_classes, generator)
        fn = functools.partial(fn, y=y_in)
    return recipe.loss(fn, sde, x0, train, generator)


def _cond_loss(recipe: Recipe, model: Callable, sde: Any, x0: torch.Tensor, train: Mapping[str, Any], cond: Cond,
               num_classes: int, generator: torch.Generator | None) -> torch.Tensor:
    """`recipe_loss` under a Cond: label dropout of its labels first (one uniform draw per row, as for labels),
    then the recipe's loss of model(x, t, cond)."""
    if num_classes:
        cond = losses.label_dropout(cond, train["p_uncond"], num_classes, generator)
    fn = model if recipe.output == "score" else functools.partial(model, output=recipe.output)
    return recipe.loss(lambda x, t: fn(x, t, cond), sde, x0, train, generator)


def recipe_meta(train: Mapping[str, Any]) -> dict[str, Any]:
    """{"name": recipe, key: value, ...}: the recipe and the options it read, for a checkpoint's metadata."""
    recipe = RECIPES[train["recipe"]]()
    return {"name": recipe.name, **{k: train[k] for k in recipe.keys}}


def recipe_defaults(view: Mapping[str, Any], out: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`out` (a task's data defaults) with the defaults of the recipe that `view` (the user's config over the
    defaults, `Task.data_defaults`) names: its SDE unless the user set any [sde] key, its parameterization and
    noise input unless the user set them. An unknown recipe is left to the config's check."""
    name = view.get("train", {}).get("recipe") if isinstance(view.get("train"), Mapping) else None
    if not isinstance(name, str) or name not in RECIPES:
        return out
    recipe, user = RECIPES[name], view.get("user", {})
    user_sde = user.get("sde") if isinstance(user.get("sde"), Mapping) else {}
    user_model = user.get("model") if isinstance(user.get("model"), Mapping) else {}
    out = dict(out)
    if recipe.sde is not None and not user_sde:
        out["sde"] = {"name": recipe.sde}
    keys = {k: v for k, v in (("parameterization", recipe.parameterization), ("conditioning", recipe.conditioning))
            if v is not None and k not in user_model}
    if keys:
        model = out.get("model") or {k: v for k, v in view["model"].items() if k not in user_model}
        out["model"] = {**model, **keys}
    return out
