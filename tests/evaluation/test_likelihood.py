"""Probability-flow log-likelihoods against exact densities, Hutchinson's estimator against the
exact divergence, and bits/dim against closed forms (Song et al. 2021, App. D.2)."""
import math

import pytest
import torch

import scoresde as ss
from scoresde.evaluation.likelihood import (dataset_likelihood, dequantize, exact_divergence, hutchinson_divergence,
                                            log_likelihood)
from problems import Gaussian, four_mode_mixture

EPS = 1e-5


def make(name):
    return {"vp": ss.VPSDE(), "subvp": ss.SubVPSDE(), "ve": ss.VESDE()}[name]


def mixture_points(n=200, seed=0):
    return four_mode_mixture().sample(n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_exact_divergence_matches_mixture_density(name):
    """Mean |log p - log p_eps| <= 0.01 nats at rtol = atol = 1e-5 with the exact score."""
    sde, mix = make(name), four_mode_mixture()
    x = mixture_points()
    score = mix.score_fn(sde)
    logp, info = sde.log_likelihood(score, x, divergence="exact", rtol=1e-5, atol=1e-5, eps=EPS,
                                    return_info=True)
    ref = mix.log_prob(x, EPS, sde)
    assert logp.shape == (200,) and logp.dtype == torch.float64
    err = (logp - ref).abs().mean().item()
    assert err <= 0.01, err
    assert info["nfe"] == score.nfe and info["steps"] > 0 and info["z"].shape == x.shape
    torch.testing.assert_close(info["prior_logp"] + info["delta_logp"], logp)
    # the prior term is the prior's log density at the end point x(T)
    torch.testing.assert_close(info["prior_logp"], sde.prior_logp(info["z"]))


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_rank4_gaussian_data(name):
    """(B, 1, 2, 2) Gaussian data: shapes work and the value matches the exact log density."""
    sde = make(name)
    g = torch.Generator().manual_seed(3)
    mean = 0.5 * torch.randn(1, 2, 2, generator=g, dtype=torch.float64)
    std = 0.3 + torch.rand(1, 2, 2, generator=g, dtype=torch.float64)
    data = Gaussian(mean, std)
    x = data.sample(64, generator=g)
    assert x.shape == (64, 1, 2, 2)
    logp, info = log_likelihood(sde, data.score_fn(sde), x, eps=EPS, return_info=True)
    assert logp.shape == (64,) and info["z"].shape == x.shape
    ref = data.log_prob(x, EPS, sde)
    assert (logp - ref).abs().mean() <= 0.01
    # the end point is the exact flow map, and swapping the prior for the exact p_T removes the
    # prior mismatch, leaving only the solver error
    T = sde.T
    torch.testing.assert_close(info["z"], data.flow_map(x, EPS, T, sde), rtol=0, atol=1e-3 * sde.prior_std)
    exact_T = logp - info["prior_logp"] + data.log_prob(info["z"], T, sde)
    assert (exact_T - ref).abs().max() <= 1e-3
    # float32 stays float32 and agrees to float32 accuracy
    logp32 = log_likelihood(sde, data.score_fn(sde), x.float(), eps=EPS)
    assert logp32.dtype == torch.float32
    assert (logp32.double() - logp).abs().max() <= 1e-3


@pytest.mark.parametrize("batched", [True, False])
def test_exact_divergence_is_the_trace(batched):
    """For f(x) = A x (per sample, rank-4 data) the divergence is trace(A)."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(12, 12, generator=g, dtype=torch.float64)
    x = torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    fx = (x.flatten(1) @ A.T).reshape(x.shape) + x.square()           # + sum 2 x_i on the diagonal
    div = exact_divergence(fx, x, batched=batched)
    ref = torch.trace(A) + 2 * x.detach().flatten(1).sum(1)
    torch.testing.assert_close(div, ref)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    """At fixed (x, t), the mean over many probes of eps^T J eps is the exact divergence (3 SE)."""
    sde, mix = ss.VPSDE(), four_mode_mixture()
    flow = sde.reverse(mix.score_fn(sde), probability_flow=True)
    pts = torch.tensor([[0.1, -0.2], [0.9, 0.7], [-0.5, 0.4], [0.0, 0.0]], dtype=torch.float64)
    t, n = 0.3, 4000
    x = pts.repeat(n, 1).requires_grad_(True)                           # (n * 4, 2)
    fx, _ = flow.sde(x, t)
    exact = exact_divergence(fx, x)[:4]
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype) if probe == "gaussian" else \
        torch.randint(0, 2, x.shape, generator=gen).to(x.dtype) * 2 - 1
    est = hutchinson_divergence(fx, x, v).detach().reshape(n, 4)
    mean, se = est.mean(0), est.std(0) / math.sqrt(n)
    assert (se > 0).all()                                                # the estimates do vary
    assert ((mean - exact).abs() <= 3 * se).all(), (mean, exact, se)


def test_hutchinson_log_likelihood_averages_to_exact():
    """log p with one Rademacher probe per solve, averaged over probes, is close to the exact one."""
    sde, mix = ss.SubVPSDE(), four_mode_mixture()
    x, copies = mixture_points(40, seed=2), 16
    exact = log_likelihood(sde, mix.score_fn(sde), x)
    est = log_likelihood(sde, mix.score_fn(sde), x.repeat(copies, 1), divergence="hutchinson",
                         generator=torch.Generator().manual_seed(0)).reshape(copies, 40)
    diff = est - exact                                                   # (copies, 40)
    assert diff.std() > 1e-3                                             # one probe is noisy...
    assert diff.mean().abs() <= 3 * diff.std() / math.sqrt(diff.numel()) + 1e-3
    assert diff.mean(0).abs().mean() <= 0.05                             # ...the average is not


def test_hutchinson_generator_and_probes():
    sde, mix = ss.VESDE(), four_mode_mixture()
    x = mixture_points(20)
    run = lambda seed, probe="rademacher": log_likelihood(  # noqa: E731
        sde, mix.score_fn(sde), x, divergence="hutchinson", probe=probe,
        generator=torch.Generator().manual_seed(seed), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    assert not torch.equal(run(0), run(0, "gaussian"))


def test_grad_contexts_and_info():
    """no_grad / inference_mode do not stop the divergence; nfe counts score calls."""
    sde, mix = ss.VPSDE(), four_mode_mixture()
    x = mixture_points(20)
    ref = sde.log_likelihood(mix.score_fn(sde), x)
    with torch.no_grad():
        a = sde.log_likelihood(mix.score_fn(sde), x)
    with torch.inference_mode():
        b = sde.log_likelihood(mix.score_fn(sde), x.clone())
    torch.testing.assert_close(a, ref), torch.testing.assert_close(b, ref)
    assert not ref.requires_grad
    score = mix.score_fn(sde)
    _, loose = sde.log_likelihood(score, x, rtol=1e-2, atol=1e-2, return_info=True)
    _, tight = sde.log_likelihood(score, x, rtol=1e-7, atol=1e-7, return_info=True)
    assert loose["nfe"] < tight["nfe"] and score.nfe == loose["nfe"] + tight["nfe"]


@pytest.mark.parametrize("kwargs, exc, word", [
    ({"divergence": "trace"}, ValueError, "divergence"),
    ({"probe": "uniform"}, ValueError, "probe"),
    ({"rtol": 0.0}, ValueError, "rtol"),
    ({"rtol": 2.0}, ValueError, "rtol"),
    ({"atol": -1e-5}, ValueError, "atol"),
    ({"atol": "1e-5"}, TypeError, "atol"),
    ({"eps": 0.0}, ValueError, "eps"),
    ({"eps": 1.5}, ValueError, "eps"),
    ({"generator": 3}, TypeError, "generator"),
])
def test_validation(kwargs, exc, word):
    sde, mix = ss.VPSDE(), four_mode_mixture()
    with pytest.raises(exc, match=word):
        log_likelihood(sde, mix.score_fn(sde), mixture_points(4), **kwargs)


@pytest.mark.parametrize("x, exc", [
    ([[0.0, 1.0]], TypeError),
    (torch.zeros(4, 2, dtype=torch.long), ValueError),
    (torch.zeros(4), ValueError),
    (torch.tensor([[0.0, float("nan")]]), ValueError),
])
def test_validation_of_x(x, exc):
    sde = ss.VPSDE()
    with pytest.raises(exc, match="x"):
        sde.log_likelihood(lambda x, t: -x, x)
    with pytest.raises(TypeError, match="score_fn"):
        log_likelihood(sde, None, torch.zeros(2, 2))


# --- bits/dim ------------------------------------------------------------------------------------
@pytest.mark.parametrize("lo, hi", [(0.0, 1.0), (-1.0, 1.0), (0.0, 255.0)])
def test_uniform_density_is_n_bits(lo, hi):
    """The uniform density on the data range, 1 / (hi - lo) per dimension, gives exactly n bits/dim."""
    x = torch.zeros(3, 3, 4, 4, dtype=torch.float64)
    D = 48
    logp = torch.full((3,), -D * math.log(hi - lo), dtype=torch.float64)
    torch.testing.assert_close(ss.bits_per_dim(logp, x, data_range=(lo, hi)), torch.full((3,), 8.0, dtype=torch.float64))
    torch.testing.assert_close(ss.bits_per_dim(logp, D, n_bits=5, data_range=(lo, hi)),
                               torch.full((3,), 5.0, dtype=torch.float64))


def test_bits_per_dim_offsets():
    """score_sde: offset 8 for [0, 1] data and 7 for [-1, 1]; none without quantisation."""
    logp = torch.tensor([-3.0, 10.0], dtype=torch.float64)
    plain = -logp / (4 * math.log(2))
    torch.testing.assert_close(ss.bits_per_dim(logp, 4, n_bits=None), plain)
    torch.testing.assert_close(ss.bits_per_dim(logp, 4), plain + 8)
    torch.testing.assert_close(ss.bits_per_dim(logp, 4, data_range=(-1, 1)), plain + 7)
    with pytest.raises(ValueError, match="data_range"):
        ss.bits_per_dim(logp, 4, data_range=(1, 0))
    with pytest.raises(ValueError, match="n_bits"):
        ss.bits_per_dim(logp, 4, n_bits=0)


@pytest.mark.parametrize("lo, hi", [(0.0, 1.0), (-1.0, 1.0)])
def test_bits_per_dim_of_quantised_gaussian(lo, hi):
    """8-bit data quantised from N(0.5, 0.1^2) on [0, 1]: bits/dim of the dequantised data under the
    Gaussian density equal the exact discrete entropy -log2 P(k) / D (cell probabilities by erf)."""
    g = torch.Generator().manual_seed(0)
    mu, s, n, D = 0.5, 0.1, 20000, 2
    u = (mu + s * torch.randn(n, D, generator=g, dtype=torch.float64)).clamp(0, 1 - 1e-9)
    k = torch.floor(u * 256)
    Phi = lambda v: 0.5 * (1 + torch.erf((v - mu) / (s * math.sqrt(2))))  # noqa: E731
    nll_bits = -torch.log2(Phi((k + 1) / 256) - Phi(k / 256)).sum(1) / D  # exact discrete NLL (bits/dim)
    x = dequantize(lo + (hi - lo) * k / 255, data_range=(lo, hi), generator=g)  # from ToTensor's k / 255
    assert torch.equal(torch.floor((x - lo) / (hi - lo) * 256), k)          # stays in its cell
    scale = hi - lo                                                     # density of x = lo + scale u
    logp = (-0.5 * ((x - lo) / scale - mu).square() / s ** 2 - math.log(s * math.sqrt(2 * math.pi) * scale)).sum(1)
    bpd = ss.bits_per_dim(logp, x, data_range=(lo, hi))
    assert abs(bpd.mean().item() - nll_bits.mean().item()) < 2e-3, (bpd.mean(), nll_bits.mean())


def test_dataset_likelihood():
    """Batched driver: per-sample nats as log_likelihood's, bits/dim summary, module eval mode restored."""
    sde, mix = ss.VPSDE(), four_mode_mixture()
    x = mixture_points(30, seed=5)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

        def forward(self, x, t):
            return self.w * mix.score(x, t, sde)

    model = Model().train()
    out = dataset_likelihood(model, sde, x.float(), batch_size=16, divergence="exact")
    assert model.training and out["nats"].shape == (30,) and out["nats"].dtype == torch.float64
    assert (out["nats"] - mix.log_prob(x, EPS, sde)).abs().mean() <= 0.01
    torch.testing.assert_close(out["bpd"], ss.bits_per_dim(out["nats"], x, n_bits=None))
    assert out["mean_bpd"] == pytest.approx(out["bpd"].mean().item())
    assert out["stderr_bpd"] == pytest.approx(out["bpd"].std().item() / math.sqrt(30))
    assert out["nfe"] > 0
    with pytest.raises(ValueError, match="batch_size"):
        dataset_likelihood(model, sde, x, batch_size=0)


def test_dataset_bits_per_dim_of_quantised_gaussian():
    """End to end: 8-bit data on [-1, 1] from N(0, 0.25^2 I); with the exact score, the bits/dim of the
    dequantised data equal the exact discrete entropy -log2 P(k) / D (cell probabilities by erf)."""
    sde, s, D, n = ss.VPSDE(), 0.25, 2, 200
    data = Gaussian(torch.zeros(D, dtype=torch.float64), torch.full((D,), s, dtype=torch.float64))
    g = torch.Generator().manual_seed(7)
    u = ((1 + s * torch.randn(n, D, generator=g, dtype=torch.float64)) / 2).clamp(0, 1 - 1e-9)
    k = torch.floor(u * 256)                                            # 8-bit levels of (x + 1) / 2
    Phi = lambda v: 0.5 * (1 + torch.erf(v / (s * math.sqrt(2))))      # noqa: E731  CDF of x
    nll_bits = -torch.log2(Phi((k + 1) / 128 - 1) - Phi(k / 128 - 1)).sum(1) / D
    out = dataset_likelihood(data.score_fn(sde), sde, 2 * k / 255 - 1, batch_size=100, divergence="exact",
                             n_bits=8, data_range=(-1, 1), generator=g)
    assert abs(out["mean_bpd"] - nll_bits.mean().item()) < 0.01, (out["mean_bpd"], nll_bits.mean())


def test_levels_not_a_power_of_two():
    """17 levels (digits, 0..16 scaled to [-1, 1]): uniform density gives log2(17) bits/dim and
    dequantisation keeps each value in its own cell."""
    logp = torch.full((2,), -64 * math.log(2.0), dtype=torch.float64)
    torch.testing.assert_close(ss.bits_per_dim(logp, 64, levels=17, data_range=(-1, 1)),
                               torch.full((2,), math.log2(17), dtype=torch.float64))
    k = torch.arange(17, dtype=torch.float64).repeat(3, 1)
    x = dequantize(k / 8 - 1, levels=17, data_range=(-1, 1), generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.floor((x + 1) / 2 * 17), k)
