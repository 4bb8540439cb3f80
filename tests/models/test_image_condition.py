"""The image condition (SR3 concatenation, CDM noise-conditioning augmentation): networks, ScoreModel, helpers."""
from __future__ import annotations

import math

import pytest
import torch

import scoresde as ss
from scoresde.models.conditioning import Cond
from scoresde.models.nets import get_model
from scoresde.models.superres import augment_by_sde, downsample, gaussian_blur, upsample

SMALL = {
    "ddpm_unet": dict(ch=16, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], num_groups=4),
    "ncsnpp": dict(ch=16, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[]),
    "ddpmpp": dict(ch=16, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[]),
    "dit": dict(patch_size=2, hidden_size=32, depth=2, num_heads=2),
}


def _net(name, **kw):
    torch.manual_seed(0)
    return get_model(name, data_shape=(1, 16, 16), image_shape=(1, 4, 4), **{**SMALL[name], **kw}).eval()


def _perturb(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("name", list(SMALL))
def test_network_reads_image_and_level(name):
    net = _net(name)
    assert net.config["image_shape"] == [1, 4, 4] and net.config["image_upsample"] == "bicubic"
    x, c = torch.randn(2, 1, 16, 16), torch.tensor([100.0, 500.0])
    img, img2 = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    _perturb(net)                                               # no zero-initialised output layers left
    out = net(x, c, Cond(image=img, image_level=torch.tensor([1.0, 2.0])))
    assert out.shape == x.shape
    assert not torch.allclose(out, net(x, c, Cond(image=img2, image_level=torch.tensor([1.0, 2.0]))))
    assert not torch.allclose(out, net(x, c, Cond(image=img, image_level=torch.tensor([300.0, 700.0]))))
    rebuilt = get_model(name, **net.config).eval()              # the config rebuilds the same network
    rebuilt.load_state_dict(net.state_dict())
    assert torch.equal(rebuilt(x, c, Cond(image=img, image_level=torch.tensor([1.0, 2.0]))), out)


@pytest.mark.parametrize("name", list(SMALL))
def test_level_embedding_starts_neutral(name):
    net = _net(name)
    x, c, img = torch.randn(2, 1, 16, 16), torch.tensor([100.0, 500.0]), torch.randn(2, 1, 4, 4)
    _perturb(torch.nn.ModuleList([m for n, m in net.named_children() if n != "image_in"]))
    a = net(x, c, Cond(image=img, image_level=torch.tensor([1.0, 2.0])))
    b = net(x, c, Cond(image=img, image_level=torch.tensor([600.0, 900.0])))
    torch.testing.assert_close(a, b)                            # zero output layer: the level has no effect yet


@pytest.mark.parametrize("name", list(SMALL))
def test_network_refuses_a_missing_or_wrong_image(name):
    net = _net(name)
    x, c = torch.randn(2, 1, 16, 16), torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match=r"cond.image: expected a \(2, 1, 4, 4\) image condition .* found None"):
        net(x, c)
    with pytest.raises(ValueError, match=r"cond.image: expected shape \(2, 1, 4, 4\), found \(2, 3, 4, 4\)"):
        net(x, c, Cond(image=torch.randn(2, 3, 4, 4)))
    plain = get_model(name, data_shape=(1, 16, 16), **SMALL[name])
    with pytest.raises(ValueError, match=r"found fields \['image'\]; build it with image_shape"):
        plain(x, c, Cond(image=torch.randn(2, 1, 4, 4)))


def test_image_shape_is_checked():
    with pytest.raises(ValueError, match=r"image_shape: expected None or \(C, h, w\)"):
        get_model("ddpm_unet", data_shape=(1, 16, 16), image_shape=(4, 4), **SMALL["ddpm_unet"])
    with pytest.raises(ValueError, match=r"image_shape: expected a condition no larger than the data's 16x16"):
        get_model("ddpm_unet", data_shape=(1, 16, 16), image_shape=(1, 32, 32), **SMALL["ddpm_unet"])
    with pytest.raises(ValueError, match=r"image_upsample: expected one of"):
        get_model("ddpm_unet", data_shape=(1, 16, 16), image_shape=(1, 4, 4), image_upsample="lanczos",
                  **SMALL["ddpm_unet"])
    assert "image_shape" not in get_model("ddpm_unet", data_shape=(1, 16, 16), **SMALL["ddpm_unet"]).config


# --- helpers --------------------------------------------------------------------------------------
def test_downsample_is_the_block_mean_and_upsample_keeps_constants():
    x = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    low = downsample(x, (2, 3))
    torch.testing.assert_close(low[1, 2, 1, 2], x[1, 2, 4:8, 8:12].mean())
    assert downsample(x, (8, 12)) is x
    with pytest.raises(ValueError, match=r"size: expected \(h, w\) dividing the image's 8x12"):
        downsample(x, (3, 3))
    const = torch.full((1, 1, 4, 4), 0.7, dtype=torch.float64)
    for mode in ("bicubic", "bilinear", "nearest"):
        torch.testing.assert_close(upsample(const, 16, mode), torch.full((1, 1, 16, 16), 0.7, dtype=torch.float64))
    torch.testing.assert_close(downsample(upsample(x, (16, 24), "nearest"), (8, 12)), x)


def test_gaussian_blur_closed_form():
    x = torch.zeros(2, 1, 21, 21, dtype=torch.float64)
    x[:, 0, 10, 10] = 1.0
    out = gaussian_blur(x, torch.tensor([1.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(out[1], x[1])                             # sigma 0: identity
    k = torch.exp(-0.5 * (torch.arange(-5, 6, dtype=torch.float64) / 1.5) ** 2)
    k = k / k.sum()
    torch.testing.assert_close(out[0, 0, 5:16, 5:16], k[:, None] * k[None, :])
    assert math.isclose(float(out[0].sum()), 1.0, rel_tol=1e-12)
    const = torch.full((1, 2, 9, 9), -0.3)
    torch.testing.assert_close(gaussian_blur(const, 2.0), const)
    with pytest.raises(ValueError, match="sigma: expected a number >= 0"):
        gaussian_blur(x, -1.0)


@pytest.mark.parametrize("sde_name", ["vp", "ve", "flow", "edm"])
def test_augmentation_is_the_forward_marginal(sde_name):
    sde = ss.get_sde(sde_name)
    img = torch.linspace(-1, 1, 16, dtype=torch.float64).reshape(1, 1, 4, 4).expand(20000, 1, 4, 4)
    s = 0.3 * sde.T
    z = augment_by_sde(sde, img, s, torch.Generator().manual_seed(0))
    alpha, sigma = (float(v) for v in sde.marginal_coefs(torch.tensor(s, dtype=torch.float64)))
    torch.testing.assert_close(z.mean(0), alpha * img[0], atol=4 * sigma / math.sqrt(20000), rtol=0)
    assert abs(float(z.std(0).mean()) / sigma - 1) < 0.02
    assert torch.equal(augment_by_sde(sde, img[:3], 0.0), img[:3])           # level 0: the image itself
    mixed = augment_by_sde(sde, img[:2], torch.tensor([0.0, s], dtype=torch.float64))
    assert torch.equal(mixed[0], img[0]) and not torch.equal(mixed[1], img[1])
    with pytest.raises(ValueError, match=r"level: expected times s in \[0, "):
        augment_by_sde(sde, img[:2], -0.1)


# --- ScoreModel -------------------------------------------------------------------------------------
class _Spy(torch.nn.Module):
    """A network recording the condition it is given; returns zeros."""

    def __init__(self):
        super().__init__()
        self.image_in = torch.nn.Module()
        self.image_in.image_shape = (1, 4, 4)
        self.data_shape, self.num_classes, self.seen = (1, 16, 16), 10, []

    def forward(self, x, c, cond=None):
        self.seen.append(cond)
        return torch.zeros_like(x)


@pytest.mark.parametrize("sde_name", ["vp", "ve", "edm"])
def test_score_model_maps_the_level_like_t(sde_name):
    sde, spy = ss.get_sde(sde_name), _Spy()
    model = ss.ScoreModel(spy, sde)
    assert model.image_shape == (1, 4, 4)
    low = torch.randn(3, 1, 4, 4)
    s = torch.tensor([0.0, 0.2, 0.5]) * sde.T
    cond = model.image_cond(low, s, generator=torch.Generator().manual_seed(1), labels=torch.tensor([1, 2, 3]))
    assert torch.equal(cond.image[0], low[0]) and not torch.equal(cond.image[1], low[1])
    assert torch.equal(model.image_cond(low, s, noisy=True).image, low)
    model(torch.randn(3, 1, 16, 16), 0.5 * sde.T, cond)
    seen = spy.seen[-1]
    sc = s.clamp_min(sde.default_eps)
    torch.testing.assert_close(seen.image_level, model.condition(sc, sde.marginal_coefs(sc)[1]))
    assert torch.equal(seen.image, cond.image) and torch.equal(seen.labels, torch.tensor([1, 2, 3]))
    # classifier-free guidance keeps the image in both branches and nulls the labels only
    guided = ss.classifier_free_score(model, y=cond, w=2.0)
    guided(torch.randn(3, 1, 16, 16), 0.5 * sde.T)
    both = spy.seen[-1]                                      # one call on the doubled batch
    assert torch.equal(both.labels, torch.tensor([1, 2, 3, 10, 10, 10]))
    assert torch.equal(both.image, torch.cat([cond.image, cond.image]))
    # an unset level is s = 0
    model(torch.randn(3, 1, 16, 16), 0.5 * sde.T, Cond(image=low))
    e = torch.full((3,), sde.default_eps)
    torch.testing.assert_close(spy.seen[-1].image_level, model.condition(e, sde.marginal_coefs(e)[1]))


def test_image_cond_errors():
    model = ss.ScoreModel(_net("ddpm_unet"), ss.get_sde("vp"))
    with pytest.raises(ValueError, match=r"image: expected a \(B, 1, 4, 4\) floating-point low-resolution image, "
                                         r"found torch.float32 \(2, 1, 8, 8\)"):
        model.image_cond(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"level: expected a number or a \(2,\) tensor"):
        model.image_cond(torch.randn(2, 1, 4, 4), torch.zeros(3))
    plain = ss.ScoreModel(get_model("ddpm_unet", data_shape=(1, 16, 16), **SMALL["ddpm_unet"]), ss.get_sde("vp"))
    assert plain.image_shape is None
    with pytest.raises(ValueError, match="image: this model has no image condition"):
        plain.image_cond(torch.randn(2, 1, 4, 4))


def test_sampling_a_super_resolution_model_runs_every_sde():
    for name in ("vp", "flow"):
        sde = ss.get_sde(name)
        model = ss.ScoreModel(_net("ddpm_unet"), sde)
        cond = model.image_cond(torch.randn(2, 1, 4, 4), 0.1 * sde.T)
        x = sde.sample(lambda x, t: model(x, t, cond), (2, 1, 16, 16), sampler="ddim", steps=3,
                       generator=torch.Generator().manual_seed(0))
        assert x.shape == (2, 1, 16, 16) and bool(torch.isfinite(x).all())
