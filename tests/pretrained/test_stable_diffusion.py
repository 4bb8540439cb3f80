"""from_diffusers on Stable Diffusion pipelines, against diffusers' own pipeline calls.

Tiny random pipelines are built offline here, as diffusers' own tests build them (a CLIPTokenizer from a
small vocab.json + merges.txt written by the test, model_max_length 77) and saved with save_pretrained
(safetensors): SD 1.x (epsilon), SD 2.x (v-prediction), SDXL (two encoders, pooled text_embeds, time_ids,
force_zeros_for_empty_prompt). Our `ddim` and `dpm_solver` (order 2) with classifier-free guidance on the
scheduler's timesteps reproduce the pipeline's call with DDIMScheduler / DPMSolverMultistepScheduler,
guidance_scale=w, output_type="latent", from the same initial latents; at every step the pipeline takes, our
guided score is its guided noise prediction; the prompts are encoded as the pipeline encodes them.
"""
import json
import sys

import pytest
import torch

import scoresde as ss
from scoresde.models.clip_text import CLIPTextEncoder, SDXLTextEncoder
from scoresde.pretrained.stable_diffusion import StableDiffusionScoreModel
from helpers import one_line_error, run

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline,  # noqa: E402
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

TOL = 1e-4          # max |ours - diffusers| / max(1, max |diffusers|)
STEPS = 4
LATENT = (1, 4, 8, 8)
PROMPT, NEGATIVE = "a red cube", "a blue cube"
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                    timestep_spacing="leading", clip_sample=False)     # SD 1.5 / 2.1 / SDXL's schedule


def rel_error(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max().clamp(min=1.0)).item()


def clip_tokenizer(folder):
    """A CLIPTokenizer from a small vocab.json + merges.txt (letters, a few merges, CLIP's special tokens)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    merges = ["r e", "e d</w>", "c u", "cu b", "b l", "bl u", "blu e</w>"]
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")   # first line: a header
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77, local_files_only=True)


def clip_config(tok, hidden, layers=2, projection=8):
    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden, intermediate_size=16,
                          num_attention_heads=2, num_hidden_layers=layers, vocab_size=len(tok),
                          max_position_embeddings=77, projection_dim=projection, hidden_act="gelu")


def tiny_vae():
    return AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         norm_num_groups=2, sample_size=16)


def build(kind, folder):
    """A tiny random pipeline of `kind` ("sd1", "sd2v", "sdxl") with a DDIMScheduler, saved to `folder`."""
    torch.manual_seed(0)
    tok = clip_tokenizer(folder.parent / f"{kind}-vocab")
    blocks = dict(block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=2, attention_head_dim=2)
    vae = tiny_vae()
    if kind == "sdxl":
        vae.register_to_config(scaling_factor=0.13025)
        te, te2 = CLIPTextModel(clip_config(tok, 8)), CLIPTextModelWithProjection(clip_config(tok, 12, projection=6))
        # add embedding: 6 time ids x addition_time_embed_dim 4 + the pooled projection 6
        unet = UNet2DConditionModel(**blocks, cross_attention_dim=20, addition_embed_type="text_time",
                                    addition_time_embed_dim=4, projection_class_embeddings_input_dim=30,
                                    transformer_layers_per_block=(1, 2), use_linear_projection=True)
        sched = DDIMScheduler(**SD_SCHEDULER)                                  # set_alpha_to_one: final step to x0
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                                         unet=unet, scheduler=sched, force_zeros_for_empty_prompt=True)
    else:
        pred = "v_prediction" if kind == "sd2v" else "epsilon"
        unet = UNet2DConditionModel(**blocks, cross_attention_dim=8)
        sched = DDIMScheduler(**SD_SCHEDULER, prediction_type=pred, set_alpha_to_one=False)   # as SD 1.5 / 2.1 ship it
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(clip_config(tok, 8)), tokenizer=tok, unet=unet,
                                       scheduler=sched, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe


KINDS = ["sd1", "sd2v", "sdxl"]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    out = {}
    for kind in KINDS:
        pipe = build(kind, root / kind)
        model, sde = ss.from_diffusers(root / kind)
        out[kind] = (pipe, root / kind, model, sde)
    return out


class Recorder:
    """The U-Net calls a pipeline makes, `unet(latents, t, encoder_hidden_states=...)`: (latents, t, output)."""

    def __init__(self, unet):
        self.calls = []
        self.handle = unet.register_forward_hook(self.hook)

    def hook(self, module, args, out):
        self.calls.append((args[0].clone(), args[1], out[0].clone()))


def pipeline_call(pipe, scheduler, w, negative=None, **kwargs):
    """The pipeline's own sampling loop: output_type="latent" from fixed latents, with its U-Net calls."""
    pipe.scheduler = scheduler
    rec = Recorder(pipe.unet)
    z_T = torch.randn(LATENT, generator=torch.Generator().manual_seed(7))
    try:
        with torch.no_grad():
            out = pipe(PROMPT, negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=w, latents=z_T,
                       output_type="latent", height=16, width=16, **kwargs).images
    finally:
        rec.handle.remove()
    return z_T, out, rec.calls


def guided(model, w, negative=None):
    text = model.text_encoder
    uncond = text.null(1) if negative is None else text.encode([negative])
    return ss.classifier_free_score(model, y=text.encode([PROMPT]), w=w, uncond=uncond)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("solver", ["ddim", "dpm_solver"])
def test_guided_sampling_reproduces_the_pipeline(pipelines, kind, solver):
    pipe, folder, model, sde = pipelines[kind]
    cfg = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    w, negative = (3.0, None) if kind != "sd1" or solver == "ddim" else (5.0, NEGATIVE)
    if solver == "ddim":
        sched = DDIMScheduler.from_config(cfg)
    else:
        sched = DPMSolverMultistepScheduler.from_config(cfg, solver_order=2, algorithm_type="dpmsolver++")
    z_T, ref, calls = pipeline_call(pipe, sched, w, negative)
    times = sde.t_from_timestep(sched.timesteps)
    denoise = True                     # the last step lands on the data (DDIM set_alpha_to_one, DPM final sigma 0)
    if solver == "ddim" and not sched.config.set_alpha_to_one:
        times = torch.cat([times, sde.t_from_timestep(torch.tensor([0]))])   # DDIM's last step lands on timestep 0
        denoise = False
    score = guided(model, w, negative)
    with torch.no_grad():
        ours, info = sde.sample(score, x_init=z_T, sampler=solver, times=times, denoise=denoise, return_info=True,
                                **({"order": 2} if solver == "dpm_solver" else {}))
    err = rel_error(ours, ref)
    # the guided score at each of the pipeline's steps is its guided noise prediction (ε = -σ score)
    step_errs = []
    for x, t, out in calls:
        u, c = out.chunk(2)                                  # the pipeline's batch: [unconditional, conditional]
        pred = u + w * (c - u)
        tt = sde.t_from_timestep(t.reshape(1).double())
        alpha, sigma = (v.float().view(-1, 1, 1, 1) for v in sde.marginal_coefs(tt))
        xin = x[:1]
        eps_ref = pred if model.parameterization == "eps" else sigma * xin + alpha * pred     # v -> eps
        with torch.no_grad():
            eps = -sigma * score(xin, tt.float())
        step_errs.append(rel_error(eps, eps_ref))
    print(f"{kind} {solver} w={w}{' negative prompt' if negative else ''}: final latents relative error {err:.2e}, "
          f"guided eps per step max {max(step_errs):.2e}, NFE {info['nfe']} (pipeline U-Net calls {len(calls)})")
    assert info["nfe"] == len(calls) == STEPS
    assert err <= TOL and max(step_errs) <= TOL


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rescale", [0.0, 0.7])
def test_prompt_guidance_reproduces_the_pipeline(pipelines, kind, rescale):
    """`ss.classifier_free_score(model, w=w, prompt=..., negative_prompt=..., guidance_rescale=phi)` (helper
    `text`'s prompt API) against the pipeline's call with the same prompt, negative prompt and guidance_rescale
    (diffusers rescales the prediction the U-Net makes: eps, or v for SD 2.x-v)."""
    pipe, folder, model, sde = pipelines[kind]
    cfg = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    sched = DDIMScheduler.from_config(cfg)
    negative = NEGATIVE if kind != "sd2v" else None
    z_T, ref, calls = pipeline_call(pipe, sched, 4.0, negative, guidance_rescale=rescale)
    opts = {"guidance_rescale": rescale}
    if rescale:                                  # diffusers rescales the U-Net's own prediction (eps or v)
        opts["rescale_on"] = model.parameterization
    score = ss.classifier_free_score(model, w=4.0, prompt=PROMPT, negative_prompt=negative, **opts)
    times = sde.t_from_timestep(sched.timesteps)
    denoise = bool(sched.config.set_alpha_to_one)
    if not denoise:
        times = torch.cat([times, sde.t_from_timestep(torch.tensor([0]))])
    with torch.no_grad():
        ours = sde.sample(score, x_init=z_T, sampler="ddim", times=times, denoise=denoise)
    err = rel_error(ours, ref)
    print(f"{kind} ddim prompt API w=4 guidance_rescale={rescale}{' negative prompt' if negative else ''}: "
          f"final latents relative error {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("kind", KINDS)
def test_prompts_are_encoded_as_the_pipeline_encodes_them(pipelines, kind):
    pipe, folder, model, sde = pipelines[kind]
    text = model.text_encoder
    prompts = [PROMPT, "cube"]
    if kind == "sdxl":
        assert isinstance(text, SDXLTextEncoder)
        emb, neg, pooled, neg_pooled = pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1,
                                                          do_classifier_free_guidance=True)
        ids = pipe._get_add_time_ids((16, 16), (0, 0), (16, 16), emb.dtype,
                                     text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
        c, null = text.encode(prompts), text.null(2)
        torch.testing.assert_close(c.pooled, pooled, rtol=0, atol=0)
        torch.testing.assert_close(c.micro, ids.expand(2, -1), rtol=0, atol=0)
        assert torch.equal(null.context, neg) and torch.equal(null.pooled, neg_pooled)     # force_zeros: zeros
        assert text.time_ids() == [16.0, 16.0, 0.0, 0.0, 16.0, 16.0]       # latent 8 x vae scale factor 2
        # without force_zeros, the unconditional embeddings are the encoding of "", as the pipeline's
        pipe.register_to_config(force_zeros_for_empty_prompt=False)
        try:
            _, neg2, _, neg_pooled2 = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1,
                                                         do_classifier_free_guidance=True)
        finally:
            pipe.register_to_config(force_zeros_for_empty_prompt=True)
        text.force_zeros_for_empty_prompt = False
        try:
            null = text.null(1)
        finally:
            text.force_zeros_for_empty_prompt = True
        torch.testing.assert_close(null.context, neg2, rtol=0, atol=0)
        torch.testing.assert_close(null.pooled, neg_pooled2, rtol=0, atol=0)
        assert emb.shape[-1] == text.context_dim == 8 + 12
    else:
        assert isinstance(text, CLIPTextEncoder)
        emb, neg = pipe.encode_prompt(prompts, "cpu", 1, True, negative_prompt=[NEGATIVE, ""])
        c = text.encode(prompts)
        assert set(c.keys()) == {"context"} and c.context.shape == (2, 77, 8)
        torch.testing.assert_close(text.encode([NEGATIVE, ""]).context, neg, rtol=0, atol=0)
        torch.testing.assert_close(text.null(2).context, text.encode(["", ""]).context, rtol=0, atol=0)
    torch.testing.assert_close(c.context, emb, rtol=0, atol=0)
    assert not torch.equal(c.context[0], c.context[1])                         # the prompt matters
    # a prompt longer than 77 tokens is truncated, as the tokenizer pads and truncates for the pipeline
    assert text.encode(["a " * 100]).context.shape[1] == 77


@pytest.mark.parametrize("kind", KINDS)
def test_autoencoder_decodes_as_the_pipeline(pipelines, kind):
    pipe, folder, model, sde = pipelines[kind]
    ae = model.autoencoder
    assert ae.scale_factor == (0.13025 if kind == "sdxl" else 0.18215) and ae.downsample == 2
    z = torch.randn(LATENT, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample
        img = ae.decode(z)
    torch.testing.assert_close(img, ref, rtol=1e-5, atol=1e-5)
    assert img.shape == (1, 3, 16, 16) and model.data_shape == LATENT[1:]


def test_loading_variants_and_the_unconditional_call(pipelines, tmp_path):
    pipe, folder, model, sde = pipelines["sd2v"]
    assert isinstance(model, StableDiffusionScoreModel) and model.parameterization == "v" and model.net is not pipe.unet
    m2, sde2 = ss.from_diffusers(pipe)                           # a pipeline object
    m3, _ = ss.pretrained.load_any(str(folder))                  # the CLI's dispatcher
    pipe.save_pretrained(tmp_path / "sharded")                   # a U-Net in shards with an index (SDXL's is)
    (tmp_path / "sharded" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    pipe.unet.save_pretrained(tmp_path / "sharded" / "unet", max_shard_size="4KB")
    assert (tmp_path / "sharded" / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    m4, _ = ss.from_diffusers(tmp_path / "sharded")
    x = torch.randn(2, *LATENT[1:], generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.3, 0.8])
    cond = model.text_encoder.encode([PROMPT, NEGATIVE])
    with torch.no_grad():
        ref = model(x, t, cond)
        for m in (m2, m3, m4):
            torch.testing.assert_close(m(x, t, cond), ref)
        # no condition: the null condition (the empty prompt's encoding)
        torch.testing.assert_close(model(x, t), model(x, t, model.text_encoder.null(2)))
        # a padding mask reaches the U-Net as encoder_attention_mask
        mask = torch.zeros(2, 77, dtype=torch.bool)
        mask[:, :4] = True
        masked = ss.Cond(context=cond.context, context_mask=mask)
        out = pipe.unet(x, sde.timestep(t), encoder_hidden_states=cond.context, encoder_attention_mask=mask).sample
        torch.testing.assert_close(model.v(x, t, masked), out, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(x, t, masked), ref)
    assert sde2.config() == sde.config()
    # any sampler runs on the guided latent model
    g = torch.Generator().manual_seed(0)
    for sampler in ("bns", "unipc", "heun"):
        z = sde.sample(guided(model, 4.0), 1, sampler=sampler, steps=3, generator=g)
        assert z.shape == LATENT and bool(torch.isfinite(z).all()), sampler


def test_errors(pipelines, tmp_path, monkeypatch):
    pipe, folder, model, sde = pipelines["sd1"]
    with pytest.raises(ValueError, match="cond: a Stable Diffusion U-Net reads context"):
        model(torch.zeros(LATENT), 0.5, ss.Cond(labels=torch.tensor([1])))
    with pytest.raises(ValueError, match="pooled and micro are SDXL's inputs"):
        model(torch.zeros(LATENT), 0.5, ss.Cond(context=torch.zeros(1, 77, 8), pooled=torch.zeros(1, 6)))
    xl = pipelines["sdxl"][2]
    with pytest.raises(ValueError, match="an SDXL U-Net needs pooled"):
        xl(torch.zeros(LATENT), 0.5, ss.Cond(context=torch.zeros(1, 77, 20)))
    with pytest.raises(TypeError, match="prompts: expected a string or a non-empty sequence"):
        model.text_encoder.encode([3])
    with pytest.raises(ValueError, match="batch: expected an int >= 1"):
        model.text_encoder.null(0)
    # pickled weights: refused in one line, naming the file
    pipe.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    with pytest.raises(ValueError, match=r"unet.*holds no safetensors weights \(only pickled"):
        ss.from_diffusers(tmp_path / "pickled")
    one_line_error(run("sample", "--checkpoint", str(tmp_path / "pickled"), "--out", str(tmp_path / "x.npy")),
                   "holds no safetensors weights (only pickled diffusion_pytorch_model.bin")
    # a config that does not match the weights is refused before the network is read
    pipe.save_pretrained(tmp_path / "bad", safe_serialization=True)
    cfg = json.loads((tmp_path / "bad" / "text_encoder" / "config.json").read_text())
    cfg["hidden_size"] = 16
    (tmp_path / "bad" / "text_encoder" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="text_encoder.*shape"):
        ss.from_diffusers(tmp_path / "bad")
    cfg["hidden_size"], cfg["num_hidden_layers"] = 8, 10 ** 9
    (tmp_path / "bad" / "text_encoder" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="num_hidden_layers: expected at most"):
        ss.from_diffusers(tmp_path / "bad")
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "T5EncoderModel"]
    pipe.save_pretrained(tmp_path / "t5", safe_serialization=True)
    (tmp_path / "t5" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"expected component text_encoder = \['transformers', 'CLIPTextModel'\]"):
        ss.from_diffusers(tmp_path / "t5")
    monkeypatch.setitem(sys.modules, "transformers", None)                # transformers not installed
    with pytest.raises(ImportError, match="pip install transformers"):
        CLIPTextEncoder.from_pretrained(folder)


SD15_UNET = {"attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768,
             "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
             "in_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}
SDXL_UNET = {"addition_embed_type": "text_time", "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
             "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "in_channels": 4,
             "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
             "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
          "max_position_embeddings": 77, "projection_dim": 768, "vocab_size": 49408, "hidden_act": "quick_gelu"}


def test_the_real_configs_pass_the_bounds_and_build_on_the_meta_device():
    """The published SD 1.5 / SDXL U-Nets and CLIP ViT-L/14 text encoder are within the size bounds and build on
    the meta device (no memory) with their published parameter counts: the checks refuse no real model."""
    from scoresde._common.limits import check_sizes
    from scoresde.models.prebuild import skeleton
    for cfg, build, published in [
            (SD15_UNET, lambda c: UNet2DConditionModel.from_config(c), 859_520_964),
            (SDXL_UNET, lambda c: UNet2DConditionModel.from_config(c), 2_567_463_684),
            (CLIP_L, lambda c: CLIPTextModel(CLIPTextConfig.from_dict(c)), 123_060_480)]:
        check_sizes(cfg, "config ")
        net = skeleton(lambda: build(cfg))
        assert sum(p.numel() for p in net.parameters()) == published
        assert next(net.parameters()).device.type == "meta"


def test_clip_text_encoder_from_a_local_folder(pipelines, tmp_path):
    """A frozen CLIPTextModel folder (with its tokenizer files, or a pipeline's) as a text encoder for training."""
    pipe, folder, model, sde = pipelines["sd1"]
    pipe.text_encoder.save_pretrained(tmp_path / "clip")
    pipe.tokenizer.save_pretrained(tmp_path / "clip")
    for enc in (CLIPTextEncoder.from_pretrained(tmp_path / "clip"), CLIPTextEncoder.from_pretrained(folder)):
        assert enc.context_dim == 8 and not any(p.requires_grad for p in enc.parameters())
        torch.testing.assert_close(enc.encode(PROMPT).context, model.text_encoder.encode([PROMPT]).context)
    with pytest.raises(ValueError, match="not a directory"):
        CLIPTextEncoder.from_pretrained(tmp_path / "missing")


def test_cli_samples_and_decodes_a_stable_diffusion_folder(pipelines, tmp_path):
    """`scoresde sample --checkpoint SD_DIR --prompt ... --sampler bns --steps 8 --out img.png` decodes."""
    folder = pipelines["sd1"][1]
    out = tmp_path / "img.npy"
    r = run("sample", "--checkpoint", str(folder), "--prompt", PROMPT, "--sampler", "bns", "--steps", "8",
            "--n", "2", "--out", str(out), "--device", "cpu")
    assert r.exit_code == 0, r.output + r.stderr
    import numpy as np
    x = np.load(out)
    assert x.shape == (2, 3, 16, 16)                         # decoded images, not latents
    png = tmp_path / "img.png"
    r = run("sample", "--checkpoint", str(folder), "--prompt", PROMPT, "--sampler", "bns", "--steps", "8",
            "--n", "2", "--out", str(png), "--device", "cpu")
    assert r.exit_code == 0 and png.stat().st_size > 0, r.stderr
    one_line_error(run("sample", "--checkpoint", str(folder), "--label", "3", "--out", str(png)), "--label")
