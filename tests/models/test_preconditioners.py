"""Preconditioner classes: each class's closed forms agree with the EDM-table derivation from its
scalings, and EDM's preconditioning gives the exact score of Gaussian data with a zero network."""
import pytest
import torch
from torch import nn

import scoresde as ss
from scoresde.models.preconditioners import (NOISE_INPUTS, PRECONDITIONERS, EDMPrediction, Preconditioner,
                                             ScorePrediction)


def _inputs(seed=0, shape=(64, 3)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    out = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.rand(shape[0], generator=g, dtype=torch.float64) * 0.98 + 0.01
    return x, out, t


@pytest.mark.parametrize("sde", [ss.VPSDE(), ss.VESDE(), ss.SubVPSDE()], ids=["vp", "ve", "subvp"])
@pytest.mark.parametrize("precond", [PRECONDITIONERS["eps"](), ScorePrediction(False), ScorePrediction(True),
                                     PRECONDITIONERS["x0"](), PRECONDITIONERS["v"](), EDMPrediction(0.7)],
                         ids=["eps", "score", "score_scaled", "x0", "v", "edm"])
def test_closed_forms_match_the_scalings(sde, precond):
    """score, eps, x0 and v of every class equal the base class's derivation from (c_skip, c_out, c_in)."""
    x, out, t = _inputs()
    alpha, sigma = (v[:, None] for v in sde.marginal_coefs(t))
    for name in ("score", "eps", "x0", "v"):
        own = getattr(precond, name)(out, x, alpha, sigma)
        derived = getattr(Preconditioner, name)(precond, out, x, alpha, sigma)
        torch.testing.assert_close(own, derived, rtol=1e-10, atol=1e-10, msg=name)
    # the identities that tie them together
    x0, eps = precond.x0(out, x, alpha, sigma), precond.eps(out, x, alpha, sigma)
    torch.testing.assert_close(alpha * x0 + sigma * eps, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(precond.score(out, x, alpha, sigma), -eps / sigma, rtol=1e-10, atol=1e-10)


class _Zero(nn.Module):
    def forward(self, x, c):
        return torch.zeros_like(x)


@pytest.mark.parametrize("sde", [ss.VPSDE(), ss.VESDE(sigma_min=0.01, sigma_max=20.0)], ids=["vp", "ve"])
def test_edm_preconditioning_is_exact_for_gaussian_data_with_a_zero_network(sde):
    """Data N(0, s_d^2 I): E[x0 | x_t] = s_d^2 / (s_d^2 + s^2) x_t / alpha with s = sigma / alpha, which is
    EDM's c_skip term alone, so F = 0 is the optimal network and the score is exact."""
    sd = 0.6
    model = ss.ScoreModel(_Zero(), sde, parameterization=EDMPrediction(sigma_data=sd), conditioning="edm")
    data = ss.Gaussian(torch.zeros(2, dtype=torch.float64), torch.full((2,), sd, dtype=torch.float64))
    x, _, t = _inputs(1, (32, 2))
    torch.testing.assert_close(model(x, t), data.score(x, t, sde), rtol=1e-10, atol=1e-10)
    alpha, sigma = (v[:, None] for v in sde.marginal_coefs(t))
    torch.testing.assert_close(model.v(x, t), alpha * model.eps(x, t) - sigma * model.denoiser(x, t))
    assert model.config() == {"parameterization": "edm", "conditioning": "edm", "scale_by_sigma": False,
                              "sigma_data": sd}


def test_edm_noise_input_and_net_input_scaling():
    """c_noise = ln(sigma / alpha) / 4 and the network sees c_in x."""
    seen = {}

    class Spy(nn.Module):
        def forward(self, x, c):
            seen["x"], seen["c"] = x, c
            return torch.zeros_like(x)

    sde = ss.VESDE()
    model = ss.ScoreModel(Spy(), sde, parameterization="edm", conditioning="edm")
    x, _, t = _inputs(2, (8, 2))
    model(x, t)
    _, sigma = sde.marginal_coefs(t)
    torch.testing.assert_close(seen["c"], torch.log(sigma) / 4)
    torch.testing.assert_close(seen["x"], x / (sigma.square() + 0.25).sqrt()[:, None])


def test_classic_names_build_the_classes_and_keep_their_config():
    sde = ss.VESDE()
    m = ss.ScoreModel(_Zero(), sde, parameterization="score")
    assert isinstance(m.precond, ScorePrediction) and m.precond.scale_by_sigma and m.scale_by_sigma
    assert m.config() == {"parameterization": "score", "conditioning": "log_sigma", "scale_by_sigma": True}
    m = ss.ScoreModel(_Zero(), sde, parameterization=ScorePrediction(False))
    assert not m.scale_by_sigma and m.config()["scale_by_sigma"] is False
    assert set(PRECONDITIONERS) >= {"eps", "score", "x0", "v", "edm"}
    assert set(NOISE_INPUTS) >= {"t", "log_sigma", "sigma", "timestep", "edm"}


def test_bad_preconditioner_arguments_name_the_argument():
    with pytest.raises(ValueError, match="sigma_data"):
        EDMPrediction(sigma_data=0.0)
    with pytest.raises(TypeError, match="parameterization"):
        ss.ScoreModel(_Zero(), ss.VPSDE(), parameterization=3)
    with pytest.raises(ValueError, match="parameterization"):
        ss.ScoreModel(_Zero(), ss.VPSDE(), parameterization="velocity")
    with pytest.raises(ValueError, match="scale_by_sigma"):
        ss.ScoreModel(_Zero(), ss.VESDE(), parameterization=ScorePrediction(True), scale_by_sigma=False)
