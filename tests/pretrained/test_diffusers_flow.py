"""from_diffusers on flow-matching models against diffusers itself: a tiny randomly initialised UNet2DModel with a
FlowMatchEulerDiscreteScheduler, saved with save_pretrained (safetensors, no download), sampled by our ddim on the
scheduler's sigmas (from t = 1) and by the scheduler's own Euler loop from the same noise; the timestep scale and
velocity reading; the "flow" preconditioner in closed form; ddim from t = 1 against the exact flow map of Gaussian
data; grids starting at t = 1 refused by the samplers that need the score there; bad folders; the command line."""
import json

import numpy as np
import pytest
import torch

import scoresde as ss
from scoresde.models.preconditioners import PRECONDITIONERS
from scoresde.pretrained.diffusers_flow import DiffusersFlowScoreModel
from helpers import one_line_error, run
from problems import Gaussian

diffusers = pytest.importorskip("diffusers")
from diffusers import (DDPMPipeline, DDPMScheduler, FlowMatchEulerDiscreteScheduler,  # noqa: E402
                       FlowMatchHeunDiscreteScheduler, UNet2DModel)

SHAPE = (2, 3, 8, 8)
TOL = 1e-4      # max |ours - diffusers| / max(1, max |diffusers|)


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(4, 8), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=2).eval()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def rel_error(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max().clamp(min=1.0)).item()


@torch.no_grad()
def euler_loop(unet, scheduler, x):
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    return x


def _edit_json(path, **changes):
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("shift, folder", [(1.0, "pipeline"), (3.0, "model"), (3.0, "pipeline")])
def test_ddim_on_the_sigmas_is_the_flow_match_euler_loop(unet, tmp_path, shift, folder):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    if folder == "pipeline":
        DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path, safe_serialization=True)
    else:
        unet.save_pretrained(tmp_path, safe_serialization=True)
        sched.save_pretrained(tmp_path)
    model, sde = ss.from_diffusers(tmp_path)
    assert isinstance(model, DiffusersFlowScoreModel) and isinstance(sde, ss.get_sde("flow").__class__)
    assert sde.shift == shift and model.parameterization == "flow" and model.data_shape == SHAPE[1:]
    for steps in (8, 20):
        sched.set_timesteps(steps)
        assert float(sched.sigmas[0]) == 1.0                    # diffusers' loop starts at the path's end
        x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(steps))
        ref = euler_loop(unet, sched, x_T)
        ours, info = sde.sample(model, x_init=x_T, sampler="ddim", times=sched.sigmas[:-1], return_info=True)
        err = rel_error(ours, ref)
        print(f"FlowMatchEuler shift {shift}, {folder} folder, {steps} steps: max abs error "
              f"{(ours - ref).abs().max():.2e}, relative {err:.2e}, NFE {info['nfe']}")
        assert info["nfe"] == steps and err <= TOL
        assert rel_error(ours, x_T) > 0.1                       # the loop moved the samples


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_dpm_solver_on_the_sigmas_is_the_flow_dpm_solver_loop(unet, shift):
    """DPMSolverMultistepScheduler set up for flow (its grid starts at 1 - 1/N): our dpm_solver on its sigmas is its
    2M loop when its network sees the exact timestep 1000 sigma (diffusers passes it int64-truncated timesteps)."""
    sched = diffusers.DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  flow_shift=shift)
    model, sde = ss.from_diffusers(unet, sched)
    assert isinstance(model, DiffusersFlowScoreModel) and sde.shift == shift
    sched.set_timesteps(8)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    ref = x_T.clone()
    with torch.no_grad():
        for timestep, sigma in zip(sched.timesteps, sched.sigmas):
            ref = sched.step(unet(ref, sigma * 1000).sample, timestep, ref).prev_sample
    ours, info = sde.sample(model, x_init=x_T, sampler="dpm_solver", times=sched.sigmas[:-1], return_info=True)
    err = rel_error(ours, ref)
    print(f"DPMSolverMultistep flow, shift {shift}, 8 steps: relative error {err:.2e}, NFE {info['nfe']}")
    assert info["nfe"] == 8 and err <= TOL


def test_the_network_sees_its_timesteps_and_its_output_is_the_velocity(unet):
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    model, sde = ss.from_diffusers(unet, sched)
    sched.set_timesteps(6)
    g = torch.Generator().manual_seed(3)
    for timestep, sigma in zip(sched.timesteps, sched.sigmas):
        x = torch.randn(SHAPE, generator=g)
        with torch.no_grad():
            u = unet(x, timestep).sample                                   # what the scheduler steps with
            t = torch.full((SHAPE[0],), float(sigma))
            assert torch.allclose(model.velocity(x, t), u, atol=1e-6)
            ts = t[:, None, None, None]
            assert torch.allclose(model.x0(x, t), x - ts * u, atol=1e-6)    # D = x - t u
            if sigma < 1:
                score = -(x + (1 - ts) * u) / ts                            # score = -z / t, z = x + (1 - t) u
                assert rel_error(model(x, t), score) < 1e-5
            else:
                assert torch.allclose(model(x, t), -x, atol=1e-6)           # t = 1: the score carries nothing
    assert model.config()["timestep_scale"] == 1000


def test_the_flow_preconditioner_in_closed_form():
    g = torch.Generator().manual_seed(0)
    x0, z = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    p = PRECONDITIONERS["flow"]()
    for alpha, sigma in [(0.7, 0.3), (0.0, 1.0), (1.0, 0.0), (0.6, 0.8), (1.0, 5.0)]:   # flow, its ends, VP, VE
        a, s = torch.tensor(alpha, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64)
        x, u = a * x0 + s * z, z - x0                                      # the exact velocity
        c_skip, c_out, c_in = p.scalings(a, s)
        assert torch.allclose(c_in, 1 / (a + s)) and torch.allclose(c_skip * x + c_out * u, x0)   # input: x / (alpha + sigma)
        assert torch.allclose(p.x0(u, x, a, s), x0)
        if sigma > 0:
            assert torch.allclose(p.eps(u, x, a, s), z)
            assert torch.allclose(p.score(u, x, a, s), -z / s)


class ExactFlowGaussian:
    """The exact score and data prediction of Gaussian data N(mu, s0^2) on the flow path (x0 defined at t = 1)."""

    def __init__(self, data, sde):
        self.data, self.sde, self.nfe = data, sde, 0

    def __call__(self, x, t):
        self.nfe += 1
        return self.data.score(x, t, self.sde)

    def x0(self, x, t):
        self.nfe += 1
        a, s = (v[:, None].double() for v in self.sde.marginal_coefs(t))
        mu, v0 = self.data.means[0], self.data.stds[0].square()
        return mu + a * v0 / (a.square() * v0 + s.square()) * (x - a * mu)   # E[x0 | x_t]


def test_ddim_from_t_1_converges_to_the_exact_flow_map():
    sde = ss.get_sde("flow")
    data = Gaussian(torch.tensor([1.5, -0.5]), torch.tensor([0.3, 2.0]))
    z = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = data.flow_map(z, 1.0, 1e-3, sde)
    errors = []
    for n in (50, 200, 800):
        score = ExactFlowGaussian(data, sde)
        times = torch.linspace(1.0, 1e-3, n + 1, dtype=torch.float64)
        x, info = sde.sample(score, x_init=z, sampler="ddim", times=times, denoise=False, return_info=True)
        errors.append((x - exact).abs().max().item())
        assert info["nfe"] == n == score.nfe
    print("ddim from t = 1, exact Gaussian data: max error at 50 / 200 / 800 steps", errors)
    assert errors[2] < 0.02 and errors[0] / errors[2] > 12                # first order: 16x the steps, ~16x smaller
    one = sde.sample(ExactFlowGaussian(data, sde), x_init=z, sampler="ddim", times=[1.0, 0.75], denoise=False)
    assert torch.allclose(one, 0.75 * z + 0.25 * data.means[0])          # x_s = s z + (1 - s) D(z; 1), D(z; 1) = mu


def test_grids_from_t_1_need_the_data_prediction():
    sde, vp = ss.get_sde("flow"), ss.get_sde("vp")
    data = Gaussian(torch.zeros(2), torch.ones(2))
    z = torch.randn(4, 2, dtype=torch.float64)
    times = torch.linspace(1.0, 0.01, 5, dtype=torch.float64)
    for sampler in ("euler_maruyama", "pc", "ancestral", "ode"):
        with pytest.raises(ValueError, match=f"times: sampler '{sampler}' needs the score at t_0 = 1.0"):
            sde.sample(data.score_fn(sde), x_init=z, sampler=sampler, times=times)
    for sampler in ("heun", "dpm_solver", "deis", "unipc"):
        with pytest.raises(ValueError, match="times: this sampler needs alpha.t. > 0 at every time; found t_0 = 1.0"):
            sde.sample(ExactFlowGaussian(data, sde), x_init=z, sampler=sampler, times=times)
    with pytest.raises(ValueError, match="times: at t = 1.0 alpha = 0 .* needs a score function with a data "
                                         "prediction x0"):
        sde.sample(data.score_fn(sde), x_init=z, sampler="ddim", times=times)     # a bare score function
    with pytest.raises(ValueError, match=r"times: expected times in \[0, t_limit=1.0\], found 1.5"):
        sde.sample(data.score_fn(sde), x_init=z, sampler="ddim", times=[1.5, 0.5])
    with pytest.raises(ValueError, match=r"times: expected times in \[0, T=1.0\], found 1.5"):
        vp.sample(data.score_fn(vp), x_init=z, sampler="ddim", times=[1.5, 0.5])
    x = sde.sample(ExactFlowGaussian(data, sde), x_init=z, sampler="heun", times=[0.999, 0.5, 0.01])
    assert torch.isfinite(x).all()                                  # below t = 1 every sampler runs as before


def test_loading_variants_agree(unet, tmp_path):
    sched = FlowMatchEulerDiscreteScheduler(shift=2.5)
    pipe = DDPMPipeline(unet=unet, scheduler=sched)
    pipe.save_pretrained(tmp_path)
    x, t = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4)), torch.tensor([0.3, 0.9])
    ref = unet(x, t * 1000).sample.detach()
    for source in [(tmp_path,), (tmp_path / "unet",), (pipe,), (unet, sched), (unet, dict(sched.config) | {
            "_class_name": "FlowMatchEulerDiscreteScheduler"}), (unet, tmp_path / "scheduler"),
            (unet, tmp_path / "scheduler" / "scheduler_config.json")]:
        model, sde = ss.from_diffusers(*source)
        assert isinstance(model, DiffusersFlowScoreModel) and sde.shift == 2.5, source
        with torch.no_grad():
            assert torch.allclose(model.velocity(x, t), ref, atol=1e-6), source


def test_every_sampler_the_likelihood_and_impute_run_on_the_flow_model(unet):
    model, sde = ss.from_diffusers(unet, FlowMatchEulerDiscreteScheduler(shift=3.0))
    for sampler in ss.list_samplers():                  # float32, each on its default grid from T = 0.999
        options = dict(rtol=1e-3, atol=1e-3) if sampler == "ode" else {}
        x = sde.sample(model, 2, sampler=sampler, steps=3, generator=torch.Generator().manual_seed(0), **options)
        assert x.shape == SHAPE and torch.isfinite(x).all(), sampler
    with torch.no_grad():
        logp = sde.log_likelihood(model, x, divergence="hutchinson", rtol=1e-3, atol=1e-3,
                                  generator=torch.Generator().manual_seed(0))
    assert logp.shape == (2,) and torch.isfinite(logp).all()
    mask = torch.zeros_like(x)
    mask[..., :4] = 1
    y = ss.impute(sde, model, x, mask, steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(y).all() and torch.equal(y[mask.bool()], x[mask.bool()])


def test_heun_scheduler_gives_the_same_path(unet):
    model, sde = ss.from_diffusers(unet, FlowMatchHeunDiscreteScheduler(shift=2.0))
    assert isinstance(model, DiffusersFlowScoreModel) and sde.shift == 2.0


def test_bad_folders_and_schedulers_are_one_clear_error(unet, tmp_path):
    with pytest.raises(ValueError, match="scheduler: use_dynamic_shifting=True .* is not supported"):
        ss.from_diffusers(unet, FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    with pytest.raises(ValueError, match="scheduler: invert_sigmas=True"):
        ss.from_diffusers(unet, FlowMatchEulerDiscreteScheduler(invert_sigmas=True))
    with pytest.raises(ValueError, match="scheduler: shift: expected a positive number, found -1"):
        ss.from_diffusers(unet, {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": -1})
    with pytest.raises(ValueError, match="interpolation / ancestral_variance: options of DDPM-type schedules"):
        ss.from_diffusers(unet, FlowMatchEulerDiscreteScheduler(), interpolation="cubic")
    transformer_pipe = type("StableDiffusion3Pipeline", (), {"transformer": unet,
                                                             "scheduler": FlowMatchEulerDiscreteScheduler()})()
    with pytest.raises(ValueError, match="path_or_module: the StableDiffusion3Pipeline has no unet"):
        ss.from_diffusers(transformer_pipe)
    pipe = DDPMPipeline(unet=unet, scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.save_pretrained(tmp_path / "bin", safe_serialization=False)               # pickled weights only
    with pytest.raises(ValueError, match=r"holds no safetensors weights \(only pickled diffusion_pytorch_model.bin"):
        ss.from_diffusers(tmp_path / "bin")
    pipe.save_pretrained(tmp_path / "nounet")
    (tmp_path / "nounet" / "unet" / "config.json").unlink()
    with pytest.raises(ValueError, match="path_or_module: expected a diffusers save_pretrained folder .* no config.json"):
        ss.from_diffusers(tmp_path / "nounet")
    pipe.save_pretrained(tmp_path / "noweights")
    next((tmp_path / "noweights" / "unet").glob("*.safetensors")).unlink()
    with pytest.raises(ValueError, match="holds no safetensors weights"):
        ss.from_diffusers(tmp_path / "noweights")
    pipe.save_pretrained(tmp_path / "sd3")
    _edit_json(tmp_path / "sd3" / "model_index.json", transformer=["diffusers", "SD3Transformer2DModel"])
    with pytest.raises(ValueError, match="flow-matching latent / text-conditional pipelines .* are not supported"):
        ss.from_diffusers(tmp_path / "sd3")
    pipe.save_pretrained(tmp_path / "dynamic")
    _edit_json(tmp_path / "dynamic" / "scheduler" / "scheduler_config.json", use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        ss.from_diffusers(tmp_path / "dynamic")
    model, sde = ss.from_diffusers(tmp_path / "dynamic", DDPMScheduler())     # scheduler= overrides the folder's
    assert not isinstance(model, DiffusersFlowScoreModel) and isinstance(sde, ss.DiscreteVPSDE)


def test_cli_samples_the_folder(unet, tmp_path):
    pipe = tmp_path / "flow"
    DDPMPipeline(unet=unet, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0)).save_pretrained(pipe)
    out = tmp_path / "x.npy"
    r = run("sample", "--checkpoint", str(pipe), "--sampler", "ddim", "--steps", "8", "--n", "3", "--out", str(out),
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    x = np.load(out)
    assert x.shape == (3, *SHAPE[1:]) and np.isfinite(x).all()
    _edit_json(pipe / "scheduler" / "scheduler_config.json", use_dynamic_shifting=True)
    one_line_error(run("sample", "--checkpoint", str(pipe), "--sampler", "ddim", "--out", str(out)),
                   "use_dynamic_shifting=True")
    _edit_json(pipe / "scheduler" / "scheduler_config.json", use_dynamic_shifting=False)
    (pipe / "unet" / "diffusion_pytorch_model.safetensors").rename(pipe / "unet" / "weights.bin")
    one_line_error(run("sample", "--checkpoint", str(pipe), "--sampler", "ddim", "--steps", "8", "--out", str(out)),
                   "--checkpoint")
