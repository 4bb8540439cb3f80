"""Training super-resolution stages (issue 30): the low-res view of a batch is its area downsample, the noise
augmentation level s ~ U(0, aug_max) drawn per row reaches the network (none: s = 0), blur on and off, every
recipe's loss under an image condition against its closed form on Gaussian data, exact resume, `ss.load` round
trip, the defaults for digits32, and bad configs."""
import csv
import os

import pytest
import torch

import scoresde as ss
from scoresde.models.conditioning import Cond
from scoresde.models.superres import downsample, gaussian_blur
from scoresde.models.nets import count_parameters, get_model
from scoresde.runs.checkpoint import read_checkpoint
from scoresde.training import losses
from scoresde.training.config import resolve
from scoresde.training.recipes import recipe_loss
from scoresde.training.tasks import TASKS

NET = {"name": "ddpm_unet", "ch": 8, "ch_mult": [1], "num_res_blocks": 1, "num_groups": 4, "attn_resolutions": []}


def make_task(model=None, **train):
    """A built score task of digits32 with an 8x8 image condition (tiny U-Net, CPU)."""
    cfg = resolve({"data": {"name": "digits32"}, "device": "cpu",
                   "model": {**NET, "image_shape": [1, 8, 8], **(model or {})},
                   "train": {"batch_size": 16, "progress": False, **train}})
    task = TASKS[cfg["task"]](cfg)
    task.prepare()
    torch.manual_seed(0)
    task.build(torch.device("cpu"))
    return task


def spy(model):
    """Record the Cond the network receives (after ScoreModel mapped image_level) on every call."""
    seen, forward = [], model.net.forward

    def wrapped(x, c, cond=None):
        seen.append(cond)
        return forward(x, c, cond)
    model.net.forward = wrapped
    return seen


def one_batch(task, seed=3, n=16):
    idx = torch.arange(n) * 7
    g = torch.Generator().manual_seed(seed)
    loss = task.batch_loss(task.model, task.x_all[idx], idx, g)
    return loss, idx


# --- the condition of a batch ----------------------------------------------------------------------------
def test_the_augmentation_level_reaches_the_network_drawn_over_the_configured_range():
    task = make_task(aug="noise", aug_max=0.3)
    seen = spy(task.model)
    loss, idx = one_batch(task, n=64)
    assert torch.isfinite(loss) and len(seen) == 1
    s = 0.3 * torch.rand(64, generator=torch.Generator().manual_seed(3))       # the first draw of noise_gen
    model, sde = task.model, task.sde
    s_in = s.clamp_min(float(getattr(sde, "default_eps", 1e-5)))
    expected = model.condition(s_in, sde.marginal_coefs(s_in)[1])              # mapped as t is (VP: 999 s)
    assert torch.allclose(seen[0].image_level, expected)
    assert torch.allclose(seen[0].image_level / 999, s_in, atol=1e-6)          # VP's "t" conditioning: 999 t
    assert s.min() < 0.03 and s.max() > 0.27                                   # spread over [0, aug_max]
    # the image the net sees is alpha(s) x_low + sigma(s) eps: noisier rows are farther from the clean view
    x_low = downsample(task.x_all[idx], (8, 8))
    err = (seen[0].image - x_low).flatten(1).square().mean(1)
    lo, hi = s.argsort()[:8], s.argsort()[-8:]
    assert err[lo].mean() < err[hi].mean()


def test_aug_none_gives_level_zero_and_the_clean_area_downsample():
    task = make_task(aug="none")
    seen = spy(task.model)
    _, idx = one_batch(task)
    x = task.x_all[idx]
    by_hand = x.reshape(16, 1, 8, 4, 8, 4).mean((3, 5))                        # 4x4 block means
    assert torch.allclose(seen[0].image, by_hand, atol=1e-6)
    sde = task.sde
    eps = torch.full((16,), float(getattr(sde, "default_eps", 1e-5)))
    assert torch.allclose(seen[0].image_level, task.model.condition(eps, sde.marginal_coefs(eps)[1]))


def test_blur_on_and_off():
    plain, blurred = make_task(aug="none"), make_task(aug="none", blur=1.5)
    a, b = spy(plain.model), spy(blurred.model)
    _, idx = one_batch(plain)
    one_batch(blurred)
    x_low = downsample(plain.x_all[idx], (8, 8))
    assert torch.equal(a[0].image, x_low)                                      # blur = 0: nothing blurred
    widths = 1.5 * torch.rand(16, generator=torch.Generator().manual_seed(3))  # aug none: the blur draw is first
    assert torch.allclose(b[0].image, gaussian_blur(x_low, widths), atol=1e-6)
    assert not torch.allclose(b[0].image, x_low, atol=1e-3)
    tv = lambda y: (y[..., 1:, :] - y[..., :-1, :]).abs().flatten(1).sum(1)   # noqa: E731
    assert (tv(b[0].image) <= tv(x_low) + 1e-5).all()                          # a blur never adds variation


def test_labels_ride_along_and_dropout_nulls_them_only():
    task = make_task(aug="noise", p_uncond=0.5, model={"num_classes": 10})
    seen = spy(task.model)
    _, idx = one_batch(task, n=64)
    cond = seen[0]
    u = torch.rand(64, generator=_after_sr_draws(task, 64))                   # the dropout draw follows the SR draws
    labels = task.y_all[idx]
    assert torch.equal(cond.labels, torch.where(u < 0.5, torch.full_like(labels, 10), labels))
    assert 10 < int((cond.labels == 10).sum()) < 54 and cond.image.shape == (64, 1, 8, 8)


def _after_sr_draws(task, n):
    """A generator at the state noise_gen has after the condition's draws (levels, then the augmentation noise)."""
    g = torch.Generator().manual_seed(3)
    torch.rand(n, generator=g)
    torch.randn((n, 1, 8, 8), generator=g)
    return g


# --- every recipe under an image condition, against its closed form --------------------------------------
class ExactSR:
    """The exact conditional model of x0 ~ N(0, I) in (1, 2, 2) given its 1x1 area downsample m = mean(x0):
    x0 | m ~ N(m 1, Sigma), Sigma = I - P with P = 1 1^T / 4, so x_t | m ~ N(alpha m 1, c (I - P) + sigma^2 P),
    c = alpha^2 + sigma^2, and score = -((I - P) / c + P / sigma^2)(x - alpha m 1). `conditional=False`: the exact
    unconditional score -(x / c)."""

    def __init__(self, sde, conditional=True):
        self.sde, self.conditional = sde, conditional

    def __call__(self, x, t, cond=None, *, output="score"):
        alpha, sigma = (v.reshape(-1, 1, 1, 1) for v in self.sde.marginal_coefs(t))
        c = alpha ** 2 + sigma ** 2
        if self.conditional:
            d = x - alpha * cond.image                                   # cond.image (B, 1, 1, 1) broadcast
            along = d.mean((1, 2, 3), keepdim=True)                      # P d
            score = -((d - along) / c + along / sigma ** 2)
        else:
            score = -x / c
        x0 = (x + sigma ** 2 * score) / alpha                            # Tweedie
        return {"score": score, "x0": x0, "u": -sigma * score - x0}[output]


@pytest.mark.parametrize("recipe,sde", [("dsm", ss.VPSDE), ("edm", ss.EDMSDE), ("flow", ss.FlowSDE)])
def test_each_recipe_trains_with_an_image_condition_to_its_closed_form_loss(recipe, sde):
    sde = sde()
    train = dict(resolve({"train": {"recipe": recipe}})["train"])
    B = 40000
    x0 = torch.randn(B, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cond = Cond(image=downsample(x0, (1, 1)), image_level=torch.zeros(B, dtype=torch.float64))
    got = recipe_loss(ExactSR(sde), sde, x0, train, cond=cond, generator=torch.Generator().manual_seed(2))
    uncond = recipe_loss(ExactSR(sde, conditional=False), sde, x0, train, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)                                 # the recipe's time draw, reproduced
    if recipe == "dsm":
        t = train["loss_eps"] + (sde.T - train["loss_eps"]) * torch.rand(B, generator=g, dtype=torch.float64)
    elif recipe == "edm":
        t = losses.edm_times(sde, B, p_mean=train["p_mean"], p_std=train["p_std"], eps=train["loss_eps"],
                             generator=g, dtype=torch.float64)
    else:
        t = losses.flow_times(sde, B, eps=train["loss_eps"], generator=g, dtype=torch.float64)
    alpha, sigma = sde.marginal_coefs(t)
    c = alpha ** 2 + sigma ** 2
    # the loss at the exact model, per row (mean over the 4 dimensions): 3 of them have the posterior variance
    # sigma^2 / c of x0 given x_t and m, the mean direction none
    post = 3 * sigma ** 2 / (4 * c)                                      # E ||D - x0||^2 / d
    if recipe == "dsm":
        expected = (alpha ** 2 / sigma ** 2) * post                      # ||sigma s + z||^2 = (alpha/sigma)^2 ||D - x0||^2
    elif recipe == "edm":
        level = sigma / alpha
        expected = (level ** 2 + train["sigma_data"] ** 2) / (level * train["sigma_data"]) ** 2 * post
    else:
        expected = (1 + alpha / sigma) ** 2 * post                       # u - (z - x0) = -(1 + alpha/sigma)(D - x0)
    assert abs(float(got) / float(expected.mean()) - 1) < 0.03
    assert float(uncond) > 1.1 * float(got)                               # the condition carries information


def test_recipe_loss_refuses_a_condition_that_is_not_a_cond():
    train = resolve(None)["train"]
    with pytest.raises(TypeError, match="cond: expected a Cond"):
        recipe_loss(ExactSR(ss.VPSDE()), ss.VPSDE(), torch.randn(2, 1, 2, 2), train, cond=torch.zeros(2))


# --- runs: resume, load, defaults, bad configs ------------------------------------------------------------
def _cfg(**train):
    return {"data": {"name": "digits32"}, "device": "cpu", "model": {**NET, "image_shape": [1, 8, 8],
                                                                     "num_classes": 10},
            "train": {"batch_size": 8, "log_every": 1, "ckpt_every": 2, "progress": False, "blur": 0.8, **train},
            "sample": {"n": 4, "steps": 2}}


def _losses(run_dir):
    with open(os.path.join(run_dir, "log.csv")) as f:
        return [row["loss"] for row in csv.DictReader(f)]


@pytest.mark.parametrize("recipe", ["dsm", "flow"])
def test_resume_is_exact_and_load_rebuilds_the_sr_model(tmp_path, recipe):
    full = ss.train(_cfg(steps=4, recipe=recipe), out=str(tmp_path / "full"))
    ss.train(_cfg(steps=2, recipe=recipe), out=str(tmp_path / "half"))
    resumed = ss.train({"train": {"steps": 4}}, out=str(tmp_path / "half"), resume=True)
    assert _losses(tmp_path / "full") == _losses(tmp_path / "half") and len(_losses(tmp_path / "full")) == 4
    a, meta = read_checkpoint(full.checkpoint)
    b, _ = read_checkpoint(resumed.checkpoint)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert meta["superres"] == {"image_shape": [1, 8, 8], "aug": "noise", "aug_max": 0.35, "blur": 0.8,
                                "downsample": "area", "blur_at": "low-res"}
    model, sde = ss.load(tmp_path / "full")
    assert model.image_shape == (1, 8, 8) and model.num_classes == 10
    x = torch.randn(3, 1, 32, 32)
    t = torch.full((3,), 0.4)
    cond = model.image_cond(torch.randn(3, 1, 8, 8), torch.tensor([0.0, 0.1, 0.3]), labels=torch.tensor([1, 2, 10]))
    with torch.no_grad():
        assert torch.equal(model(x, t, cond), full.model(x, t, cond))
    metrics = full.metrics
    assert "sr_psnr" in metrics and os.path.exists(full.samples_path)


def test_sr_defaults_for_digits32_and_the_base_keeps_its_own():
    sr = resolve({"data": {"name": "digits32"}, "model": {"image_shape": [1, 8, 8]}})
    kw = {k: v for k, v in sr["model"].items() if k not in ("name", "parameterization", "image_shape")}
    assert sr["model"]["name"] == "ddpm_unet" and kw["ch_mult"] == [1, 2, 2] and sr["train"]["lr"] == 1e-3
    n = count_parameters(get_model("ddpm_unet", data_shape=(1, 32, 32), image_shape=(1, 8, 8), **kw))
    assert 500_000 < n < 2_000_000
    assert sr["train"]["aug"] == "noise" and sr["train"]["aug_max"] == 0.35 and sr["train"]["blur"] == 0.0
    base = resolve({"data": {"name": "digits"}})                          # the 8x8 base: the small 16-px net
    assert base["model"]["ch_mult"] == [1, 2] and "image_shape" not in base["model"]
    assert "ch" not in resolve({"data": {"name": "digits32"}, "model": {"name": "ddpm_unet"}})["model"]


def test_sr_stages_predict_v_unless_told():
    """A dsm super-resolution stage defaults to v-prediction (an eps stage's data prediction at high noise is off by
    sigma/alpha times its error, and the probability-flow samplers follow it: scoresde/training/tasks/score.py)."""
    assert resolve({"data": {"name": "digits32"}, "model": {"image_shape": [1, 8, 8]}})["model"]["parameterization"] == "v"
    told = resolve({"data": {"name": "digits32"}, "model": {"image_shape": [1, 8, 8], "parameterization": "eps"}})
    assert told["model"]["parameterization"] == "eps"
    edm = resolve({"data": {"name": "digits32"}, "model": {"image_shape": [1, 8, 8]}, "train": {"recipe": "edm"}})
    assert edm["model"]["parameterization"] == "edm"
    assert resolve({"data": {"name": "digits32"}, "model": {"name": "ddpm_unet"}})["model"]["parameterization"] == "eps"


@pytest.mark.parametrize("model,train,match", [
    ({"image_shape": [1, 7, 8]}, {}, "expected h, w dividing the data's H, W = 32, 32"),
    ({"image_shape": [3, 8, 8]}, {}, "expected C = 1, the channels of data 'digits32'"),
    ({"image_shape": [1, 8]}, {}, "model.image_shape"),
    ({"image_shape": [1, 8, 8]}, {"aug_max": 2.0}, "train.aug_max = 2.0: expected a time of the model's SDE"),
])
def test_bad_sr_configs_are_refused_naming_the_key(model, train, match):
    with pytest.raises(ValueError, match="config") as e:
        make_task(model=model, **train)
    assert match in str(e.value)


def test_the_task_checks_aug_choices_in_the_config():
    with pytest.raises(ValueError, match="config train.aug: expected one of noise, none, found 'blur'"):
        resolve({"train": {"aug": "blur"}})
