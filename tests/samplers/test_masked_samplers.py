"""Masked discrete diffusion against enumeration on a tiny vocabulary and length: the masking process, the
NELBO (exact value, bound, unbiased estimators), and the samplers driven by exact denoisers."""
import math

import pytest
import torch

from scoresde.discrete import MaskedProcess, sample_llada, sample_mdlm
from scoresde.evaluation.token_exact import (ExactDenoiser, SupportDenoiser, all_sequences, empirical_law, exact_nelbo,
                                             model_nll, sequence_index, subset_logprobs, total_variation)

V, L = 3, 3


def law():
    """A correlated law over {0,1,2}^3 (some sequences impossible): a product of marginals is far from it."""
    g = torch.Generator().manual_seed(1)
    p = torch.rand(V ** L, generator=g, dtype=torch.float64) ** 3
    p[::4] = 0
    return p / p.sum()


class TableDenoiser:
    """An inexact denoiser: arbitrary fixed logits for each partially masked state."""

    def __init__(self, seed=2):
        self.table = 2 * torch.randn((V + 1) ** L, L, V, generator=torch.Generator().manual_seed(seed),
                                     dtype=torch.float64)

    def __call__(self, xt, t):
        return self.table[sequence_index(xt, V + 1)]


def sample_tv(sampler, denoiser, target, n=20000, x=None, seed=0, **kw):
    x = torch.full((n, L), V) if x is None else x
    out = sampler(denoiser, x, MaskedProcess(V), generator=torch.Generator().manual_seed(seed), **kw)
    return total_variation(empirical_law(out, V), target), out


# --- the process ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_each_token_is_masked_independently_with_probability_1_minus_alpha(schedule):
    proc = MaskedProcess(V, schedule)
    x0 = torch.randint(0, V, (20000, 8), generator=torch.Generator().manual_seed(0))
    for t in (0.0, 0.3, 0.8, 1.0):
        tt = torch.full((len(x0),), t)
        xt = proc.corrupt(x0, tt, torch.Generator().manual_seed(1))
        m = (xt == V).double()
        p = float(proc.mask_prob(torch.tensor(t, dtype=torch.float64)))
        assert torch.equal(torch.where(xt == V, x0, xt), x0)                # unmasked tokens are kept
        assert abs(m.mean() - p) < 4 * math.sqrt(p * (1 - p) / m.numel()) + 1e-12
        # independence: the mask count per row is Binomial(8, p)
        assert abs(m.sum(1).var() - 8 * p * (1 - p)) < 0.1 + 1e-12
    assert float(proc.mask_prob(torch.tensor(0.0))) == 0 and float(proc.mask_prob(torch.tensor(1.0))) == 1


def test_schedule_weights_and_stratified_times():
    t = torch.linspace(0.05, 1, 20, dtype=torch.float64)
    lin, cos = MaskedProcess(V, "linear").schedule, MaskedProcess(V, "cosine").schedule
    torch.testing.assert_close(lin.weight(t), 1 / t)                              # w(t) = 1/t (LLaDA eq. 3)
    h = 1e-6                                                                      # -alpha' / (1 - alpha) numerically
    num = -(cos.alpha(t + h) - cos.alpha(t - h)) / (2 * h) / (1 - cos.alpha(t))
    torch.testing.assert_close(cos.weight(t), num, rtol=1e-6, atol=1e-6)
    for s in (lin, cos):
        torch.testing.assert_close(s.t_of_alpha(s.alpha(t)), t)
    proc = MaskedProcess(V, eps=0.01)
    ts = proc.sample_t(64, generator=torch.Generator().manual_seed(0)).double().sort().values
    k = torch.arange(64, dtype=torch.float64)
    assert ((ts >= 0.01 + 0.99 * k / 64 - 1e-6) & (ts <= 0.01 + 0.99 * (k + 1) / 64 + 1e-6)).all()


# --- the bound ------------------------------------------------------------------------------------------------
def test_nelbo_of_the_exact_denoiser_is_the_exact_nll():
    p = law()
    den, x = ExactDenoiser(p, V, L), all_sequences(V, L)
    ok = p > 0
    nll = -p.log() / L
    torch.testing.assert_close(exact_nelbo(den, x, V)[ok], nll[ok], rtol=0, atol=1e-10)
    torch.testing.assert_close(model_nll(den, x, V)[ok], nll[ok], rtol=0, atol=1e-10)


def test_nelbo_bounds_the_exact_nll_of_an_inexact_model():
    den, x = TableDenoiser(), all_sequences(V, L)
    bound, nll = exact_nelbo(den, x, V), model_nll(den, x, V)
    assert abs(float(torch.exp(-L * nll).sum()) - 1) < 1e-10                      # p_theta is a distribution
    gap = bound - nll
    assert (gap >= -1e-12).all() and gap.max() > 0.05, gap                        # Jensen: NELBO >= NLL
    one = TableDenoiser()                                                         # L = 1: the bound is exact
    x1 = torch.arange(V)[:, None]
    one.table = torch.randn(V + 1, 1, V, dtype=torch.float64)
    d1 = lambda xt, t: one.table[xt[:, 0]]                                         # noqa: E731
    torch.testing.assert_close(exact_nelbo(d1, x1, V), model_nll(d1, x1, V))


@pytest.mark.parametrize("how", ["count", "time", "loss-linear", "loss-cosine", "loss-count"])
def test_monte_carlo_bounds_are_unbiased(how):
    den, x = TableDenoiser(), all_sequences(V, L)
    exact = exact_nelbo(den, x, V)
    xs = x.repeat(3000, 1)
    g = torch.Generator().manual_seed(3)
    if how == "loss-count":          # the count estimator of the training loss
        est = MaskedProcess(V).loss(den, xs, estimator="count", generator=g, reduce=False)
    elif how.startswith("loss"):     # the training loss with eps = 0 estimates the same integral
        est = MaskedProcess(V, how.split("-")[1], eps=0.0).loss(den, xs, generator=g, reduce=False)
    else:
        est = MaskedProcess(V).nelbo(den, xs, estimator=how, generator=g)
    est = est.double().reshape(3000, -1)
    z = (est.mean(0) - exact) / (est.std(0) / math.sqrt(3000))
    assert z.abs().max() < 4.5, z


def test_loss_truncated_at_eps_is_close_to_the_bound():
    den, x = TableDenoiser(), all_sequences(V, L)
    est = MaskedProcess(V, eps=1e-3).loss(den, x.repeat(3000, 1), generator=torch.Generator().manual_seed(4),
                                          reduce=False).double()
    assert abs(float(est.mean() - exact_nelbo(den, x, V).mean())) < 4 * float(est.std()) / math.sqrt(len(est)) + 0.01


def test_count_estimator_has_lower_variance_than_time():
    """Both estimate the same bound; the count estimator's weights 1/l <= 1 (against w(t) = 1/t up to 1/eps)
    give a much smaller variance per sequence: the reason it is the default training loss."""
    den, x = TableDenoiser(), all_sequences(V, L).repeat(2000, 1)
    var = {est: float(MaskedProcess(V).loss(den, x, estimator=est, generator=torch.Generator().manual_seed(0),
                                            reduce=False).double().var()) for est in ("time", "count")}
    assert var["count"] < var["time"] / 3, var


def test_support_denoiser_equals_the_table_denoiser():
    """The exact denoiser computed against the support (for long sequences) is the enumerated table."""
    p = law()
    keep = p > 0
    sup = SupportDenoiser(all_sequences(V, L)[keep], p[keep], V, chunk=7)
    states = all_sequences(V + 1, L)
    assert torch.allclose(sup(states, None), ExactDenoiser(p, V, L)(states, None), atol=1e-12)
    with pytest.raises(ValueError, match="summing to 1"):
        SupportDenoiser(all_sequences(V, L)[keep], p[keep] * 2, V)


# --- samplers with exact denoisers -----------------------------------------------------------------------------
@pytest.mark.parametrize("sampler,kw", [(sample_llada, dict(steps=L, remasking="random")),
                                        (sample_llada, dict(steps=L, remasking="random", block_length=1)),
                                        (sample_mdlm, dict(steps=128))])
def test_one_token_per_step_reproduces_the_law(sampler, kw):
    """Exact denoiser: the data law (in any order). An inexact one: p_theta, the law whose NLL `model_nll`
    enumerates (uniformly random order), or with blocks of 1 the left-to-right chain of its conditionals."""
    p = law()
    tv, _ = sample_tv(sampler, ExactDenoiser(p, V, L), p, **kw)
    assert tv < 0.025, tv
    den, x = TableDenoiser(), all_sequences(V, L)
    if kw.get("block_length") == 1:           # prod_i p_theta(x_i | x_<i visible): visible set 2^i - 1
        lp = subset_logprobs(den, x, V)
        p_theta = torch.exp(sum(lp[:, 2 ** i - 1, i] for i in range(L)))
    else:
        p_theta = torch.exp(-L * model_nll(den, x, V))
    tv, _ = sample_tv(sampler, den, p_theta, **kw)
    assert tv < 0.025, tv


def test_several_tokens_per_step_error_is_reported(capsys):
    """All tokens in one step give the product of the marginals, not the law; the error shrinks with steps.
    Confidence-ordered remasking is biased even with one token per step; entropy ordering (the default), which
    does not look at the drawn tokens, is exact with one token per step."""
    p = law()
    den = ExactDenoiser(p, V, L)
    marg = [torch.stack([p.reshape(V, V, V).sum(dim=tuple(j for j in range(L) if j != i))[v] for v in range(V)])
            for i in range(L)]
    product = torch.einsum("a,b,c->abc", *marg).reshape(-1)
    rows = {}
    for steps in (1, 2, 3):
        rows[f"llada random, {steps} steps"] = sample_tv(sample_llada, den, p, steps=steps, remasking="random")[0]
        rows[f"llada low_confidence, {steps} steps"] = sample_tv(sample_llada, den, p, steps=steps,
                                                               remasking="low_confidence")[0]
        rows[f"llada entropy, {steps} steps"] = sample_tv(sample_llada, den, p, steps=steps)[0]
    for steps in (1, 4, 16, 64):
        rows[f"mdlm, {steps} steps"] = sample_tv(sample_mdlm, den, p, steps=steps)[0]
    with capsys.disabled():
        print("\nTV to the law with the exact denoiser (V = 3, L = 3, 20000 samples):")
        for k, v in rows.items():
            print(f"  {k:28s} {v:.4f}")
    exact_product = total_variation(product, p)
    assert abs(rows["llada random, 1 steps"] - exact_product) < 0.025 and exact_product > 0.2
    assert rows["llada random, 1 steps"] > rows["llada random, 2 steps"] > rows["llada random, 3 steps"] + 0.05
    assert rows["mdlm, 1 steps"] > rows["mdlm, 4 steps"] > rows["mdlm, 16 steps"] > rows["mdlm, 64 steps"]
    assert rows["llada low_confidence, 3 steps"] > 0.1
    assert rows["llada entropy, 3 steps"] < 0.025                     # sampling noise of 20000 draws


def test_prompts_and_infilling_stay_fixed_and_condition_the_law():
    p = law()
    den = ExactDenoiser(p, V, L)
    seqs = all_sequences(V, L)
    for pos, tok in ((0, 1), (1, 2)):                 # a prompt (prefix) and an infilled middle token
        x = torch.full((20000, L), V)
        x[:, pos] = tok
        cond = torch.where(seqs[:, pos] == tok, p, 0.0)
        cond = cond / cond.sum()
        for sampler, kw in ((sample_llada, dict(steps=L - 1, remasking="random")), (sample_mdlm, dict(steps=64)),
                            (sample_llada, dict(steps=2))):
            tv, out = sample_tv(sampler, den, cond, x=x, **kw)
            assert (out[:, pos] == tok).all()
            if kw.get("remasking") == "random" or sampler is sample_mdlm:
                assert tv < 0.025, (sampler.__name__, pos, tv)


def test_caching_skips_calls_and_changes_nothing():
    den = ExactDenoiser(law(), V, L)
    x = torch.full((500, L), V)
    out, n = {}, {}
    for cache in (True, False):
        stats = {}
        out[cache] = sample_mdlm(den, x, MaskedProcess(V), steps=200, cache=cache, stats=stats,
                                 generator=torch.Generator().manual_seed(5))
        n[cache] = stats
    assert torch.equal(out[True], out[False])
    assert n[True]["nfe_per_sequence"] <= L + 1e-9 < n[False]["nfe_per_sequence"] / 10


def test_seed_temperature_and_nfe():
    den = ExactDenoiser(law(), V, L)
    x = torch.full((300, L), V)
    run = lambda s, **kw: sample_llada(den, x, MaskedProcess(V), generator=torch.Generator().manual_seed(s), **kw)  # noqa
    assert torch.equal(run(0, steps=3), run(0, steps=3)) and not torch.equal(run(0, steps=3), run(1, steps=3))
    greedy = run(0, steps=3, temperature=0)
    assert torch.equal(greedy, run(1, steps=3, temperature=0)) and (greedy == greedy[0]).all()
    stats = {}
    sample_llada(den, x, MaskedProcess(V), steps=8, stats=stats)      # 3 tokens: 5 steps have nothing to reveal
    assert stats["nfe"] == 3


def test_bad_inputs_give_clear_errors():
    proc, den = MaskedProcess(V), ExactDenoiser(law(), V, L)
    with pytest.raises(ValueError, match="out of the vocabulary"):
        proc.loss(den, torch.tensor([[0, 1, 3]]))
    with pytest.raises(ValueError, match="out of the vocabulary"):
        proc.nelbo(den, torch.tensor([[0, -1, 2]]))
    with pytest.raises(TypeError, match="integer tensor"):
        proc.loss(den, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="out of the vocabulary"):
        sample_mdlm(den, torch.tensor([[0, 4, 3]]), proc, steps=4)
    for fn in (sample_mdlm, sample_llada):
        with pytest.raises(ValueError, match="steps: expected an int >= 1"):
            fn(den, torch.full((2, L), V), proc, steps=0)
        with pytest.raises(ValueError, match="temperature"):
            fn(den, torch.full((2, L), V), proc, steps=2, temperature=-1)
    with pytest.raises(ValueError, match="remasking"):
        sample_llada(den, torch.full((2, L), V), proc, steps=2, remasking="confident")
    with pytest.raises(ValueError, match="at least one step per block"):
        sample_llada(den, torch.full((2, L), V), proc, steps=2, block_length=1)
    with pytest.raises(KeyError, match="unknown masking schedule 'cubic'"):
        MaskedProcess(V, "cubic")
    with pytest.raises(ValueError, match="eps"):
        MaskedProcess(V, eps=1.0)
