"""ScoreModel and the score/eps conversions against the exact perturbed score of Gaussian data."""
import pytest
import torch
from torch import nn

import scoresde as ss
from problems import Gaussian

SDES = {"vp": lambda: ss.VPSDE(0.1, 20.0, 1000), "subvp": lambda: ss.SubVPSDE(0.1, 20.0, 1000),
        "ve": lambda: ss.VESDE(0.01, 50.0, 1000)}
DATA = Gaussian(torch.tensor([1.0, -0.5, 0.25]), torch.tensor([0.5, 0.2, 1.0]))


def _t_from_sigma(sde, sigma):
    """t with sigma(t) = sigma, by bisection (sigma(t) is increasing for every SDE here)."""
    lo, hi = torch.zeros_like(sigma), torch.ones_like(sigma)
    for _ in range(60):
        mid = (lo + hi) / 2
        up = sde.marginal_coefs(mid)[1] < sigma
        lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
    return (lo + hi) / 2


class Oracle(nn.Module):
    """A 'network' returning the exact eps, score (optionally times sigma), x0 or v of the Gaussian data."""

    def __init__(self, sde, target, conditioning, scale=False):
        super().__init__()
        self.sde, self.target, self.conditioning, self.scale = sde, target, conditioning, scale
        self.w = nn.Parameter(torch.ones((), dtype=torch.float64))
        self.data_shape = (3,)

    def forward(self, x, c):
        t = c / 999 if self.conditioning == "t" else _t_from_sigma(
            self.sde, c.exp() if self.conditioning == "log_sigma" else c)
        alpha, sigma = (v[:, None] for v in self.sde.marginal_coefs(t))
        s = DATA.score(x, t, self.sde) * self.w
        if self.target == "eps":
            return -sigma * s
        if self.target == "score":
            return sigma * s if self.scale else s
        x0 = (x + sigma ** 2 * s) / alpha
        return x0 if self.target == "x0" else alpha * (-sigma * s) - sigma * x0    # v = alpha eps - sigma x0


def draw(sde, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = 0.05 + 0.95 * torch.rand(n, generator=g, dtype=torch.float64)
    x0 = DATA.sample(n, generator=g)
    mean, std = sde.marginal_prob(x0, t)
    return mean + std[:, None] * torch.randn(x0.shape, generator=g, dtype=torch.float64), t


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("param", ["eps", "score", "x0", "v"])
@pytest.mark.parametrize("conditioning", ["auto", "t", "log_sigma", "sigma"])
def test_score_eps_x0_of_every_parameterization(name, param, conditioning):
    """An oracle net for each parameterization gives the exact score; .eps = -sigma score and
    .x0 = (x + sigma^2 score) / alpha (Tweedie)."""
    sde = SDES[name]()
    resolved = {"vp": "t", "subvp": "t", "ve": "log_sigma"}[name] if conditioning == "auto" else conditioning
    scale = param == "score" and name == "ve"                  # the default scale_by_sigma
    model = ss.ScoreModel(Oracle(sde, param, resolved, scale), sde, param, conditioning)
    assert model.config() == {"parameterization": param, "conditioning": resolved, "scale_by_sigma": scale}
    x, t = draw(sde)
    alpha, sigma = (v[:, None] for v in sde.marginal_coefs(t))
    s = DATA.score(x, t, sde)
    tol = dict(rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(model(x, t), s, **tol)
    torch.testing.assert_close(model.eps(x, t), -sigma * s, **tol)
    torch.testing.assert_close(model.x0(x, t), (x + sigma ** 2 * s) / alpha, **tol)


def test_conditioning_values_fed_to_the_net():
    seen = []

    def net(x, c):
        seen.append(c)
        return torch.zeros_like(x)

    x, t = torch.zeros(3, 2, dtype=torch.float64), torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    for name in SDES:
        sde = SDES[name]()
        sigma = sde.marginal_coefs(t)[1]
        for cond, ref in [("t", 999 * t), ("log_sigma", sigma.log()), ("sigma", sigma),
                          ("auto", 999 * t if name != "ve" else sigma.log())]:
            ss.ScoreModel(net, sde, "eps", cond)(x, t)
            torch.testing.assert_close(seen[-1], ref, rtol=1e-12, atol=1e-12)
            assert seen[-1].shape == (3,)


def test_sde_default_conditioning():
    assert [SDES[n]().default_conditioning for n in ("vp", "subvp", "ve")] == ["t", "t", "log_sigma"]


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_score_parameterization_scale_by_sigma(name):
    sde = SDES[name]()
    x, t = draw(sde, 8)
    sigma = sde.marginal_coefs(t)[1][:, None]
    net = lambda x, c: torch.sin(x)                       # noqa: E731
    torch.testing.assert_close(ss.ScoreModel(net, sde, "score", scale_by_sigma=True)(x, t), torch.sin(x) / sigma)
    torch.testing.assert_close(ss.ScoreModel(net, sde, "score", scale_by_sigma=False)(x, t), torch.sin(x))
    assert ss.ScoreModel(net, sde, "score").scale_by_sigma is (name == "ve")
    assert ss.ScoreModel(net, sde, "eps").scale_by_sigma is False


def test_float_and_batched_time_agree_on_any_rank():
    sde = SDES["vp"]()
    model = ss.ScoreModel(lambda x, c: torch.tanh(x) * (1 + c.reshape(-1, 1, 1, 1) / 999), sde)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(model(x, 0.3), model(x, torch.full((2,), 0.3, dtype=torch.float64)))
    assert model(x, 0.3).shape == x.shape and model.data_shape is None


def test_module_attributes_and_gradients():
    sde = SDES["vp"]()
    net = Oracle(sde, "eps", "t")
    model = ss.ScoreModel(net, sde)
    assert model.net is net and model.sde is sde and model.data_shape == (3,)
    assert [p is net.w for p in model.parameters()] == [True]
    x, t = draw(sde, 4)
    model(x, t).sum().backward()
    assert net.w.grad is not None and net.w.grad != 0
    assert "parameterization='eps'" in repr(model)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_score_from_eps_and_eps_from_score_are_inverse(name):
    sde = SDES[name]()
    x, t = draw(sde, 16)
    sigma = sde.marginal_coefs(t)[1][:, None]
    s = DATA.score_fn(sde)
    eps = ss.eps_from_score(s, sde)
    torch.testing.assert_close(eps(x, t), -sigma * DATA.score(x, t, sde), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ss.score_from_eps(eps, sde)(x, t), DATA.score(x, t, sde), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eps(x, 0.5), eps(x, torch.full((16,), 0.5, dtype=torch.float64)))
    model = ss.ScoreModel(Oracle(sde, "eps", "t"), sde, conditioning="t")
    assert ss.score_from_eps(model.eps, sde).data_shape is None
    assert ss.eps_from_score(model, sde).data_shape == (3,)


def test_validation():
    sde, net = SDES["vp"](), (lambda x, c: x)
    cases = [
        (lambda: ss.ScoreModel(3, sde), TypeError, "net"),
        (lambda: ss.ScoreModel(net, "vp"), TypeError, "sde"),
        (lambda: ss.ScoreModel(net, sde, "velocity"), ValueError, "parameterization: expected one of"),
        (lambda: ss.ScoreModel(net, sde, "eps", "timestep"), ValueError, "conditioning: 'timestep' needs"),
        (lambda: ss.ScoreModel(net, sde, None), TypeError, "parameterization"),
        (lambda: ss.ScoreModel(net, sde, "eps", "time"), ValueError, "conditioning: expected one of"),
        (lambda: ss.ScoreModel(net, sde, "eps", 1), TypeError, "conditioning"),
        (lambda: ss.ScoreModel(net, sde, "eps", scale_by_sigma=True), ValueError, "scale_by_sigma"),
        (lambda: ss.ScoreModel(net, sde, "score", scale_by_sigma=1), TypeError, "scale_by_sigma"),
        (lambda: ss.ScoreModel(lambda x, c: x[:, :1], sde)(torch.ones(2, 2), 0.5), ValueError,
         r"net: expected an output of shape \(2, 2\)"),
        (lambda: ss.ScoreModel(net, sde)(torch.ones(2, 2), torch.ones(3)), ValueError, r"t: expected shape \(2,\)"),
        (lambda: ss.ScoreModel(net, sde)(torch.ones(2, 2), "0.5"), TypeError, "t: expected a float"),
        (lambda: ss.ScoreModel(net, sde)([1.0], 0.5), TypeError, "x: expected"),
        (lambda: ss.score_from_eps(None, sde), TypeError, "eps_fn"),
        (lambda: ss.eps_from_score(net, object()), TypeError, "sde"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match):
            fn()
    bad = SDES["vp"]()
    bad.default_conditioning = "time"
    with pytest.raises(ValueError, match="default_conditioning"):
        ss.ScoreModel(net, bad)
