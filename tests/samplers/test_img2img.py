"""SDEdit and inversion against closed forms on Gaussian data (exact scores, tests/problems.py).

For data N(MU, diag(STD^2)) and a guide x_init, SDEdit draws x_t0 ~ N(alpha x_init, sigma^2) and the exact
reverse SDE then draws x_0 | x_t0 from the posterior N(v (MU / STD^2 + alpha x_t0 / sigma^2), v),
v = (1 / STD^2 + alpha^2 / sigma^2)^-1, so the output has mean v (MU / STD^2 + alpha^2 x_init / sigma^2) and
variance v + v^2 alpha^2 / sigma^2. The probability-flow ODE maps x_t0 to eps by the exact flow map
(`Gaussian.flow_map`). Inversion is checked against that flow map and by its round trip.
"""
import pytest
import torch

import scoresde as ss
from scoresde.models.guidance import classifier_free_score
from scoresde.samplers.img2img import sdedit_start
from scoresde.samplers.core import start_grid, SAMPLERS
from problems import ExactConditional, Gaussian, counting, four_mode_mixture

MU = torch.tensor([0.5, -1.0], dtype=torch.float64)
STD = torch.tensor([0.3, 0.7], dtype=torch.float64)
GUIDE = torch.tensor([1.5, 0.5], dtype=torch.float64)
SDES = {"vp": ss.VPSDE, "ve": ss.VESDE, "flow": ss.FlowSDE, "edm": ss.EDMSDE}


def setup(name):
    sde, data = SDES[name](), Gaussian(MU, STD)
    return sde, data, counting(data.score_fn(sde))


def coefs(sde, t):
    alpha, sigma = sde.marginal_coefs(torch.tensor([t], dtype=torch.float64))
    return float(alpha), float(sigma)


def tweedie(sde, data, x, t):
    """E[x_0 | x_t] for the Gaussian data: the `denoise` step's exact value."""
    alpha, sigma = coefs(sde, t)
    return (x + sigma ** 2 * data.score(x, t, sde)) / alpha


def posterior_moments(sde, t0):
    """Mean and variance of SDEdit's output under the exact reverse SDE (module docstring)."""
    alpha, sigma = coefs(sde, t0)
    v = 1 / (1 / STD ** 2 + alpha ** 2 / sigma ** 2)
    return v * (MU / STD ** 2 + alpha ** 2 * GUIDE / sigma ** 2), v + v ** 2 * alpha ** 2 / sigma ** 2


@pytest.mark.parametrize("sampler,steps", [("euler_maruyama", 400), ("reverse_diffusion", 400),
                                           ("pc", 200), ("ancestral", 400)])
def test_sdedit_stochastic_moments(sampler, steps):
    """A stochastic sampler from t0: the output's mean and variance are the exact posterior's (VP; the
    discretisation-tied ones step on the tail of the uniform grid from T)."""
    sde, data, score = setup("vp")
    n = 6000
    x_init = GUIDE.expand(n, 2).clone()
    opts = {"corrector": "none"} if sampler == "pc" else {}
    out, info = ss.sdedit(sde, score, x_init, 0.4, sampler=sampler, steps=steps,
                          generator=torch.Generator().manual_seed(1), return_info=True, **opts)
    mean, var = posterior_moments(sde, info["t0"])
    se = (var / n).sqrt()
    assert torch.all((out.mean(0) - mean).abs() < 4 * se + 0.01), (out.mean(0), mean)
    assert torch.allclose(out.var(0), var, rtol=0.08), (out.var(0), var)
    assert info["nfe"] == SAMPLERS[sampler].nfe(steps, True, **opts) and score.calls == info["nfe"]


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("sampler", ["ode", "ddim", "heun", "dpm_solver"])
def test_sdedit_ode_map(name, sampler):
    """A probability-flow sampler from t0 is the exact flow map of x_t0 = alpha x_init + sigma z, then Tweedie's
    step at eps (z: the generator's first draw)."""
    sde, data, score = setup(name)
    x_init = torch.tensor([[1.5, 0.5], [-0.2, -2.0], [0.4, 0.0]], dtype=torch.float64)
    opts = {"rtol": 1e-9, "atol": 1e-9} if sampler == "ode" else {}
    out, info = ss.sdedit(sde, score, x_init, 0.6, sampler=sampler, steps=200,
                          generator=torch.Generator().manual_seed(3), return_info=True, **opts)
    t0, eps = info["t0"], sde.default_eps
    assert t0 == pytest.approx(eps + 0.6 * (sde.T - eps))           # the fast/ode samplers start exactly there
    z = torch.randn(x_init.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    alpha, sigma = coefs(sde, t0)
    expect = tweedie(sde, data, data.flow_map(alpha * x_init + sigma * z, t0, eps, sde), eps)
    tol = {"ode": 1e-6, "heun": 1e-3, "dpm_solver": 1e-3, "ddim": 1.5e-2}[sampler]     # the solvers' orders
    assert torch.allclose(out, expect, atol=tol, rtol=tol), (out - expect).abs().max()


def test_sdedit_strength_zero_and_one():
    sde, data, score = setup("vp")
    x_init = data.sample(8, generator=torch.Generator().manual_seed(0))
    out = ss.sdedit(sde, score, x_init, 0.0, sampler="ddim", steps=10)
    assert torch.equal(out, x_init) and out is not x_init and score.calls == 0
    for sampler in ("ddim", "euler_maruyama", "pc"):
        a = ss.sdedit(sde, score, x_init, 1.0, sampler=sampler, steps=50, generator=torch.Generator().manual_seed(5))
        b = sde.sample(score, x_init.shape, sampler=sampler, steps=50, generator=torch.Generator().manual_seed(5),
                       dtype=x_init.dtype)
        assert torch.equal(a, b)


def test_sdedit_start_times():
    """t0 = eps + strength (T - eps): exact for the samplers with their own grid, the nearest uniform-grid time
    (a tail of the grid from T) for the discretisation-tied ones; default steps = round(strength N)."""
    sde = ss.VPSDE(N=1000)
    eps = sde.default_eps
    t0, steps = sdedit_start(sde, 0.3, sampler="ddim")
    assert t0 == pytest.approx(eps + 0.3 * (1 - eps)) and steps == 300
    t0, steps = sdedit_start(sde, 0.3, sampler="reverse_diffusion", steps=50)
    n_full, t_grid = start_grid(sde, "reverse_diffusion", 50, eps, eps + 0.3 * (1 - eps))
    assert t0 == t_grid and abs(t0 - (eps + 0.3 * (1 - eps))) <= 0.5 * (1 - eps) / n_full + 1e-12
    ts = torch.linspace(1, eps, n_full + 1, dtype=torch.float64)
    assert t0 == pytest.approx(float(ts[n_full - 50]))


def test_sdedit_guided_score():
    """Classifier-free guidance with w = 1 on label k is component k's exact score: SDEdit with the ode sampler
    is that Gaussian's flow map."""
    mix, sde = four_mode_mixture(), ss.VPSDE()
    k = 2
    score = classifier_free_score(ExactConditional(mix, sde), y=k, w=1.0)
    comp = Gaussian(mix.means[k], mix.stds[k])
    x_init = torch.tensor([[0.3, -0.4], [1.0, 1.0]], dtype=torch.float64)
    out, info = ss.sdedit(sde, score, x_init, 0.5, sampler="ode", generator=torch.Generator().manual_seed(2),
                          rtol=1e-9, atol=1e-9, return_info=True)
    z = torch.randn(x_init.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    alpha, sigma = coefs(sde, info["t0"])
    expect = tweedie(sde, comp, comp.flow_map(alpha * x_init + sigma * z, info["t0"], 1e-3, sde), 1e-3)
    assert torch.allclose(out, expect, atol=1e-6)


@pytest.mark.parametrize("name", list(SDES))
def test_invert_ode_exact_to_tolerance(name):
    """ode inversion is the exact flow map eps -> T to the solver's tolerance; the round trip error falls with rtol."""
    sde, data, score = setup(name)
    x = data.sample(16, generator=torch.Generator().manual_seed(0))
    exact = data.flow_map(x, sde.default_eps, sde.T, sde)
    errs = []
    for tol in (1e-4, 1e-6, 1e-8):
        z = ss.invert(sde, score, x, method="ode", rtol=tol, atol=tol)
        back = ss.invert(sde, score, z, method="ode", rtol=tol, atol=tol, inverse=True)
        assert (z - exact).norm() / exact.norm() < 100 * tol
        errs.append(float((back - x).norm() / x.norm()))
    assert errs[2] < errs[1] < errs[0] and errs[2] < 1e-6, errs


@pytest.mark.parametrize("name", list(SDES))
def test_invert_ddim_orders(name):
    """DDIM inversion: latent error against the exact flow map and round-trip error halve as steps double (order
    1); one fixed-point iteration per step makes the round trip second order at the same NFE, and many make it
    the exact inverse of the ddim sampler's steps."""
    sde, data, score = setup(name)
    x = data.sample(16, generator=torch.Generator().manual_seed(0))
    exact = data.flow_map(x, sde.default_eps, sde.T, sde)
    errs, trips = [], []
    for steps in (50, 100, 200, 400):
        z = ss.invert(sde, score, x, steps=steps)
        back = ss.invert(sde, score, z, steps=steps, inverse=True)
        errs.append(float((z - exact).norm() / exact.norm()))
        trips.append(float((back - x).norm() / x.norm()))
    for e in (errs, trips):
        ratios = [e[i] / e[i + 1] for i in range(3)]
        assert all(1.6 < r < 2.5 for r in ratios), (e, ratios)
    fp = []
    for steps in (50, 100, 200):                   # one fixed-point iteration: second order at plain DDIM's NFE
        z, info = ss.invert(sde, score, x, steps=steps, fixed_point=1, return_info=True)
        assert info["nfe"] == 1 + steps
        fp.append(float((ss.invert(sde, score, z, steps=steps, inverse=True) - x).norm() / x.norm()))
    assert all(3.2 < fp[i] / fp[i + 1] < 4.8 for i in range(2)) and fp[0] < trips[0] / 5, fp
    z = ss.invert(sde, score, x, steps=200, fixed_point=12)   # converges once steps are small (flow: > 50)
    back = ss.invert(sde, score, z, steps=200, inverse=True)             # the sampler's steps, inverted exactly
    assert float((back - x).norm() / x.norm()) < 1e-11


def test_invert_matches_sampler_and_counts():
    """inverse=True is `sample(..., x_init=z, sampler=method, denoise=False)` on the same grid."""
    sde, data, score = setup("vp")
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = ss.invert(sde, score, z, steps=30, inverse=True)
    b = sde.sample(score, sampler="ddim", steps=30, x_init=z, denoise=False)
    assert torch.equal(a, b)
    score.calls = 0
    ss.invert(sde, score, z, steps=30)
    assert score.calls == 30


class Doubler:
    """An 'autoencoder' z = 2 x (latents at twice the scale), decode z / 2."""
    def encode(self, x):
        return 2 * x

    def decode(self, z):
        return z / 2


def test_latent_space():
    """With `autoencoder`, images are encoded, edited/inverted in latent space and decoded."""
    sde, data, score = setup("vp")
    x = data.sample(4, generator=torch.Generator().manual_seed(0)) / 2        # images; latents 2x ~ the data
    out = ss.sdedit(sde, score, x, 0.5, sampler="ddim", steps=20, autoencoder=Doubler(),
                    generator=torch.Generator().manual_seed(1))
    ref = ss.sdedit(sde, score, 2 * x, 0.5, sampler="ddim", steps=20, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out, ref / 2)
    z = ss.invert(sde, score, x, steps=20, autoencoder=Doubler())
    assert torch.allclose(z, ss.invert(sde, score, 2 * x, steps=20))
    assert torch.allclose(ss.invert(sde, score, z, steps=20, inverse=True, autoencoder=Doubler()),
                          ss.invert(sde, score, z, steps=20, inverse=True) / 2)


def test_latent_space_with_a_kl_autoencoder():
    """A real (tiny, random) `Autoencoder`, as a latent model's `model.autoencoder`, through sdedit and invert."""
    from scoresde.models.autoencoders.autoencoder import Autoencoder
    from scoresde.models.autoencoders.vae import KLAutoencoder
    torch.manual_seed(0)
    vae = KLAutoencoder(data_shape=(1, 8, 8), ch=8, ch_mult=[1, 2], z_channels=2, num_groups=4).double()
    ae = Autoencoder(vae, kind="scoresde", source=None, image_channels=1, downsample=2, latent_channels=2,
                     scale_factor=0.7)
    sde = ss.VPSDE()
    latent = Gaussian(torch.zeros(2, 4, 4), torch.ones(2, 4, 4))
    score = latent.score_fn(sde)
    images = torch.rand(3, 1, 8, 8, dtype=torch.float64) * 2 - 1
    out = ss.sdedit(sde, score, images, 0.3, sampler="ddim", steps=5, autoencoder=ae,
                    generator=torch.Generator().manual_seed(4))
    z = ss.sdedit(sde, score, ae.encode(images), 0.3, sampler="ddim", steps=5, generator=torch.Generator().manual_seed(4))
    assert out.shape == images.shape and torch.allclose(out, ae.decode(z))
    lat = ss.invert(sde, score, images, steps=5, autoencoder=ae)
    assert lat.shape == (3, 2, 4, 4) and torch.allclose(lat, ss.invert(sde, score, ae.encode(images), steps=5))


@pytest.mark.parametrize("call,match", [
    (lambda s, f, x: ss.sdedit(s, f, x, 1.5), "strength: expected a number in [0, 1]"),
    (lambda s, f, x: ss.sdedit(s, f, x, -0.1), "strength: expected a number in [0, 1]"),
    (lambda s, f, x: ss.sdedit(s, f, x, "0.5"), "strength: expected a number in [0, 1]"),
    (lambda s, f, x: ss.sdedit(s, f, x.long(), 0.5), "x_init: expected a floating-point tensor"),
    (lambda s, f, x: ss.sdedit(s, f, x, 0.5, sampler="nope"), "nope"),
    (lambda s, f, x: ss.sdedit(s, f, x, 0.5, steps=0), "steps: expected an int >= 1"),
    (lambda s, f, x: ss.sdedit(s, f, x, 0.5, autoencoder=3), "autoencoder: expected an object with encode"),
    (lambda s, f, x: ss.sdedit(s, f, x * float("nan"), 0.5), "x_init"),
    (lambda s, f, x: ss.invert(s, f, x, method="euler"), "method: expected one of"),
    (lambda s, f, x: ss.invert(s, f, x, method="ode", fixed_point=2), "fixed_point: iterations refine the ddim"),
    (lambda s, f, x: ss.invert(s, f, x, eps=2.0), "eps: expected the data's time"),
    (lambda s, f, x: ss.invert(s, f, x, rtol=0.0, method="ode"), "rtol"),
    (lambda s, f, x: s.sample(f, x.shape, t_start=0.0), "t_start: expected a start time"),
    (lambda s, f, x: s.sample(f, x.shape, t_start=0.5, times=[1.0, 0.5]), "t_start: an explicit `times` grid"),
])
def test_bad_inputs(call, match):
    sde, data, score = setup("vp")
    x = data.sample(2)
    with pytest.raises((ValueError, TypeError, KeyError)) as e:
        call(sde, score, x)
    assert match in str(e.value)


@pytest.mark.parametrize("name", ["vp", "edm"])
@pytest.mark.parametrize("sampler", ss.list_samplers())
def test_sdedit_runs_every_sampler(name, sampler):
    """Any registered sampler runs from t0 (its declared NFE where it declares one) and ends near the data: the
    exact-score output's mean lies between the guide's and the data's."""
    sde, data, score = setup(name)
    x_init = GUIDE.expand(400, 2).clone()
    out, info = ss.sdedit(sde, score, x_init, 0.5, sampler=sampler, steps=40, generator=torch.Generator().manual_seed(0),
                          return_info=True)
    nfe = SAMPLERS[sampler].nfe(40, True)
    assert out.shape == x_init.shape and torch.isfinite(out).all() and (nfe is None or info["nfe"] == nfe)
    assert info["t0"] < sde.T
    m = out.mean(0)
    assert torch.all((m - MU).abs() < (GUIDE - MU).abs() + 0.05) and (m - GUIDE).norm() > 0.05
