"""Latent diffusion: the KL autoencoder (shapes, the KL against closed form, the scale factor), its engine
task, score models on its latents through the library and the command line, diffusers' AutoencoderKL,
and one-line errors for autoencoders that do not fit."""
import math
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import scoresde as ss
from scoresde.runs.checkpoint import CheckpointError, list_checkpoints, read_checkpoint
from scoresde.cli.main import cli
from scoresde.models.autoencoders.autoencoder import Autoencoder, measure_scale_factor
from scoresde.models.autoencoders.vae import DiagonalGaussian, KLAutoencoder
from scoresde.runs.load import load_autoencoder
from problems import TESTS

VAE = {"ch": 8, "ch_mult": [1, 2, 2], "num_groups": 4, "mid_attn": False}
QUIET = {"progress": False, "log_every": 5}
UNET = {"name": "ddpm_unet", "ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
        "num_groups": 4, "dropout": 0.0}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(r, match):
    assert r.exit_code != 0, r.output
    assert "Traceback" not in r.output and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and match in lines[0], r.stderr


# --- the network and its posterior ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape,ch_mult,z,latent", [((1, 32, 32), [1, 2, 2], 4, (4, 8, 8)),
                                                    ((3, 16, 24), [1, 2, 2, 2], 2, (2, 2, 3)),
                                                    ((1, 8, 8), [1], 3, (3, 8, 8))])
def test_vae_shapes(shape, ch_mult, z, latent):
    vae = KLAutoencoder(data_shape=shape, ch=8, ch_mult=ch_mult, z_channels=z, num_groups=4)
    x = torch.randn(2, *shape)
    q = vae.encode(x)
    assert vae.downsample == 2 ** (len(ch_mult) - 1) and vae.latent_shape == latent
    assert q.mean.shape == q.std.shape == (2, *latent) and q.kl().shape == (2,)
    rec, _ = vae(x, torch.randn(2, *latent))
    assert rec.shape == x.shape and vae.decode(q.mode()).shape == x.shape
    with pytest.raises(ValueError, match="divisible by 4"):
        KLAutoencoder(data_shape=(1, 30, 32), ch_mult=[1, 2, 2])
    with pytest.raises(ValueError, match=r"x: expected images of shape \(B, "):
        vae.encode(torch.randn(2, shape[0] + 1, *shape[1:]))


def test_kl_nll_and_sampling_against_closed_form():
    g = torch.Generator().manual_seed(0)
    params = torch.randn(5, 6, 3, 4, generator=g, dtype=torch.float64) * 2
    params[0, 3:] = 40.0                                                # logvar clamped to 20
    q = DiagonalGaussian(params)
    mean, logvar = params[:, :3], params[:, 3:].clamp(-30, 20)
    ref = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    kl = torch.distributions.kl_divergence(ref, torch.distributions.Normal(0.0, 1.0)).sum((1, 2, 3))
    torch.testing.assert_close(q.kl(), kl, rtol=1e-10, atol=1e-8)
    # KL(N(m, v) || N(0, 1)) = 1/2 (m^2 + v - 1 - log v), entry by entry
    one = DiagonalGaussian(torch.tensor([[[[1.5]], [[math.log(0.25)]]]], dtype=torch.float64))
    assert one.kl().item() == pytest.approx(0.5 * (1.5 ** 2 + 0.25 - 1 - math.log(0.25)), rel=1e-12)
    z = q.sample(torch.Generator().manual_seed(1))
    n = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(z, mean + torch.exp(0.5 * logvar) * n)
    torch.testing.assert_close(q.nll(z), -ref.log_prob(z).sum((1, 2, 3)))


class _AffineEncoder(torch.nn.Module):
    """A stand-in autoencoder: q(z | x) = N(2 x, 1), D(z) = z / 2."""
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(2.0))

    def encode(self, x):
        return DiagonalGaussian(torch.cat([self.w * x, torch.zeros_like(x)], 1))

    def decode(self, z):
        return z / self.w


def test_scale_factor_is_one_over_the_latent_std_and_scaling_round_trips():
    x = torch.randn(4000, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    s = measure_scale_factor(_AffineEncoder(), x, torch.Generator().manual_seed(1))
    assert s == pytest.approx(1 / math.sqrt(2 ** 2 + 1), rel=0.01)           # Var z = 4 Var x + 1
    ae = Autoencoder(_AffineEncoder(), kind="test", source=None, image_channels=2, downsample=1, latent_channels=2,
                     scale_factor=s, shift_factor=0.3)
    mean, std = ae.encode_stats(x)
    torch.testing.assert_close(mean, (2 * x - 0.3) * s)
    torch.testing.assert_close(std, torch.full_like(x, s))
    z = mean + std * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    assert (z + 0.3 * s).std().item() == pytest.approx(1.0, rel=0.02)         # unit variance after scaling
    torch.testing.assert_close(ae.decode(ae.encode(x)), x)
    per_channel = Autoencoder(_AffineEncoder(), kind="test", source=None, image_channels=2, downsample=1,
                              latent_channels=2, scale_factor=0.5, latents_mean=[1.0, -1.0], latents_std=[2.0, 4.0])
    torch.testing.assert_close(per_channel.encode(x)[:, 1], (2 * x[:, 1] + 1.0) * 0.5 / 4.0)


# --- the autoencoder task and a latent score model, end to end --------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    ae = ss.train({"task": "autoencoder", "vae": VAE, "train": {"steps": 20, "batch_size": 16, "ckpt_every": 10,
                   **QUIET}, "sample": {"n": 16}, "eval": {"n": 32}, "device": "cpu"}, out=str(root / "ae"))
    lat = ss.train({"data": {"name": "digits32"}, "autoencoder": str(root / "ae"),
                    "model": {**UNET, "num_classes": "auto"}, "sample": {"n": 4, "steps": 4, "sampler": "euler_maruyama"},
                    "train": {"steps": 8, "batch_size": 16, "warmup": 2, "ckpt_every": 8, **QUIET}, "device": "cpu"},
                   out=str(root / "latent"))
    return root, ae, lat


def test_autoencoder_run_trains_and_stores_its_measured_scale_factor(runs):
    root, ae_run, _ = runs
    import csv
    losses = [float(r["loss"]) for r in csv.DictReader(open(root / "ae" / "log.csv")) if r["loss"]]
    assert losses[-1] < 0.7 * losses[0]
    assert os.path.isfile(root / "ae" / "samples.png") and ae_run.metrics["psnr"] > 10
    _, meta = read_checkpoint(list_checkpoints(root / "ae")[-1][1])
    assert meta["task"] == "autoencoder" and meta["autoencoder"]["latent_shape"] == [4, 8, 8]
    ae = load_autoencoder(root / "ae")
    x = ss.load_dataset("digits32").x
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:1024]
    s = measure_scale_factor(ae.vae, x[order], torch.Generator().manual_seed(0))
    assert ae.scale_factor == meta["autoencoder"]["scale_factor"] == pytest.approx(s, rel=1e-6)
    assert ae_run.metrics["scale_factor"] == pytest.approx(s, rel=1e-5)
    mean, std = ae.encode_all(x)
    z = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    assert z.std().item() == pytest.approx(1.0, rel=0.05)             # the training latents have unit std
    with pytest.raises(CheckpointError, match="an autoencoder run"):
        ss.load(root / "ae")


def test_autoencoder_with_discriminator_resumes_exactly(tmp_path):
    x = torch.nn.functional.avg_pool2d(ss.load_dataset("digits32").x[:64], 2)     # (64, 1, 16, 16)
    cfg = {"task": "autoencoder", "vae": {**VAE, "disc_weight": 0.5, "disc_start": 3, "disc_ch": 8},
           "train": {"steps": 6, "batch_size": 8, "ckpt_every": 3, **QUIET}, "sample": {"n": 8}, "eval": {"n": 8},
           "device": "cpu"}
    full = ss.train(cfg, data=x, out=str(tmp_path / "full"))
    ss.train({**cfg, "train": {**cfg["train"], "steps": 3}}, data=x, out=str(tmp_path / "half"))
    resumed = ss.train({"train": {"steps": 6}}, data=x, out=str(tmp_path / "half"), resume=True)
    a, meta = read_checkpoint(full.checkpoint)
    b, _ = read_checkpoint(resumed.checkpoint)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert a["model/step"].item() == 6 and any(k.startswith("model/disc.") for k in a)


def test_latent_model_loads_with_its_autoencoder_and_samples_images(runs, tmp_path):
    root, ae_run, lat = runs
    assert np.load(root / "latent" / "samples.npy").shape == (4, 1, 32, 32)
    _, meta = read_checkpoint(lat.checkpoint)
    assert meta["task"] == "latent" and meta["data_shape"] == [4, 8, 8]
    assert meta["autoencoder"]["digest"] == load_autoencoder(root / "ae").digest
    model, sde = ss.load(root / "latent")
    assert model.data_shape == (4, 8, 8)
    assert model.autoencoder.scale_factor == pytest.approx(ae_run.metrics["scale_factor"], rel=1e-5)
    z = sde.sample(model, 3, sampler="euler_maruyama", steps=3, generator=torch.Generator().manual_seed(0))
    assert model.autoencoder.decode(z).shape == (3, 1, 32, 32)
    # moved: one line naming the way out; the new place works; another autoencoder is refused
    moved = tmp_path / "ae_moved"
    shutil.copytree(root / "ae", moved)
    os.rename(root / "ae", tmp_path / "away")
    try:
        with pytest.raises(FileNotFoundError, match="autoencoder=PATH"):
            ss.load(root / "latent")
        assert ss.load(root / "latent", autoencoder=moved)[0].autoencoder.source == str(moved)
    finally:
        os.rename(tmp_path / "away", root / "ae")
    other = ss.train({"task": "autoencoder", "vae": VAE, "train": {"steps": 1, "batch_size": 4, **QUIET},
                      "sample": {"n": 4}, "eval": {"n": 4}, "seed": 1, "device": "cpu"}, out=str(tmp_path / "other"))
    with pytest.raises(CheckpointError, match="not the ones the latent model was trained with"):
        ss.load(root / "latent", autoencoder=other.run_dir)


def test_cli_samples_decodes_guides_and_reports_latent_likelihood(runs, tmp_path):
    root = runs[0]
    common = ["--checkpoint", root / "latent", "--sampler", "euler_maruyama", "--steps", 3, "--device", "cpu"]
    r = run("sample", *common, "--n", 5, "--out", tmp_path / "x.npy")
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "x.npy").shape == (5, 1, 32, 32)
    r = run("sample", *common, "--n", 4, "--label", 3, "--guidance", 2, "--out", tmp_path / "x.png")
    assert r.exit_code == 0 and os.path.getsize(tmp_path / "x.png") > 0, r.output
    one_line_error(run("sample", *common, "--known", "digits32", "--mask", "top", "--out", tmp_path / "y.png"),
                   "inpainting is not supported for a latent model")
    r = run("likelihood", "--checkpoint", root / "latent", "--data", "digits32", "--n", 1, "--device", "cpu")
    assert r.exit_code == 0 and "LATENT SPACE" in r.output, r.output


# --- diffusers' AutoencoderKL ----------------------------------------------------------------------------------
def _tiny_diffusers(path, in_channels=3, **config):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=in_channels, out_channels=in_channels, block_out_channels=[2, 4],
                                  norm_num_groups=2, down_block_types=["DownEncoderBlock2D"] * 2,
                                  up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, **config).eval()
    vae.save_pretrained(path)
    return vae


def test_diffusers_autoencoder_kl_equals_diffusers_own_calls(tmp_path):
    vae = _tiny_diffusers(tmp_path / "vae", scaling_factor=0.5, shift_factor=0.1)
    ae = load_autoencoder(tmp_path / "vae")
    assert (ae.kind, ae.downsample, ae.latent_channels, ae.scale_factor, ae.shift_factor) == ("diffusers", 2, 4, 0.5, 0.1)
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():           # trainable weights pick other CPU kernels (differences ~1e-6): compare both
        torch.testing.assert_close(ae.decode(ae.encode(x)), vae.decode(vae.encode(x).latent_dist.mode()).sample,
                                   rtol=0, atol=2e-5)
    vae.requires_grad_(False)       # as load_autoencoder freezes it: then bit for bit
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        torch.testing.assert_close(ae.encode(x), (dist.mode() - 0.1) * 0.5, rtol=0, atol=0)
        z = ae.encode(x, sample=True, generator=torch.Generator().manual_seed(5))
        torch.testing.assert_close(z, (dist.sample(torch.Generator().manual_seed(5)) - 0.1) * 0.5, rtol=0, atol=0)
        torch.testing.assert_close(ae.decode(z), vae.decode(z / 0.5 + 0.1).sample, rtol=0, atol=0)
    assert ae.latent_shape((3, 16, 16)) == (4, 8, 8)
    pipe = tmp_path / "pipe"                                   # a pipeline folder: its vae/ sub-folder
    shutil.copytree(tmp_path / "vae", pipe / "vae")
    (pipe / "model_index.json").write_text("{}")
    assert load_autoencoder(pipe).digest == ae.digest


def test_latent_model_on_a_diffusers_autoencoder(tmp_path):
    _tiny_diffusers(tmp_path / "vae", in_channels=1)          # scaling_factor: diffusers' default 0.18215
    lat = ss.train({"data": {"name": "digits32"}, "autoencoder": str(tmp_path / "vae"), "model": UNET,
                    "sample": {"n": 2, "steps": 2, "sampler": "euler_maruyama"},
                    "train": {"steps": 2, "batch_size": 4, "warmup": 1, **QUIET}, "device": "cpu"},
                   out=str(tmp_path / "lat"))
    model, _ = ss.load(lat.run_dir)
    assert model.data_shape == (4, 16, 16) and model.autoencoder.scale_factor == pytest.approx(0.18215)
    assert np.load(tmp_path / "lat" / "samples.npy").shape == (2, 1, 32, 32)


# --- bad inputs: one line each ----------------------------------------------------------------------------------
def test_autoencoders_that_do_not_fit_and_missing_ones_give_one_line(runs, tmp_path, monkeypatch):
    root = runs[0]
    np.save(tmp_path / "rgb.npy", np.zeros((4, 3, 32, 32), np.uint8))
    (tmp_path / "empty").mkdir()
    out = ["--out", tmp_path / "o", "--device", "cpu", "--no-progress", "--steps", 1]
    one_line_error(run("train", "--autoencoder", root / "ae", "--data", tmp_path / "rgb.npy", *out),
                   "reads 1-channel images, found 3 channels")
    one_line_error(run("train", "--autoencoder", root / "ae", "--data", "digits", *out),
                   "was trained on 32x32 images, found 8x8")
    one_line_error(run("train", "--autoencoder", tmp_path / "missing", "--data", "digits32", *out),
                   "no such run directory")
    one_line_error(run("train", "--autoencoder", tmp_path / "empty", "--data", "digits32", *out),
                   "neither a scoresde autoencoder run")
    one_line_error(run("train", "--autoencoder", root / "latent", "--data", "digits32", *out), "task 'latent'")
    one_line_error(run("train-autoencoder", "--data", "moons", *out), "needs images (C, H, W)")
    one_line_error(run("train-autoencoder", "--set", "vae.num_groups=3", "--dry-run"), "3 groups must divide")
    one_line_error(run("train-autoencoder", "--set", "vae.loss=l3", "--dry-run"), "vae.loss: expected one of")
    one_line_error(run("sample", "--checkpoint", root / "ae", "--out", tmp_path / "a.png"), "an autoencoder run")
    _tiny_diffusers(tmp_path / "vae", in_channels=1)
    monkeypatch.setitem(sys.modules, "diffusers", None)        # as if diffusers were not installed
    one_line_error(run("train", "--autoencoder", tmp_path / "vae", "--data", "digits32", *out),
                   "needs the diffusers package")
    assert not os.path.exists(tmp_path / "o")


def test_train_autoencoder_dry_run_and_help():
    r = run("train-autoencoder", "--downsample", 8, "--latent-channels", 3, "--kl-weight", 1e-5, "--dry-run")
    assert r.exit_code == 0, r.output
    for line in ('task = "autoencoder"', "ch_mult = [\n    1,\n    2,\n    2,\n    2,\n]", "z_channels = 3",
                 "kl_weight = 1e-05", 'name = "digits32"', "ema_decay = 0.0", "lr = 0.001"):
        assert line in r.output, (line, r.output)
    assert "--autoencoder" in run("train", "--help").output and "--downsample" in run("train-autoencoder", "--help").output


def test_benchmark_brings_digits32_back_to_the_digits_exactly():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "bench_latent", os.path.join(str(TESTS), "..", "benchmarks", "latent.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    small, big = ss.load_dataset("digits").x, ss.load_dataset("digits32").x
    assert (bench.to_digits8(big) - small).abs().max() < 1e-5          # the inverse of digits32's upsampling
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    up = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    assert (bench.to_digits8(up) - x).abs().max() < 1e-5
    # 4x4 average pooling is not: it blurs by (1/8, 3/4, 1/8) along each axis (inside the image)
    blur = torch.tensor([1 / 8, 3 / 4, 1 / 8])
    pooled = bench.pool8(up)[:, :, 1:-1, 1:-1]
    expect = torch.nn.functional.conv2d(x, torch.outer(blur, blur)[None, None])
    assert (pooled - expect).abs().max() < 1e-5 and (pooled - x[:, :, 1:-1, 1:-1]).abs().max() > 0.05
