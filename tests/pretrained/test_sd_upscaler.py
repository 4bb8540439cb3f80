"""from_diffusers on a StableDiffusionUpscalePipeline (the SD x4 upscaler), against diffusers' own pipeline call.

A tiny random upscale pipeline is built offline (as test_stable_diffusion.py builds SD pipelines: a CLIPTokenizer
from a small vocab, a 2-level AutoencoderKL, a UNet2DConditionModel with 7 input channels = 4 latent + 3 image and
a class embedding for the noise level) and saved with save_pretrained (safetensors). Our `ddim` with classifier-free
guidance on the scheduler's timesteps, under `model.image_cond(image, noise_level)`, reproduces the pipeline's call
with DDIMScheduler, guidance_scale=w, noise_level, output_type="latent" from the same initial latents and the same
image noise; at each step our guided eps is the pipeline's guided noise prediction.
"""
import json

import pytest
import torch

import scoresde as ss
from scoresde.pretrained.sd_upscaler import StableDiffusionUpscaleModel
from helpers import one_line_error, run

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from diffusers import (DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline,  # noqa: E402
                       UNet2DConditionModel)
from transformers import CLIPTextModel  # noqa: E402
from test_stable_diffusion import (NEGATIVE, PROMPT, SD_SCHEDULER, TOL, clip_config, clip_tokenizer,  # noqa: E402
                                   rel_error, tiny_vae)

STEPS = 4
LOW = (1, 3, 8, 8)          # the low-resolution image; the latent is (1, 4, 8, 8), the decoded output 16 x 16
LATENT = (1, 4, 8, 8)
MAX_LEVEL = 350
# the real upscaler's low-resolution scheduler (DDPMScheduler, scaled_linear 1e-4 .. 0.02)
LOW_RES_SCHEDULER = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear", num_train_timesteps=1000)


def build(folder, prediction="v_prediction"):
    """A tiny random StableDiffusionUpscalePipeline (DDIM, v-prediction as the real one ships) saved to `folder`."""
    torch.manual_seed(0)
    tok = clip_tokenizer(folder.parent / f"{folder.name}-vocab")
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=7,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=2,
                                attention_head_dim=2, cross_attention_dim=8, num_class_embeds=MAX_LEVEL + 1)
    with torch.no_grad():                    # the class embedding must matter: make it as large as the time embedding
        unet.class_embedding.weight.normal_(0, 1)
    sched = DDIMScheduler(**SD_SCHEDULER, prediction_type=prediction, set_alpha_to_one=False)
    vae = tiny_vae()
    vae.register_to_config(scaling_factor=0.08333)
    pipe = StableDiffusionUpscalePipeline(vae=vae, text_encoder=CLIPTextModel(clip_config(tok, 8)),
                                          tokenizer=tok, unet=unet, low_res_scheduler=DDPMScheduler(**LOW_RES_SCHEDULER),
                                          scheduler=sched, max_noise_level=MAX_LEVEL)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory):
    folder = tmp_path_factory.mktemp("upscaler") / "x4"
    pipe = build(folder)
    model, sde = ss.from_diffusers(folder)
    return pipe, folder, model, sde


def low_res_unit():
    return torch.rand(LOW, generator=torch.Generator().manual_seed(5))       # in [0, 1], as the pipeline takes it


def low_res_image():
    return 2.0 * low_res_unit() - 1.0           # in [-1, 1], as the pipeline's image processor normalises it


class Recorder:
    """The U-Net calls of the pipeline: (its 7-channel input, t, class_labels, output)."""

    def __init__(self, unet):
        self.calls = []
        self.handle = unet.register_forward_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs, out):
        self.calls.append((args[0].clone(), args[1], kwargs["class_labels"].clone(), out[0].clone()))


def pipeline_call(pipe, w, noise_level, negative=None, seed=11):
    """The pipeline's loop with DDIM: output_type="latent" from fixed latents; the image noise from `seed`."""
    rec = Recorder(pipe.unet)
    z_T = torch.randn(LATENT, generator=torch.Generator().manual_seed(7))
    try:
        with torch.no_grad():
            out = pipe(PROMPT, image=low_res_unit(), negative_prompt=negative, num_inference_steps=STEPS,
                       guidance_scale=w, noise_level=noise_level, latents=z_T, output_type="latent",
                       generator=torch.Generator().manual_seed(seed)).images
    finally:
        rec.handle.remove()
    return z_T, out, rec.calls


def ddim_times(sched, sde):
    """The scheduler's timesteps, then timestep 0 (DDIM with set_alpha_to_one=False ends at alpha_bar_0)."""
    return torch.cat([sde.t_from_timestep(sched.timesteps), sde.t_from_timestep(torch.tensor([0]))])


def guided(model, w, image_cond, negative=None):
    """CFG as the pipeline: the prompt's context and the (empty or negative) prompt's, the same image condition."""
    text = model.text_encoder
    uncond = text.null(1) if negative is None else text.encode([negative])
    both = dict(image_cond.items())
    return ss.classifier_free_score(model, y=ss.Cond(**dict(text.encode([PROMPT]).items()), **both), w=w,
                                    uncond=ss.Cond(**dict(uncond.items()), **both))


@pytest.mark.parametrize("w, noise_level, negative, noisy", [(4.0, 20, None, False), (7.5, 100, NEGATIVE, False),
                                                              (4.0, 20, None, True)])
def test_guided_ddim_reproduces_the_pipeline(upscaler, w, noise_level, negative, noisy):
    """Final latents and every step's guided eps within 1e-4 relative, the image condition made by our `augment`
    from the same generator (noisy=False) or the pipeline's own noisy image fed as is (noisy=True)."""
    pipe, folder, model, sde = upscaler
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.scheduler = sched
    z_T, ref, calls = pipeline_call(pipe, w, noise_level, negative)
    if noisy:
        cond = model.image_cond(calls[0][0][:1, 4:], noise_level, noisy=True)
    else:
        cond = model.image_cond(low_res_image(), noise_level, generator=torch.Generator().manual_seed(11))
    # the condition the pipeline fed: its noisy image and class_labels = noise_level in every call
    for x_in, t, labels, out in calls:
        torch.testing.assert_close(x_in[:, 4:], cond.image.expand(2, -1, -1, -1), rtol=0, atol=1e-6)
        assert labels.tolist() == [noise_level] * 2 and cond.image_level.tolist() == [float(noise_level)]
    score = guided(model, w, cond, negative)
    with torch.no_grad():
        ours, info = sde.sample(score, x_init=z_T, sampler="ddim", times=ddim_times(sched, sde), denoise=False,
                                return_info=True)
    err = rel_error(ours, ref)
    step_errs = []
    for x_in, t, labels, out in calls:
        u, c = out.chunk(2)                              # the pipeline's batch: [unconditional, conditional]
        v = u + w * (c - u)
        tt = sde.t_from_timestep(t.reshape(1).double())
        alpha, sigma = (a.float().view(-1, 1, 1, 1) for a in sde.marginal_coefs(tt))
        z = x_in[:1, :4]
        eps_ref = sigma * z + alpha * v                  # v-prediction -> eps
        with torch.no_grad():
            eps = -sigma * score(z, tt.float())
        step_errs.append(rel_error(eps, eps_ref))
    print(f"upscaler ddim w={w} noise_level={noise_level}{' negative prompt' if negative else ''}"
          f"{' (pipeline noisy image)' if noisy else ''}: final latents relative error {err:.2e}, guided eps per "
          f"step max {max(step_errs):.2e}, NFE {info['nfe']} (pipeline U-Net calls {len(calls)})")
    assert info["nfe"] == len(calls) == STEPS
    assert err <= TOL and max(step_errs) <= TOL
    assert rel_error(ref, z_T) > 0.1                     # the loop moved the latents


@pytest.mark.parametrize("w, noise_level, negative", [(6.0, 30, NEGATIVE), (1.0, 0, None)])
def test_upscale_is_the_pipeline_call_end_to_end(upscaler, w, noise_level, negative):
    """`model.upscale(image, prompt, ...)` with the pipeline's generator seed (image noise, then initial latents)
    and DDIM on its timesteps gives the pipeline's decoded images (output_type="pt", in [0, 1]); w = 1: no guidance."""
    pipe, folder, model, sde = upscaler
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.scheduler = sched
    with torch.no_grad():
        ref = pipe(PROMPT, image=low_res_unit(), negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=w,
                   noise_level=noise_level, generator=torch.Generator().manual_seed(3), output_type="pt").images
    sched.set_timesteps(STEPS)
    ours = model.upscale(low_res_image(), PROMPT, negative_prompt=negative, w=w, noise_level=noise_level,
                         generator=torch.Generator().manual_seed(3), steps=None, times=ddim_times(sched, sde),
                         denoise=False)
    assert ours.shape == ref.shape == (1, 3, 16, 16)
    err = rel_error(((ours + 1) / 2).clamp(0, 1), ref)
    print(f"upscale() w={w} noise_level={noise_level}: decoded images max abs error {err:.2e}")
    assert err <= TOL
    z = model.upscale(low_res_image(), [PROMPT], w=w, generator=torch.Generator().manual_seed(3), steps=2,
                      decode=False)
    assert z.shape == LATENT
    with pytest.raises(ValueError, match="prompt: expected a string or a list of 1 or 1 strings"):
        model.upscale(low_res_image(), [PROMPT, PROMPT])
    with pytest.raises(ValueError, match=r"low_res: expected a \(B, 3, h, w\)"):
        model.upscale(torch.zeros(1, 4, 8, 8))


def test_generic_super_resolution_runs_the_upscaler(upscaler, tmp_path):
    """The generic super-resolution code (`ss.super_resolve`, `scoresde sample --low-res`) drives the upscaler through
    the sr_api interface: image_shape, image_cond, data_shape, the autoencoder's decode."""
    import numpy as np
    pipe, folder, model, sde = upscaler
    g = torch.Generator().manual_seed(0)
    x = ss.super_resolve(model, low_res_image(), prompt=PROMPT, negative_prompt=NEGATIVE, w=4.0, aug_level=0.0,
                         sampler="ddim", steps=3, generator=g)
    # the same draws and grid by hand: image noise at noise_level 0, then the prior, DDIM on the uniform grid
    ref = model.upscale(low_res_image(), PROMPT, negative_prompt=NEGATIVE, w=4.0, noise_level=0, sampler="ddim",
                        steps=3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (1, 3, 16, 16)
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)
    low = tmp_path / "low.npy"
    np.save(low, torch.cat([low_res_image(), -low_res_image()]).numpy())
    out = tmp_path / "high.npy"
    r = run("sample", "--checkpoint", str(folder), "--low-res", str(low), "--sampler", "ddim", "--steps", "3",
            "--out", str(out), "--device", "cpu")
    assert r.exit_code == 0, r.output + r.stderr
    high = np.load(out)
    assert high.shape == (2, 3, 16, 16) and np.isfinite(high).all()      # decoded, 2x the tiny VAE's latent size
    # --aug-level is the model's own level (here the pipeline's integer noise_level; default 20), and --prompt /
    # --negative-prompt / --guidance reach it: the CLI equals model.upscale with the same seed
    r = run("sample", "--checkpoint", str(folder), "--low-res", str(low), "--prompt", PROMPT, "--negative-prompt",
            NEGATIVE, "--guidance", "4", "--sampler", "ddim", "--steps", "3", "--seed", "5", "--out", str(out),
            "--device", "cpu")
    assert r.exit_code == 0, r.output + r.stderr
    ref = model.upscale(torch.cat([low_res_image(), -low_res_image()]), PROMPT, negative_prompt=NEGATIVE, w=4.0,
                        noise_level=20, sampler="ddim", steps=3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(torch.from_numpy(np.load(out)), ref, rtol=1e-5, atol=1e-5)
    r = run("sample", "--checkpoint", str(folder), "--low-res", str(low), "--aug-level", "20.5", "--out", str(out))
    assert r.exit_code != 0 and "Traceback" not in r.output + r.stderr
    assert r.stderr.strip().splitlines()[-1].split("\r")[-1].strip().startswith("Error: --aug-level"), r.stderr


def test_augment_is_the_low_res_schedulers_add_noise(upscaler):
    pipe, folder, model, sde = upscaler
    img = low_res_image().expand(3, -1, -1, -1).clone()
    levels = torch.tensor([0, 20, MAX_LEVEL])
    eps = torch.randn(img.shape, generator=torch.Generator().manual_seed(2))
    ref = pipe.low_res_scheduler.add_noise(img, eps, levels)
    ours = model.augment(img, levels, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    assert not torch.equal(ours[0], img[0])              # level 0 adds sqrt(1 - abar_0) noise, as the pipeline
    # the closed form: sqrt(abar_l) x + sqrt(1 - abar_l) eps with the DDPM scaled_linear table
    betas = torch.linspace(1e-4 ** 0.5, 0.02 ** 0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)[levels].view(-1, 1, 1, 1)
    torch.testing.assert_close(ours.double(), abar.sqrt() * img.double() + (1 - abar).sqrt() * eps.double(),
                               rtol=0, atol=1e-5)
    # the level reaches the network as class_labels and changes the score
    z = torch.randn(LATENT, generator=torch.Generator().manual_seed(4))
    c0, c1 = (model.image_cond(img[:1], lv, noisy=True) for lv in (0, MAX_LEVEL))
    with torch.no_grad():
        assert not torch.allclose(model(z, 0.5, c0), model(z, 0.5, c1))


def test_shapes_decode_and_the_unconditional_call(upscaler, tmp_path):
    pipe, folder, model, sde = upscaler
    assert isinstance(model, StableDiffusionUpscaleModel) and model.parameterization == "v"
    assert model.data_shape == (4, 8, 8) and model.image_shape == (3, 8, 8)
    assert model.max_noise_level == MAX_LEVEL and model.default_image_level == 20
    ae = model.autoencoder
    assert ae.scale_factor == 0.08333 == pipe.vae.config.scaling_factor
    z = torch.randn(LATENT, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ae.decode(z), pipe.vae.decode(z / 0.08333).sample, rtol=1e-5, atol=1e-5)
    # a VAE config with another scaling_factor: 0.08333 all the same, as the pipeline's __init__ sets it
    pipe.save_pretrained(tmp_path / "scale", safe_serialization=True)
    _edit(tmp_path / "scale" / "vae" / "config.json", scaling_factor=0.18215)
    assert ss.from_diffusers(tmp_path / "scale")[0].autoencoder.scale_factor == 0.08333
    m2, sde2 = ss.from_diffusers(pipe)                   # a pipeline object
    m3, _ = ss.pretrained.load_any(str(folder))          # the CLI's dispatcher
    assert sde2.config() == sde.config()
    cond = model.image_cond(low_res_image(), 20, generator=torch.Generator().manual_seed(1))
    text = model.text_encoder.encode([PROMPT])
    full = ss.Cond(**dict(text.items()), **dict(cond.items()))
    t = torch.tensor([0.4])
    with torch.no_grad():
        ref = model(z, t, full)
        for m in (m2, m3):
            torch.testing.assert_close(m(z, t, full), ref)
        # the raw network call, as the pipeline makes it
        out = pipe.unet(torch.cat([z, cond.image], 1), sde.timestep(t), encoder_hidden_states=text.context,
                        class_labels=torch.tensor([20])).sample
        torch.testing.assert_close(model.v(z, t, full), out, rtol=1e-5, atol=1e-5)
        # no context: the empty prompt's
        torch.testing.assert_close(model(z, t, cond), model(z, t, ss.Cond(**dict(model.text_encoder.null(1).items()),
                                                                         **dict(cond.items()))))
        # a prompt string where the condition goes is encoded; the image must still come with it
        assert not torch.allclose(model(z, t, cond), ref)
        # any size equal to the latent's: set_size
        model.set_size(4, 6)
        try:
            assert model.image_shape == (3, 4, 6) and model.data_shape == (4, 4, 6)
            small = model.image_cond(torch.zeros(1, 3, 4, 6), 20, generator=torch.Generator().manual_seed(0))
            zs = sde.sample(guided(model, 3.0, small), 2, sampler="ddim", steps=3,
                            generator=torch.Generator().manual_seed(0))
            assert zs.shape == (2, 4, 4, 6) and bool(torch.isfinite(zs).all())
            assert ae.decode(zs).shape == (2, 3, 8, 12)
        finally:
            model.set_size(8, 8)


def test_errors(upscaler, tmp_path):
    pipe, folder, model, sde = upscaler
    z = torch.zeros(LATENT)
    with pytest.raises(ValueError, match="cond.image: the x4 upscaler needs its low-resolution image"):
        model(z, 0.5)
    with pytest.raises(ValueError, match="cond.image: the x4 upscaler needs"):
        model(z, 0.5, model.text_encoder.encode([PROMPT]))
    with pytest.raises(ValueError, match=r"cond.image: expected shape \(1, 3, 8, 8\).*found \(1, 3, 4, 4\)"):
        model(z, 0.5, ss.Cond(image=torch.zeros(1, 3, 4, 4), image_level=torch.tensor([20.0])))
    for bad in (0.3, -1.0, MAX_LEVEL + 1.0):             # e.g. a time of the SDE where a noise level belongs
        with pytest.raises(ValueError, match=r"cond.image_level: expected the pipeline's integer noise_level in "
                                             r"\[0, 350\].*found \["):
            model(z, 0.5, ss.Cond(image=torch.zeros(LOW), image_level=torch.tensor([bad])))
    with pytest.raises(TypeError, match="w: expected"):
        model.upscale(torch.zeros(LOW), w="9")
    with pytest.raises(ValueError, match="cond: the x4 upscaler reads context, image and image_level"):
        model(z, 0.5, ss.Cond(image=torch.zeros(LOW), labels=torch.tensor([1])))
    with pytest.raises(ValueError, match=r"image: expected a \(B, 3, 8, 8\).*set_size.*found torch.float32 \(1, 1, 8, 8\)"):
        model.image_cond(torch.zeros(1, 1, 8, 8), 20)
    for bad in (20.5, -1, MAX_LEVEL + 1, float("nan")):
        with pytest.raises(ValueError, match=r"level: expected the pipeline's integer noise_level in \[0, 350\]"):
            model.image_cond(torch.zeros(LOW), bad)
    with pytest.raises(ValueError, match="level: .* found shape"):
        model.image_cond(torch.zeros(LOW), torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="level: expected"):
        model.image_cond(torch.zeros(LOW), "20")
    with pytest.raises(ValueError, match="labels: the x4 upscaler has no class labels"):
        model.image_cond(torch.zeros(LOW), 20, labels=3)
    with pytest.raises(ValueError, match="h: expected a positive int"):
        model.set_size(0, 8)
    # bad folders: one line each
    pipe.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    with pytest.raises(ValueError, match=r"unet.*holds no safetensors weights \(only pickled"):
        ss.from_diffusers(tmp_path / "pickled")
    one_line_error(run("sample", "--checkpoint", str(tmp_path / "pickled"), "--out", str(tmp_path / "x.npy")),
                   "holds no safetensors weights (only pickled diffusion_pytorch_model.bin")
    for name, edit, message in [
            ("lowres", lambda i, d: i.__setitem__("low_res_scheduler", ["diffusers", "DDIMScheduler"]),
             r"expected component low_res_scheduler = \['diffusers', 'DDPMScheduler'\]"),
            ("maxlevel", lambda i, d: i.__setitem__("max_noise_level", 5000), "max_noise_level 5000 is beyond"),
            ("channels", lambda i, d: _edit(d / "unet" / "config.json", in_channels=4),
             r"unet.*'conv_in.weight' has shape \[4, 7, 3, 3\] in the file, but the config describes \[4, 4, 3, 3\]"),
            ("nosched", lambda i, d: (d / "low_res_scheduler" / "scheduler_config.json").unlink(),
             "has no low_res_scheduler/scheduler_config.json")]:
        d = tmp_path / name
        pipe.save_pretrained(d, safe_serialization=True)
        index = json.loads((d / "model_index.json").read_text())
        edit(index, d)
        (d / "model_index.json").write_text(json.dumps(index))
        with pytest.raises(ValueError, match=message):
            ss.from_diffusers(d)
    one_line_error(run("sample", "--checkpoint", str(tmp_path / "maxlevel"), "--out", str(tmp_path / "x.npy")),
                   "max_noise_level 5000 is beyond")
    # the command line without a low-resolution image: a one-line error after the loaders' progress bars
    r = run("sample", "--checkpoint", str(folder), "--prompt", PROMPT, "--steps", "2", "--out", str(tmp_path / "x.npy"))
    assert r.exit_code != 0 and "Traceback" not in r.output + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.split("\r")[-1].strip().startswith("Error: cond.image: the x4 upscaler needs its low-resolution"), last
    # a U-Net that does not read latents + image (a pipeline object: no file check before ours)
    unet4 = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4,
                                 out_channels=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=2, cross_attention_dim=8,
                                 num_class_embeds=MAX_LEVEL + 1)
    with pytest.raises(ValueError, match="an upscaler's unet reads the 4-channel latents and the 3-channel "
                                         r"low-resolution image \(7 channels in, 4 out\), found in_channels 4"):
        ss.from_diffusers(StableDiffusionUpscalePipeline(**{**pipe.components, "unet": unet4}))
    unet4.register_to_config(in_channels=7, num_class_embeds=10)
    with pytest.raises(ValueError, match=r"num_class_embeds 10\) must take every noise level 0..350"):
        ss.from_diffusers(StableDiffusionUpscalePipeline(**{**pipe.components, "unet": unet4}))


def _edit(path, **changes):
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


# the published stabilityai/stable-diffusion-x4-upscaler U-Net (diffusers config)
X4_UNET = {"act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [256, 512, 512, 1024],
           "cross_attention_dim": 1024, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D",
                                                             "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
           "in_channels": 7, "layers_per_block": 2, "norm_num_groups": 32, "num_class_embeds": 1000,
           "only_cross_attention": [True, True, True, False], "out_channels": 4, "sample_size": 128,
           "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
           "use_linear_projection": True}


def test_the_real_unet_config_passes_the_bounds_and_builds_on_the_meta_device():
    from scoresde._common.limits import check_sizes
    from scoresde.models.prebuild import skeleton
    check_sizes(X4_UNET, "config ")
    net = skeleton(lambda: UNet2DConditionModel.from_config(X4_UNET))
    assert next(net.parameters()).device.type == "meta"
    assert net.class_embedding.num_embeddings == 1000 and net.conv_in.in_channels == 7
