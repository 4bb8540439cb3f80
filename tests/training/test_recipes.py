"""Training recipes (scoresde.training.recipes): EDM's and flow matching's losses against hand-written closed forms
and NVlabs' EDMLoss, their time distributions' moments, the DSM default bit-identical to the calls it replaced,
the config's recipe defaults and errors, and runs of each recipe that load, sample and resume exactly."""
import math

import pytest
import torch
from torch import nn

import scoresde as ss
from scoresde.models.preconditioners import EDMPrediction, FlowPrediction
from scoresde.runs.checkpoint import read_checkpoint
from scoresde.training.config import resolve
from scoresde.training.losses import (conditional_dsm_loss, dsm_loss, edm_loss, edm_times, flow_matching_loss,
                                      flow_times)
from scoresde.training.recipes import RECIPES, recipe_loss
from scoresde.training.resolve import config_changes

D = torch.float64


class Lin(nn.Module):
    """F(x, c) = w x + b c: a tiny differentiable network of the conditioning value too."""

    def __init__(self, w=0.3, b=0.01):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=D))
        self.b = nn.Parameter(torch.tensor(b, dtype=D))

    def forward(self, x, c, cond=None):
        return self.w * x + self.b * c.reshape(-1, *([1] * (x.ndim - 1)))


def _data(seed=0, shape=(6, 3)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=D), torch.randn(shape, generator=g, dtype=D)


# --- losses against closed forms ---------------------------------------------------------------------------
def test_edm_loss_is_the_weighted_denoiser_error_on_fixed_inputs():
    """lambda(s) ||D - x0||^2 with lambda = (s^2 + s_d^2) / (s s_d)^2, s = sigma / alpha; D = 0.5 x by hand."""
    x0, z = _data()
    t = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 0.95], dtype=D)
    for sde in (ss.VPSDE(), ss.EDMSDE(), ss.FlowSDE()):
        tt = t * sde.T
        per = edm_loss(lambda x, _: 0.5 * x, sde, x0, t=tt, noise=z, sigma_data=0.7, per_sample=True)
        expect = []
        for i in range(6):
            a, s = (float(v) for v in sde.marginal_coefs(tt[i:i + 1]))
            x = a * x0[i] + s * z[i]
            lev = s / a
            w = (lev ** 2 + 0.49) / (lev * 0.7) ** 2
            expect.append(w * float(((0.5 * x - x0[i]) ** 2).mean()))
        torch.testing.assert_close(per, torch.tensor(expect, dtype=D), rtol=1e-12, atol=0)
        half = edm_loss(lambda x, _: 0.5 * x, sde, x0, t=tt, noise=z, sigma_data=0.7, reduce_mean=False)
        torch.testing.assert_close(half, torch.tensor(expect, dtype=D).mean() * 3 / 2, rtol=1e-12, atol=0)


def test_flow_matching_loss_is_the_velocity_error_on_fixed_inputs():
    """||u(x_t) - (z - x0)||^2 with x_t = (1 - t) x0 + t z on the flow path; u = 2 x by hand."""
    x0, z = _data(1)
    t = torch.tensor([0.01, 0.2, 0.5, 0.7, 0.9, 0.99], dtype=D)
    per = flow_matching_loss(lambda x, _: 2 * x, ss.FlowSDE(), x0, t=t, noise=z, per_sample=True)
    x = (1 - t[:, None]) * x0 + t[:, None] * z
    torch.testing.assert_close(per, ((2 * x - (z - x0)) ** 2).mean(1), rtol=1e-12, atol=0)
    # the exact velocity of each pair has zero loss, on any linear SDE (the target z - x0 does not depend on it)
    for sde in (ss.FlowSDE(), ss.VPSDE(), ss.EDMSDE()):
        tt = t * sde.T
        model = ss.ScoreModel(Lin(), sde, parameterization=FlowPrediction(), conditioning="t")
        a, s = (v[:, None] for v in sde.marginal_coefs(tt))
        exact = lambda x, _: z - x0                                              # noqa: E731
        assert flow_matching_loss(exact, sde, x0, t=tt, noise=z).item() == 0
        loss = flow_matching_loss(lambda x, tq: model(x, tq, output="u"), sde, x0, t=tt, noise=z, per_sample=True)
        F = model.net(a * x0 / (a + s) + s * z / (a + s), 999 * tt)               # c_in x, "t" conditioning
        torch.testing.assert_close(loss, ((F - (z - x0)) ** 2).mean(1), rtol=1e-10, atol=1e-12)


def test_edm_loss_with_the_edm_preconditioner_equals_nvlabs_edmloss():
    """NVlabs/edm training/loss.py EDMLoss with training/networks.py EDMPrecond, written out: sigma = exp(rnd P_std
    + P_mean), weight = (sigma^2 + s_d^2) / (sigma s_d)^2, n = randn_like(y) sigma, D = c_skip (y + n) + c_out
    F(c_in (y + n), ln(sigma) / 4), loss = weight (D - y)^2 summed over the pixels; the same draws."""
    y, _ = _data(2, (5, 1, 4, 4))
    net, sd, P_mean, P_std = Lin(0.4, 0.2), 0.5, -1.2, 1.2
    g = torch.Generator().manual_seed(7)
    rnd = torch.randn([5], generator=g, dtype=D)
    sigma = (rnd * P_std + P_mean).exp().reshape(-1, 1, 1, 1)
    weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
    n = torch.randn(y.shape, generator=g, dtype=D) * sigma
    c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
    c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
    c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
    c_noise = sigma.log() / 4
    D_yn = c_skip * (y + n) + c_out * net(c_in * (y + n), c_noise.flatten())
    nvlabs = (weight * (D_yn - y) ** 2).sum((1, 2, 3))                         # per image; EDM sums, then / batch
    sde = ss.EDMSDE()
    model = ss.ScoreModel(net, sde, parameterization=EDMPrediction(sd), conditioning="edm")
    ours = edm_loss(lambda x, t: model(x, t, output="x0"), sde, y, p_mean=P_mean, p_std=P_std, sigma_data=sd,
                    generator=torch.Generator().manual_seed(7), per_sample=True, reduce_mean=False)
    torch.testing.assert_close(2 * ours, nvlabs, rtol=1e-10, atol=1e-12)       # reduce_mean=False: half the sum
    train = {"recipe": "edm", "p_mean": P_mean, "p_std": P_std, "sigma_data": sd, "loss_eps": 1e-5}
    batch = recipe_loss(model, sde, y, train, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(batch * 16, nvlabs.mean(), rtol=1e-10, atol=1e-12)


# --- time distributions ------------------------------------------------------------------------------------
N = 200_000


def test_edm_times_are_log_normal_noise_levels_on_every_path():
    g = torch.Generator().manual_seed(0)
    t = edm_times(ss.EDMSDE(), N, p_mean=-1.2, p_std=1.2, generator=g, dtype=D)
    assert abs(t.log().mean().item() + 1.2) < 0.01 and abs(t.log().std().item() - 1.2) < 0.01
    for sde in (ss.VPSDE(), ss.FlowSDE(), ss.VESDE(sigma_min=1e-3, sigma_max=100.0)):   # the same noise levels
        t = edm_times(sde, N, p_mean=0.5, p_std=0.8, generator=torch.Generator().manual_seed(1), dtype=D)
        a, s = sde.marginal_coefs(t)
        log_s = (s / a).log()
        assert abs(log_s.mean().item() - 0.5) < 0.01 and abs(log_s.std().item() - 0.8) < 0.01
        assert t.min() >= 1e-5 and t.max() <= sde.T
    # clamped to [eps, T]: a huge mean puts everything at T
    assert torch.equal(edm_times(ss.FlowSDE(), 10, p_mean=30.0, dtype=D), torch.full((10,), ss.FlowSDE().T, dtype=D))


def test_flow_times_uniform_logit_normal_and_shift_moments():
    sde = ss.FlowSDE()
    t = flow_times(sde, N, generator=torch.Generator().manual_seed(0), dtype=D, eps=1e-3)
    lo, hi = 1e-3, sde.T                                    # uniform over the SDE's range: mean, variance
    assert abs(t.mean().item() - (lo + hi) / 2) < 3e-3 and abs(t.var().item() - (hi - lo) ** 2 / 12) < 2e-3
    t = flow_times(sde, N, t_dist="logit_normal", logit_mean=0.3, logit_std=0.7,
                   generator=torch.Generator().manual_seed(1), dtype=D)
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item() - 0.3) < 0.01 and abs(logit.std().item() - 0.7) < 0.01
    # SD3's shift of uniform t: E[t'] = c/(c-1) (1 - ln(c)/(c-1)) for t ~ U(0, 1), c = 3: 0.6704
    c = 3.0
    t = flow_times(sde, N, shift=c, generator=torch.Generator().manual_seed(2), dtype=D, eps=1e-6)
    assert abs(t.mean().item() - c / (c - 1) * (1 - math.log(c) / (c - 1))) < 3e-3
    # the same noise-level distribution on VP: logit t = ln s of the VP time's noise level
    vp = ss.VPSDE()
    t = flow_times(vp, N, t_dist="logit_normal", generator=torch.Generator().manual_seed(3), dtype=D)
    a, s = vp.marginal_coefs(t)
    ln_s = (s / a).log()
    assert abs(ln_s.mean().item()) < 0.01 and abs(ln_s.std().item() - 1) < 0.01


def test_time_distribution_arguments_are_checked():
    for kw, match in (({"t_dist": "normal"}, "t_dist"), ({"logit_std": 0.0}, "logit_std"), ({"shift": -1.0}, "shift"),
                      ({"eps": 2.0}, "eps")):
        with pytest.raises((ValueError, TypeError), match=match):
            flow_times(ss.FlowSDE(), 4, **kw)
    with pytest.raises(ValueError, match="p_std"):
        edm_times(ss.EDMSDE(), 4, p_std=0.0)
    with pytest.raises(ValueError, match="n: expected"):
        edm_times(ss.EDMSDE(), 0)
    with pytest.raises(ValueError, match="sigma_data"):
        edm_loss(lambda x, t: x, ss.EDMSDE(), torch.zeros(2, 2), sigma_data=0.0)
    with pytest.raises(ValueError, match="velocity_fn"):
        flow_matching_loss(lambda x, t: x[:1], ss.FlowSDE(), torch.zeros(2, 2))


# --- the DSM default --------------------------------------------------------------------------------------
def test_dsm_recipe_is_bit_identical_to_the_calls_it_replaced():
    sde = ss.VPSDE()
    model = ss.ScoreModel(Lin(), sde)
    x0, _ = _data(3, (8, 2))
    train = {"recipe": "dsm", "likelihood_weighting": False, "loss_eps": 1e-5, "p_uncond": 0.1}
    a = recipe_loss(model, sde, x0, train, generator=torch.Generator().manual_seed(0))
    b = dsm_loss(model, sde, x0, eps=1e-5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    train["likelihood_weighting"] = True
    a = recipe_loss(model, sde, x0, train, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, dsm_loss(model, sde, x0, likelihood_weighting=True, generator=torch.Generator().manual_seed(0)))

    class Cond(nn.Module):
        num_classes = 3

        def forward(self, x, c, cond=None):
            return x * 0.1 + cond.labels[:, None].to(x.dtype)

    cm = ss.ScoreModel(Cond(), sde)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    a = recipe_loss(cm, sde, x0, train, labels=y, num_classes=3, generator=torch.Generator().manual_seed(5))
    b = conditional_dsm_loss(cm, sde, x0, y, num_classes=3, likelihood_weighting=True,
                             generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # the other recipes drop labels with the same first draws, then their own loss
    for name in ("edm", "flow"):
        t = {**train, "recipe": name, "p_mean": -1.2, "p_std": 1.2, "sigma_data": 0.5, "t_dist": "uniform",
             "logit_mean": 0.0, "logit_std": 1.0, "shift": 1.0}
        assert torch.isfinite(recipe_loss(cm, sde, x0, t, labels=y, num_classes=3,
                                          generator=torch.Generator().manual_seed(5)))


# --- the config ----------------------------------------------------------------------------------------------
def test_recipe_defaults_and_the_keys_the_user_set():
    base = resolve({})
    assert base["train"]["recipe"] == "dsm" and base["sde"] == {"name": "vp"}
    assert base["model"]["parameterization"] == "eps"
    edm = resolve({"train": {"recipe": "edm"}})
    assert edm["sde"] == {"name": "edm"} and edm["model"]["parameterization"] == "edm"
    assert edm["model"]["conditioning"] == "edm" and edm["model"]["name"] == "mlp"
    flow = resolve({"train": {"recipe": "flow"}})
    assert flow["sde"] == {"name": "flow"} and flow["model"]["parameterization"] == "flow"
    assert "conditioning" not in flow["model"]
    mine = resolve({"train": {"recipe": "edm"}, "sde": {"name": "vp", "beta_max": 10.0},
                    "model": {"parameterization": "x0"}})
    assert mine["sde"] == {"name": "vp", "beta_max": 10.0} and mine["model"]["parameterization"] == "x0"
    digits = resolve({"train": {"recipe": "flow"}, "data": {"name": "digits"}})   # image defaults kept
    assert digits["model"]["name"] == "ddpm_unet" and digits["model"]["parameterization"] == "flow"
    assert digits["sde"]["name"] == "flow" and digits["train"]["batch_size"] == 64
    assert set(RECIPES) >= {"dsm", "edm", "flow"}


@pytest.mark.parametrize("key,value,match", [
    ("recipe", "ddpm", "config train.recipe: expected one of dsm, edm, flow"),
    ("t_dist", "normal", "config train.t_dist: expected one of uniform, logit_normal"),
    ("p_std", 0.0, "config train.p_std: expected > 0.0"), ("sigma_data", -1.0, "config train.sigma_data"),
    ("shift", 0, "config train.shift"), ("logit_std", "1", "config train.logit_std: expected a number"),
    ("p_mean", float("nan"), "config train.p_mean: expected a finite number")])
def test_bad_recipe_options_name_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        resolve({"train": {key: value}})


# --- runs ---------------------------------------------------------------------------------------------------
TINY = {"device": "cpu", "data": {"size": 200}, "model": {"width": 8, "depth": 1, "embed_dim": 8},
        "train": {"steps": 4, "batch_size": 16, "ckpt_every": 2, "progress": False, "log_every": 2},
        "sample": {"n": 8, "steps": 3}}


@pytest.mark.parametrize("recipe,extra,sde_cls,precond_cls", [
    ("edm", {"sigma_data": 0.8}, ss.EDMSDE, EDMPrediction),
    ("flow", {"t_dist": "logit_normal", "shift": 2.0}, ss.FlowSDE, FlowPrediction)])
def test_recipe_runs_record_their_recipe_load_and_resume_exactly(tmp_path, recipe, extra, sde_cls, precond_cls):
    cfg = {**TINY, "train": {**TINY["train"], "recipe": recipe, **extra}}
    full = ss.train(cfg, out=str(tmp_path / "full"))
    _, meta = read_checkpoint(full.checkpoint)
    assert meta["recipe"]["name"] == recipe and all(meta["recipe"][k] == v for k, v in extra.items())
    model, sde = ss.load(tmp_path / "full")
    assert isinstance(sde, sde_cls) and isinstance(model.precond, precond_cls)
    if recipe == "edm":
        assert model.precond.sigma_data == 0.8 and model.conditioning == "edm"
    ss.train({**cfg, "train": {**cfg["train"], "steps": 2}}, out=str(tmp_path / "half"))
    resumed = ss.train({"train": {"steps": 4}}, out=str(tmp_path / "half"), resume=True)
    a, _ = read_checkpoint(full.checkpoint)
    b, _ = read_checkpoint(resumed.checkpoint)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    x = sde.sample(model, (16, 2), sampler="euler_maruyama", steps=3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (16, 2) and torch.isfinite(x).all()


def test_class_conditional_edm_run_trains(tmp_path):
    cfg = {**TINY, "train": {**TINY["train"], "recipe": "edm"}, "model": {**TINY["model"], "num_classes": "auto"}}
    r = ss.train(cfg, out=str(tmp_path / "cond"))
    model, sde = ss.load(r.run_dir)
    assert model.num_classes == 4 and isinstance(sde, ss.EDMSDE)


def test_resuming_a_checkpoint_from_before_recipes_reports_no_change():
    """A checkpoint's config without the recipe keys resumes as dsm, and the new keys at their defaults are not
    reported as changes (a changed one is)."""
    new = resolve({})
    old = {**new, "train": {k: v for k, v in new["train"].items()
                            if k not in ("recipe", "p_mean", "p_std", "sigma_data", "t_dist", "logit_mean",
                                         "logit_std", "shift")}}
    assert config_changes(old, new) == []
    assert config_changes(old, resolve({"train": {"p_std": 2.0}})) == ["train.p_std '(unset)' -> 2.0"]
    assert resolve({}, base=old)["train"]["recipe"] == "dsm"
