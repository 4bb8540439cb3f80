"""Preconditioner classes: each class's closed forms agree with the EDM-table derivation from its
scalings, and EDM's preconditioning gives the exact score of Gaussian data with a zero network."""
import pytest
import torch
from torch import nn

import scoresde as ss
from scoresde.models.preconditioners import (NOISE_INPUTS, PRECONDITIONERS, EDMPrediction, FlowPrediction,
                                             Preconditioner, ScorePrediction)


def _inputs(seed=0, shape=(64, 3)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    out = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.rand(shape[0], generator=g, dtype=torch.float64) * 0.98 + 0.01
    return x, out, t


@pytest.mark.parametrize("sde", [ss.VPSDE(), ss.VESDE(), ss.SubVPSDE(), ss.FlowSDE(), ss.EDMSDE()],
                         ids=["vp", "ve", "subvp", "flow", "edm"])
@pytest.mark.parametrize("precond", [PRECONDITIONERS["eps"](), ScorePrediction(False), ScorePrediction(True),
                                     PRECONDITIONERS["x0"](), PRECONDITIONERS["v"](), FlowPrediction(),
                                     EDMPrediction(0.7)],
                         ids=["eps", "score", "score_scaled", "x0", "v", "flow", "edm"])
def test_closed_forms_match_the_scalings(sde, precond):
    """score, eps, x0 and v of every class equal the base class's derivation from (c_skip, c_out, c_in)."""
    x, out, t = _inputs()
    alpha, sigma = (v[:, None] for v in sde.marginal_coefs(t))
    for name in ("score", "eps", "x0", "v", "u"):
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
    assert set(PRECONDITIONERS) >= {"eps", "score", "x0", "v", "flow", "edm"}
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


# --- the velocity ("flow") parameterisation -------------------------------------------------------------
def test_flow_scalings_are_the_closed_forms_of_a_velocity_network():
    """F = u = z - x0: x = alpha x0 + sigma z = (alpha + sigma) x0 + sigma u, so D = (x - sigma u) / (alpha + sigma):
    c_skip = 1 / (alpha + sigma), c_out = -sigma / (alpha + sigma); the input x / (alpha + sigma)."""
    g = torch.Generator().manual_seed(3)
    x0, z = (torch.randn(16, 3, generator=g, dtype=torch.float64) for _ in range(2))
    for sde in (ss.VPSDE(), ss.VESDE(), ss.FlowSDE(), ss.EDMSDE()):
        t = torch.rand(16, generator=g, dtype=torch.float64) * 0.9 * sde.T + 0.05 * sde.T
        a, s = (v[:, None] for v in sde.marginal_coefs(t))
        x, u = a * x0 + s * z, z - x0                       # the exact velocity of this (x0, z) pair
        p = FlowPrediction()
        c_skip, c_out, c_in = p.scalings(a, s)
        torch.testing.assert_close(c_skip, 1 / (a + s))
        torch.testing.assert_close(c_out, -s / (a + s))
        torch.testing.assert_close(c_in, 1 / (a + s))
        torch.testing.assert_close(p.x0(u, x, a, s), x0)
        torch.testing.assert_close(p.eps(u, x, a, s), z)
        torch.testing.assert_close(p.score(u, x, a, s), -z / s)
        torch.testing.assert_close(p.v(u, x, a, s), a * z - s * x0)
        torch.testing.assert_close(p.u(u, x, a, s), u)
        for other in ("eps", "x0", "v"):                    # each classic network's exact output gives the same u
            q = PRECONDITIONERS[other]()
            exact = {"eps": z, "x0": x0, "v": a * z - s * x0}[other]
            torch.testing.assert_close(q.u(exact, x, a, s), u)


def test_flow_path_denoiser_is_x_minus_t_u_and_finite_at_both_ends():
    """On the flow path D = x - t u and eps = x + (1 - t) u (alpha + sigma = 1); at t = 1 (alpha = 0) the
    velocity network still gives D = x - u, eps = x, score = -x; at t -> 0, D -> x and score ~ -u / t."""
    sde = ss.FlowSDE()
    g = torch.Generator().manual_seed(4)
    x, u = (torch.randn(8, 2, generator=g, dtype=torch.float64) for _ in range(2))
    p = FlowPrediction()
    for tv in (1.0, 1 - 1e-9, 0.5, 1e-6, 1e-12):
        t = torch.full((8,), tv, dtype=torch.float64)
        a, s = (v[:, None] for v in sde.marginal_coefs(t))
        D, eps, score = p.x0(u, x, a, s), p.eps(u, x, a, s), p.score(u, x, a, s)
        assert all(torch.isfinite(v).all() for v in (D, eps, score))
        torch.testing.assert_close(D, x - tv * u, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(eps, x + (1 - tv) * u, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(score, -(x + (1 - tv) * u) / tv, rtol=1e-12, atol=1e-12)
    # eps-prediction divides by alpha: infinite at t = 1 where the velocity form is not
    t1 = torch.ones(8, 1, dtype=torch.float64)
    assert not torch.isfinite(PRECONDITIONERS["eps"]().x0(u, x, 1 - t1, t1)).all()


def test_score_model_output_keyword_gives_each_prediction_through_forward():
    """model(x, t, output=...) equals the named method (what a loss calls through DDP); a bad name is refused."""
    sde = ss.FlowSDE()

    class Lin(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

        def forward(self, x, c):
            return self.w * x + c[:, None] / 1000

    model = ss.ScoreModel(Lin(), sde, parameterization="flow")
    x, _, t = _inputs(5, (8, 2))
    for name in ("eps", "x0", "v", "u"):
        torch.testing.assert_close(model(x, t, output=name), getattr(model, name)(x, t))
    torch.testing.assert_close(model(x, t, output="score"), model(x, t))
    with pytest.raises(ValueError, match="output"):
        model(x, t, output="velocity")
