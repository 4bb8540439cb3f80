"""The NCSN++ / DDPM options added for score_sde's configs: every combination runs, trains (gradients
reach the parameters it uses), round-trips through its config, and leaves the default networks as
they were; the FIR resampling primitives against closed forms and against each other."""
import pytest
import torch

import scoresde as ss
from scoresde.models.nets.layers import fir_resample
from scoresde.models.nets.resample import Resample, fir_down, fir_up, upfirdn2d

TINY = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
OPTIONS = [
    dict(progressive="output_skip", progressive_input="input_skip"),
    dict(progressive="output_skip", progressive_input="input_skip", progressive_combine="cat", fir=False),
    dict(progressive="residual", progressive_input="residual", pyramid_conv="strided", fir=False),
    dict(resblock="ddpm", resample_with_conv=False, progressive="output_skip"),
    dict(resblock="ddpm", fir=False, skip_rescale=False, progressive_input="residual", pyramid_conv="strided"),
    dict(conditional=False, fir_kernel=(1, 2, 1), progressive_input="input_skip"),
    dict(embedding="fourier", embed_log=True, scale_by_sigma=True, centered=False, init_scale=1e-3),
    dict(embedding="sinusoidal", scale_by_sigma=True, num_scales=10),
]


def randomize_(net):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + float("norm" in k and k.endswith("weight")))


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_ncsnpp_options_run_train_and_roundtrip(opts):
    torch.manual_seed(0)
    net = ss.get_model("ncsnpp", data_shape=(3, 8, 8), **TINY, **opts)
    randomize_(net)
    x = torch.rand(2, 3, 8, 8)
    c = torch.tensor([3.0, 7.0]) if opts.get("num_scales") else torch.tensor([0.5, 2.0])
    if opts.get("num_scales"):
        net.sigmas.copy_(torch.linspace(1.0, 5.0, 10, dtype=torch.float64))
    y = net(x, c)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    y.square().sum().backward()
    unused = ("dense",) if opts.get("conditional") is False else ()   # blocks keep score_sde's dense layers
    for k, p in net.named_parameters():
        if not k.split(".")[-2].startswith(unused):
            assert p.grad is not None and p.grad.abs().sum() > 0, k
    twin = ss.get_model("ncsnpp", **net.config).eval()
    twin.load_state_dict(net.state_dict())
    net.eval()
    with torch.no_grad():
        assert torch.equal(twin(x, c), net(x, c))


def test_scale_by_sigma_rules():
    """sigma = exp(c) (c = log sigma), c itself with embed_log (c = sigma, log c embedded), or sigmas[c]."""
    torch.manual_seed(0)
    base = dict(data_shape=(3, 8, 8), **TINY, embedding="sinusoidal")
    plain = ss.get_model("ncsnpp", **base).eval()
    x, c = torch.randn(2, 3, 8, 8), torch.tensor([1.0, 3.0])
    table = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0], dtype=torch.float64)
    cases = [(dict(), c, plain(x, c) / c.exp()[:, None, None, None]),
             (dict(embed_log=True), c.exp(), plain(x, c) / c.exp()[:, None, None, None]),
             (dict(num_scales=5), c, plain(x, c) / table[[1, 3]].float()[:, None, None, None])]
    for opts, c_in, expect in cases:
        net = ss.get_model("ncsnpp", **base, scale_by_sigma=True, **opts).eval()
        net.load_state_dict(plain.state_dict(), strict=False)
        if "num_scales" in opts:
            net.sigmas.copy_(table)
        with torch.no_grad():
            torch.testing.assert_close(net(x, c_in), expect.detach(), rtol=1e-5, atol=1e-6)


def test_centered_false_is_2x_minus_1_first():
    torch.manual_seed(0)
    a = ss.get_model("ddpm_unet", data_shape=(3, 8, 8), ch=32, ch_mult=(1, 2), attn_resolutions=(4,))
    b = ss.get_model("ddpm_unet", data_shape=(3, 8, 8), ch=32, ch_mult=(1, 2), attn_resolutions=(4,), centered=False)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x, c = torch.rand(2, 3, 8, 8), torch.tensor([10.0, 500.0])
    with torch.no_grad():
        assert torch.equal(b(x, c), a(2 * x - 1, c))


def test_defaults_and_configs_unchanged():
    for name, keys in [("ncsnpp", 11), ("ddpmpp", 11), ("ddpm_unet", 9)]:
        assert len(ss.get_model(name, data_shape=(3, 8, 8), **({"ch": 32, "ch_mult": (1, 2)} if name == "ddpm_unet"
                                                               else TINY)).config) == keys
    net = ss.get_model("ncsnpp", data_shape=(3, 8, 8), **TINY, progressive="output_skip")
    assert net.config["progressive"] == "output_skip" and "init_scale" not in net.config


def test_fir_primitives():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    # the fast default path equals the general upfirdn2d path
    torch.testing.assert_close(fir_resample(x, up=False), fir_down(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fir_resample(x, up=True), fir_up(x), rtol=1e-12, atol=1e-12)
    ones = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    for k in [(1, 3, 3, 1), (1, 2, 1), (1, 1)]:                   # constants stay constant inside
        up, down = fir_up(ones, k), fir_down(ones, k)
        assert up.shape[-1] == 16 and torch.allclose(up[..., 2:-2, 2:-2], ones[..., :1, :1])
        assert down.shape[-1] == 4 and torch.allclose(down[..., 1:-1, 1:-1], ones[..., :1, :1])
    # a true convolution: an impulse comes out as the (flipped) filter
    imp = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    imp[..., 2, 2] = 1
    k2 = torch.arange(9, dtype=torch.float64).reshape(3, 3)
    torch.testing.assert_close(upfirdn2d(imp, k2, pad=(1, 1))[0, 0, 1:4, 1:4], k2)
    with pytest.raises(ValueError, match="fails in score_sde's own code"):
        Resample(4, up=True, with_conv=True, fir=True)
    with pytest.raises(ValueError, match="fir_kernel"):
        ss.get_model("ncsnpp", data_shape=(3, 8, 8), **TINY, fir_kernel=(1,))
