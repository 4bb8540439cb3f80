"""EDM's stochastic sampler (scoresde/samplers/edm.py) against exact scores of Gaussian data."""
import math

import pytest
import torch

import scoresde as ss
from problems import Gaussian, counting
from scoresde.samplers.core import SAMPLERS, check_sampler_options, estimate_sampling, sample
from scoresde.samplers.edm import churn_levels

# every registered SDE (its defaults), so the ones added later are covered too
SDES = {name: (lambda name=name: ss.get_sde(name)) for name in ss.sde.base.SDES}
SDES.update(vp=lambda: ss.VPSDE(0.1, 20.0), subvp=lambda: ss.SubVPSDE(0.1, 20.0), ve=lambda: ss.VESDE(0.01, 50.0))
DATA = Gaussian(torch.tensor([0.5, -1.0]), torch.tensor([0.3, 0.8]))


def _prior(sde, n=16, seed=0):
    return sde.prior_sampling((n, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("denoise", [True, False])
def test_no_churn_is_heun_exactly(sde_name, denoise):
    sde = SDES[sde_name]()
    x = _prior(sde)
    for kw in ({"steps": 7}, {"times": torch.linspace(sde.T, 1e-2, 6, dtype=torch.float64)}):
        heun = sample(sde, DATA.score_fn(sde), x_init=x, sampler="heun", denoise=denoise, **kw)
        edm = sample(sde, DATA.score_fn(sde), x_init=x, sampler="edm", denoise=denoise, S_churn=0.0,
                     generator=torch.Generator().manual_seed(5), **kw)
        assert torch.equal(heun, edm), kw
    # churn outside [S_tmin, S_tmax] is none either
    out = sample(sde, DATA.score_fn(sde), x_init=x, sampler="edm", steps=7, denoise=denoise, S_tmin=1e5, S_tmax=1e6)
    assert torch.equal(out, sample(sde, DATA.score_fn(sde), x_init=x, sampler="heun", steps=7, denoise=denoise))


@pytest.mark.parametrize("sde_name", list(SDES))
def test_churned_samples_have_the_data_moments(sde_name):
    """Gaussian data N(mu, diag s^2), exact score, churn everywhere (gamma = 0.1): the sample mean and variance
    within 4.5 standard errors of the truth (n = 20000); the churn does change the samples."""
    sde, n = SDES[sde_name](), 20000
    opts = dict(sampler="edm", steps=200, dtype=torch.float64, S_churn=20.0, S_tmin=0.0, S_tmax=math.inf)
    x = sample(sde, DATA.score_fn(sde), (n, 2), generator=torch.Generator().manual_seed(1), **opts)
    mu, s = DATA.means[0], DATA.stds[0]
    assert ((x.mean(0) - mu).abs() < 4.5 * s / math.sqrt(n)).all(), x.mean(0)
    var = x.var(0)
    assert ((var - s ** 2).abs() < 4.5 * s ** 2 * math.sqrt(2 / n)).all(), var
    x_T = _prior(sde, 256, 3)
    a = sample(sde, DATA.score_fn(sde), x_init=x_T, sampler="edm", steps=20, S_churn=0.0)
    b = sample(sde, DATA.score_fn(sde), x_init=x_T, sampler="edm", steps=20, S_churn=20.0,
               generator=torch.Generator().manual_seed(0))
    assert (a - b).abs().max() > 1e-2


def test_the_generator_makes_it_reproducible():
    sde = SDES["vp"]()
    runs = [sample(sde, DATA.score_fn(sde), (64, 2), sampler="edm", steps=10,
                   generator=torch.Generator().manual_seed(seed)) for seed in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("denoise", [True, False])
def test_nfe_is_the_number_of_score_calls(denoise):
    sde, info = SDES["ve"](), SAMPLERS["edm"]
    for steps in (1, 2, 5, 18):
        score = counting(DATA.score_fn(sde))
        _, out = sample(sde, score, (8, 2), sampler="edm", steps=steps, denoise=denoise, return_info=True,
                        generator=torch.Generator().manual_seed(0))
        assert out["nfe"] == score.calls == info.nfe(steps, denoise) == 2 * steps - 1, steps
        times = torch.linspace(sde.T, 1e-3, steps + 1, dtype=torch.float64)
        score = counting(DATA.score_fn(sde))
        sample(sde, score, (8, 2), sampler="edm", times=times, denoise=denoise,
               generator=torch.Generator().manual_seed(0))
        assert score.calls == info.grid_nfe(steps, denoise) == 2 * steps + (1 if denoise else -1)
    est = estimate_sampling(sde, DATA.score_fn(sde), (8, 2), sampler="edm", steps=18)
    assert est["nfe"] == 35                                   # EDM's 18 steps: 35 NFE


def test_churn_levels_follow_algorithm_2():
    sig = [80.0, 10.0, 1.0, 0.1, 0.01]
    # gamma = min(S_churn / N, sqrt 2 - 1) within [S_tmin, S_tmax]; the first level capped at sigma~_max = 80
    assert churn_levels(sig, 5, 80.0, 1.0, 0.05, 50.0) == [80.0, 10.0 * 1.2, 1.0 * 1.2, 0.1 * 1.2, 0.01]
    hat = churn_levels(sig, 4, 80.0, 100.0, 0.0, math.inf)
    assert hat == pytest.approx([80.0, 10 * math.sqrt(2), math.sqrt(2), 0.1 * math.sqrt(2)])


def test_churned_level_above_the_largest_is_clamped():
    """sigma~_hat beyond sigma~(T) is clamped there: the score is only ever called at times in [0, T]."""
    sde = ss.VPSDE(0.1, 20.0)
    seen = []
    score = lambda x, t: (seen.append(float(t.max())), DATA.score(x, t, sde))[1]
    times = torch.tensor([0.99, 0.5, 0.1, 1e-3], dtype=torch.float64)
    sample(sde, score, (4, 2), sampler="edm", times=times, S_churn=100.0, S_tmin=0.0, S_tmax=math.inf,
           generator=torch.Generator().manual_seed(0))
    assert max(seen) == pytest.approx(sde.T) and min(seen) > 0


@pytest.mark.parametrize("option, value, match", [
    ("S_churn", -1.0, "S_churn: expected a number >= 0"),
    ("S_noise", -0.5, "S_noise: expected a number >= 0"),
    ("S_tmin", float("nan"), "S_tmin: expected a number"),
    ("S_churn", math.inf, "S_churn: expected a number >= 0, finite"),
    ("rho", 0.0, "rho: expected"),
    ("schedule", "nope", "schedule: expected one of"),
])
def test_bad_options_name_the_argument(option, value, match):
    sde = SDES["vp"]()
    with pytest.raises(ValueError, match=match):
        sample(sde, DATA.score_fn(sde), (4, 2), sampler="edm", steps=3, **{option: value})


def test_tmin_above_tmax_and_wrong_types_are_refused():
    sde = SDES["vp"]()
    with pytest.raises(ValueError, match="S_tmin: expected <= S_tmax=1.0, found 2.0"):
        sample(sde, DATA.score_fn(sde), (4, 2), sampler="edm", steps=3, S_tmin=2.0, S_tmax=1.0)
    with pytest.raises(TypeError, match="S_churn: expected a number, found True"):
        sample(sde, DATA.score_fn(sde), (4, 2), sampler="edm", steps=3, S_churn=True)
    with pytest.raises(TypeError, match="option S_noise: expected a number"):
        check_sampler_options("edm", {"S_noise": "big"})
    assert check_sampler_options("edm", {"S_churn": 10, "S_tmax": math.inf}) == {"S_churn": 10, "S_tmax": math.inf}
