"""from_diffusers against diffusers itself: a tiny randomly initialised UNet2DModel saved with
save_pretrained (no download), sampled by our ddim / ancestral and by diffusers' DDIMScheduler (eta 0)
/ DDPMScheduler loops on the same timesteps and noise, for the three prediction types and the three
beta schedules; the timestep convention, the score conversions, loading variants and errors."""
import json
import sys
import types

import pytest
import torch

import scoresde as ss
from scoresde.sde.alpha_bar import beta_schedule
from problems import Gaussian

diffusers = pytest.importorskip("diffusers")
from diffusers import (DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel,  # noqa: E402
                       ScoreSdeVeScheduler)

SHAPE = (2, 3, 8, 8)
SCHEDULES = {"linear": {}, "scaled_linear": dict(beta_start=0.00085, beta_end=0.012), "squaredcos_cap_v2": {}}
PREDICTIONS = ["epsilon", "v_prediction", "sample"]
TOL = 1e-4      # max |ours - diffusers| / max(1, max |diffusers|)


def tiny_unet(out_channels=3, seed=0):
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=out_channels, layers_per_block=1,
                       block_out_channels=(4, 8), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=2).eval()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def rel_error(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max().clamp(min=1.0)).item()


@torch.no_grad()
def diffusers_loop(unet, scheduler, x, generator=None, **step_kwargs):
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x, generator=generator, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_reproduces_diffusers_ddim(unet, tmp_path, schedule, prediction):
    spacing = {"linear": "leading", "scaled_linear": "trailing", "squaredcos_cap_v2": "leading"}[schedule]
    sched = DDIMScheduler(beta_schedule=schedule, prediction_type=prediction, clip_sample=False,
                          timestep_spacing=spacing, **SCHEDULES[schedule])
    DDIMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path)           # a pipeline folder
    model, sde = ss.from_diffusers(tmp_path)
    sched.set_timesteps(10)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    ref = diffusers_loop(unet, sched, x_T, eta=0.0)
    ours, info = sde.sample(model, x_init=x_T, sampler="ddim", times=sde.t_from_timestep(sched.timesteps),
                            return_info=True)
    err = rel_error(ours, ref)
    print(f"DDIM {schedule} {prediction} ({spacing}): max abs error {(ours - ref).abs().max():.2e}, "
          f"relative {err:.2e}, NFE {info['nfe']}")
    assert info["nfe"] == 10 and err <= TOL


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ancestral_reproduces_diffusers_ddpm(unet, tmp_path, schedule, prediction):
    variance = "fixed_large" if (schedule, prediction) == ("linear", "epsilon") else "fixed_small"
    sched = DDPMScheduler(beta_schedule=schedule, prediction_type=prediction, clip_sample=False,
                          variance_type=variance, **SCHEDULES[schedule])
    unet.save_pretrained(tmp_path)                                            # a model folder ...
    sched.save_pretrained(tmp_path)                                           # ... with its scheduler_config.json
    model, sde = ss.from_diffusers(tmp_path)
    assert sde.ancestral_variance == ("beta" if variance == "fixed_large" else "posterior")
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(2)
    x_T = torch.randn(SHAPE, generator=g)
    ref = diffusers_loop(unet, sched, x_T, generator=g)
    # the same noise: our ancestral draws one N(0, I) per noisy step from the generator, as DDPM does
    g = torch.Generator().manual_seed(2)
    torch.randn(SHAPE, generator=g)
    times = torch.cat([sde.t_from_timestep(sched.timesteps), torch.zeros(1, dtype=torch.float64)])   # ..., timestep 0, data
    ours, info = sde.sample(model, x_init=x_T, sampler="ancestral", times=times, generator=g, return_info=True)
    err = rel_error(ours, ref)
    print(f"DDPM {schedule} {prediction} ({variance}): max abs error {(ours - ref).abs().max():.2e}, "
          f"relative {err:.2e}, NFE {info['nfe']}")
    assert info["nfe"] == 10 and err <= TOL


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_the_network_sees_its_timesteps_and_its_output_becomes_the_score(unet, prediction):
    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction)
    model, sde = ss.from_diffusers(unet, sched)
    assert model.net is unet and model.data_shape == SHAPE[1:] and model.parameterization == {
        "epsilon": "eps", "v_prediction": "v", "sample": "x0"}[prediction]
    seen = []
    hook = unet.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    try:
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
        i = torch.tensor([999, 0])
        with torch.no_grad():
            score = model(x, sde.t_from_timestep(i, torch.float32))
            out = unet(x, i).sample
            model(x, torch.tensor([0.5005, 1e-5]))                    # between timesteps 499 and 500; below 0
    finally:
        hook.remove()
    assert seen[0].tolist() == [999.0, 0.0] and torch.allclose(seen[2], torch.tensor([499.5, 0.0]))
    ab = sched.alphas_cumprod[i].double().view(-1, 1, 1, 1)
    a, s, xd, o = ab.sqrt(), (1 - ab).sqrt(), x.double(), out.double()
    eps = {"epsilon": o, "v_prediction": a * o + s * xd, "sample": (xd - a * o) / s}[prediction]
    torch.testing.assert_close(score.double(), -eps / s, rtol=1e-4, atol=1e-4)     # score = -eps / sigma


def test_schedule_tables_match_diffusers():
    for name, kw in {**SCHEDULES, "sigmoid": {}}.items():
        ref = DDPMScheduler(beta_schedule=name, **kw).alphas_cumprod.double()
        ours = ss.DiscreteVPSDE(schedule=name, **kw).alphas_cumprod
        assert ((ours - ref).abs() / ref).max() < 3e-5, name                 # float32 cumprod in diffusers
        torch.testing.assert_close(beta_schedule(name, 1000, **kw), DDPMScheduler(beta_schedule=name, **kw).betas.double(),
                                   rtol=1e-6, atol=1e-9)
    betas = torch.linspace(1e-3, 0.05, 50)
    _, sde = ss.from_diffusers(tiny_unet(), DDPMScheduler(num_train_timesteps=50, trained_betas=betas.tolist()))
    assert sde.num_timesteps == 50
    torch.testing.assert_close(sde.alphas_cumprod, torch.cumprod(1 - betas, 0).double())


def test_loading_variants_agree(unet, tmp_path):
    sched = DDPMScheduler(prediction_type="v_prediction")
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path / "pipe")
    unet.save_pretrained(tmp_path / "model")
    sched.save_pretrained(tmp_path / "model")
    x, t = torch.randn(SHAPE), torch.tensor([0.3, 0.9])
    loaded = [ss.from_diffusers(tmp_path / "pipe"), ss.from_diffusers(str(tmp_path / "pipe" / "unet")),
              ss.from_diffusers(tmp_path / "model"), ss.from_diffusers(unet, sched),
              ss.from_diffusers(unet, dict(sched.config)), ss.from_diffusers(unet, tmp_path / "pipe" / "scheduler"),
              ss.from_diffusers(DDPMPipeline(unet=unet, scheduler=sched)),
              ss.pretrained.load_any(tmp_path / "pipe")]
    with torch.no_grad():
        ref = loaded[0][0](x, t)
        for model, sde in loaded:
            assert isinstance(model, ss.ScoreModel) and model.data_shape == SHAPE[1:]
            assert sde.config() == loaded[0][1].config()
            torch.testing.assert_close(model(x, t), ref)
    # the CLI's data shape: a batch size alone; data space [-1, 1]
    model, sde = loaded[0]
    assert model.data_range == (-1.0, 1.0)
    torch.testing.assert_close(model.from_unit(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(model.to_unit(model.from_unit(x)), x)
    assert sde.sample(model, 2, sampler="ddim", steps=3).shape == SHAPE


@pytest.mark.parametrize("name", ["PNDMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler",
                                  "UniPCMultistepScheduler", "LMSDiscreteScheduler"])
def test_other_ddpm_type_schedulers_give_the_same_sde(unet, name):
    _, sde = ss.from_diffusers(unet, getattr(diffusers, name)(beta_schedule="scaled_linear", **SCHEDULES["scaled_linear"]))
    _, ref = ss.from_diffusers(unet, DDPMScheduler(beta_schedule="scaled_linear", **SCHEDULES["scaled_linear"]))
    assert torch.equal(sde.alphas_cumprod, ref.alphas_cumprod)


def test_class_labels_reach_a_class_conditional_unet():
    torch.manual_seed(0)
    net = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(4, 8),
                      down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                      norm_num_groups=2, num_class_embeds=5)
    model, sde = ss.from_diffusers(net, DDPMScheduler())
    x, t, y = torch.randn(SHAPE), torch.tensor([0.3, 0.6]), torch.tensor([1, 4])
    with torch.no_grad():
        torch.testing.assert_close(model.eps(x, t, y=y), net(x, sde.timestep(t), class_labels=y).sample)
        assert not torch.allclose(model.eps(x, t, y=y), model.eps(x, t, y=y.flip(0)))


def test_learned_variance_channels_are_dropped(tmp_path):
    net = tiny_unet(out_channels=6)
    sched = DDPMScheduler(variance_type="learned_range")
    model, sde = ss.from_diffusers(net, sched)
    x, t = torch.randn(SHAPE), torch.tensor([0.2, 0.7])
    with torch.no_grad():
        out = net(x, sde.timestep(t)).sample
        torch.testing.assert_close(model.eps(x, t), out[:, :3])
    assert sde.ancestral_variance == "posterior"


class GaussianOracle(torch.nn.Module):
    """A network with diffusers' call convention, net(sample, timestep).sample, returning the exact
    prediction (eps, v or x0) for Gaussian data at the (possibly fractional) timestep it is given."""

    def __init__(self, data, sde, prediction):
        super().__init__()
        self.data, self.sde, self.prediction = data, sde, prediction

    def forward(self, sample, timestep):
        t = self.sde.t_from_timestep(timestep.double())                      # tau -> t = (tau + 1) / M
        alpha, sigma = (v.view(-1, *[1] * (sample.ndim - 1)) for v in self.sde.marginal_coefs(t))
        score = self.data.score(sample, t, self.sde)
        eps, x0 = -sigma * score, (sample + sigma ** 2 * score) / alpha
        out = {"epsilon": eps, "sample": x0, "v_prediction": alpha * eps - sigma * x0}[self.prediction]
        return types.SimpleNamespace(sample=out)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_exact_predictions_give_the_exact_score_and_likelihood(prediction):
    """With the exact eps / v / x0, the model is the exact score at every t >= timestep 0 (integer or
    fractional timesteps), and the probability-flow likelihood is the exact density."""
    data = Gaussian(torch.tensor([0.3, -0.2, 0.1, 0.0]).view(1, 2, 2), torch.tensor([0.5, 0.2, 0.8, 0.3]).view(1, 2, 2))
    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction)
    sde = ss.from_diffusers(tiny_unet(), sched)[1]
    model, sde = ss.from_diffusers(GaussianOracle(data, sde, prediction), sched)
    g = torch.Generator().manual_seed(0)
    x0 = data.sample(64, generator=g)
    t = sde.default_eps + (1 - sde.default_eps) * torch.rand(64, generator=g, dtype=torch.float64)
    x = sde.marginal_prob(x0, t)[0] + sde.marginal_coefs(t)[1].view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g,
                                                                                                 dtype=torch.float64)
    # (a time within 1e-3 timesteps of an integer calls the net at that integer: ~1e-6 relative)
    torch.testing.assert_close(model(x, t), data.score(x, t, sde), rtol=1e-5, atol=1e-6)
    logp = sde.log_likelihood(model, x0[:16], eps=sde.default_eps)
    assert (logp - data.log_prob(x0[:16], sde.default_eps, sde)).abs().mean() < 0.01


def test_every_sampler_likelihood_and_impute_run_on_a_diffusers_model(unet):
    model, sde = ss.from_diffusers(unet, DDIMScheduler(beta_schedule="squaredcos_cap_v2"))
    g = torch.Generator().manual_seed(0)
    for sampler in ss.list_samplers():
        opts = {"ode": dict(rtol=0.1, atol=0.1)}.get(sampler, {})
        x = sde.sample(model, 2, sampler=sampler, steps=4, generator=g, **opts)
        assert x.shape == SHAPE and bool(torch.isfinite(x).all()), sampler
    x0 = torch.rand(SHAPE, generator=g) * 2 - 1
    # autograd through the UNet (a random net's output oscillates with the timestep, so a short interval)
    logp = sde.log_likelihood(model, x0, divergence="hutchinson", rtol=0.1, atol=0.1, eps=0.9, generator=g)
    assert logp.shape == (2,) and bool(torch.isfinite(logp).all())
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    x = ss.impute(sde, model, x0, mask, steps=5, corrector="none", generator=g)
    assert torch.equal(x[..., :4], x0[..., :4]) and bool(torch.isfinite(x).all())


def _edit_json(path, **changes):
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_errors(unet, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="variance-exploding"):
        ss.from_diffusers(unet, ScoreSdeVeScheduler())
    with pytest.raises(ValueError, match="unknown diffusers scheduler class 'MadeUpScheduler'"):
        ss.from_diffusers(unet, {"_class_name": "MadeUpScheduler"})
    with pytest.raises(ValueError, match="no discrete alpha-bar table"):
        ss.from_diffusers(unet, diffusers.EDMEulerScheduler())
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        ss.from_diffusers(unet, DDIMScheduler(rescale_betas_zero_snr=True))
    with pytest.raises(ValueError, match="timestep_type 'continuous'"):
        ss.from_diffusers(unet, diffusers.EulerDiscreteScheduler(timestep_type="continuous"))
    with pytest.raises(ValueError, match="prediction_type 'flow_prediction'"):
        ss.from_diffusers(unet, diffusers.DPMSolverMultistepScheduler(prediction_type="flow_prediction"))
    with pytest.raises(TypeError, match="scheduler: expected a diffusers scheduler"):
        ss.from_diffusers(unet, 3)
    with pytest.raises(TypeError, match="path_or_module"):
        ss.from_diffusers(3)
    with pytest.raises(ValueError, match="not a directory"):
        ss.from_diffusers(tmp_path / "missing")
    unet.save_pretrained(tmp_path / "bare")
    with pytest.raises(ValueError, match="scheduler: the model comes without a scheduler config"):
        ss.from_diffusers(tmp_path / "bare")
    with pytest.raises(ValueError, match="no config.json"):
        ss.from_diffusers(tmp_path)
    _edit_json(tmp_path / "bare" / "config.json", _class_name="UNet2DConditionModel")
    with pytest.raises(ValueError, match="expected a UNet2DModel"):
        ss.from_diffusers(tmp_path / "bare", DDPMScheduler())
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ldm")
    _edit_json(tmp_path / "ldm" / "model_index.json", vqvae=["diffusers", "VQModel"])
    with pytest.raises(ValueError, match="of latent / text-conditional pipelines only"):
        ss.from_diffusers(tmp_path / "ldm")
    monkeypatch.setitem(sys.modules, "diffusers", None)                    # diffusers not installed
    with pytest.raises(ImportError, match="pip install diffusers"):
        ss.from_diffusers(unet, DDPMScheduler())


def test_pickled_weights_are_refused_in_one_line(unet, tmp_path):
    """Issue 27, item 5: a folder holding only a pickled .bin is refused (nothing is unpickled), naming it."""
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    pipe.save_pretrained(tmp_path, safe_serialization=False)
    assert not list(tmp_path.glob("unet/*.safetensors")) and list(tmp_path.glob("unet/*.bin"))
    with pytest.raises(ValueError, match=r"holds no safetensors weights \(only pickled diffusion_pytorch_model.bin"):
        ss.from_diffusers(str(tmp_path))
