"""The ReMDM remasking sampler and the confidence orderings (margin, order temperature) driven by exact denoisers:
what is left of the error is the sampler's own, apart from any model's."""
import pytest
import torch

from scoresde.discrete import MaskedProcess
from scoresde.evaluation.token_exact import ExactDenoiser, SupportDenoiser, empirical_law, total_variation
from scoresde.samplers.masked import DISCRETE_SAMPLERS, sample_llada, sample_remdm

from test_masked_default_sampler import L as BL, Texts, brackets_law

V, L = 3, 3


def law():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(V ** L, generator=g, dtype=torch.float64) ** 3
    p[::4] = 0
    return p / p.sum()


def tv_of(sampler, n=20000, **kw):
    p = law()
    out = sampler(ExactDenoiser(p, V, L), torch.full((n, L), V), MaskedProcess(V),
                  generator=torch.Generator().manual_seed(0), **kw)
    return total_variation(empirical_law(out, V), p)


@pytest.mark.parametrize("schedule,eta", [("cap", 0.3), ("rescale", 0.5)])
def test_remdm_with_the_exact_denoiser_reproduces_the_law(schedule, eta):
    """sigma_t <= sigma_max keeps the forward marginals; with small steps one token changes at a time, so the
    exact denoiser's chain gives the law (MDLM's 128-step error is of the same size)."""
    assert tv_of(sample_remdm, steps=256, eta=eta, schedule=schedule) < 0.03


def test_remdm_remasks_and_calls_once_per_step():
    p = law()
    den = ExactDenoiser(p, V, L)
    seen = []

    def spy(x, t):
        seen.append(((x == V).sum(1)).clone())
        return den(x, t)
    st = {}
    out = sample_remdm(spy, torch.full((500, L), V), MaskedProcess(V), steps=32, eta=0.5, schedule="cap",
                       generator=torch.Generator().manual_seed(0), stats=st)
    assert st["nfe"] == 32 and st["nfe_per_sequence"] == 32.0 and (out < V).all()
    counts = torch.stack(seen)                                      # masked counts per step: they go up sometimes
    assert bool((counts[1:] > counts[:-1]).any())
    st0 = {}
    plain = sample_remdm(den, torch.full((500, L), V), MaskedProcess(V), steps=32, eta=0.0,
                         generator=torch.Generator().manual_seed(0), stats=st0)
    assert (plain < V).all() and st0["nfe"] <= 32
    prompt = torch.full((50, L), V)
    prompt[:, 1] = 2
    kept = sample_remdm(den, prompt, MaskedProcess(V), steps=16, eta=1.0, generator=torch.Generator().manual_seed(0))
    assert (kept[:, 1] == 2).all()                                  # fixed tokens are never remasked


@pytest.mark.parametrize("kw", [dict(remasking="margin"), dict(remasking="entropy", order_temperature=0.5),
                                dict(remasking="low_confidence", order_temperature=1e6)])
def test_draw_independent_orderings_are_exact_with_one_token_per_step(kw):
    """Margin and entropy look only at the prediction, not at the drawn token: exact at one token per step, with
    or without Gumbel noise on the order; confidence ordering at a huge order temperature is a random order."""
    assert tv_of(sample_llada, steps=L, **kw) < 0.025


def test_order_temperature_moves_confidence_ordering_from_collapse_towards_the_law():
    p = law()
    tvs = [tv_of(sample_llada, steps=L, remasking="low_confidence", order_temperature=tau) for tau in (0.0, 0.05, 1e6)]
    assert tvs[0] > tvs[1] > tvs[2], tvs
    assert total_variation(p, p) == 0


def brackets_metrics(kw, n=256):
    seqs, probs, lang, tok = brackets_law()
    den, proc = SupportDenoiser(seqs, probs, tok.vocab_size), MaskedProcess(tok.vocab_size)
    kw = dict(kw)
    fn = DISCRETE_SAMPLERS[kw.pop("sampler")]
    st = {}
    x = fn(den, torch.full((n, BL), proc.mask_id), proc, generator=torch.Generator().manual_seed(0), stats=st, **kw)
    t = Texts(lang, tok)
    valid = t.is_valid(x)
    texts = t.decode(x)
    return sum(valid) / n, len({w for w, v in zip(texts, valid) if v}) / max(1, sum(valid)), st


def test_remasking_samplers_on_the_bracket_language_with_its_exact_denoiser():
    """The exact denoiser of brackets (depth <= 2, length <= 8): remdm at 64 steps with a small eta is valid (a few
    invalid from tokens revealed together, as MDLM) and as diverse as the data. A large sigma_t remasks many tokens
    and reveals many at once from their separate conditionals: the exact denoiser's samples get worse (the
    sampler's own error, which no model can fix). Margin ordering is exact at one token per step."""
    v, d, st = brackets_metrics({"sampler": "remdm", "steps": 64, "eta": 0.01})
    assert v >= 0.93 and d > 0.25 and st["nfe"] == 64, (v, d)
    v_big, _, _ = brackets_metrics({"sampler": "remdm", "steps": 64, "eta": 0.5, "schedule": "rescale"})
    assert v_big < v - 0.3, (v_big, v)
    v, d, st = brackets_metrics({"sampler": "remdm", "steps": 64, "eta": 0.02, "schedule": "conf"})
    assert v >= 0.9 and d > 0.25, (v, d)
    v, d, st = brackets_metrics({"sampler": "llada", "steps": BL, "remasking": "margin"})
    assert v == 1.0 and d > 0.25, (v, d)


def test_bad_remdm_and_ordering_options():
    x, proc = torch.full((2, L), V), MaskedProcess(V)
    den = ExactDenoiser(law(), V, L)
    with pytest.raises(ValueError, match="schedule: expected one of cap, rescale, conf"):
        sample_remdm(den, x, proc, steps=4, schedule="loop")
    with pytest.raises(ValueError, match="eta"):
        sample_remdm(den, x, proc, steps=4, eta=2.0)
    with pytest.raises(ValueError, match="eta"):
        sample_remdm(den, x, proc, steps=4, eta=-0.1, schedule="rescale")
    with pytest.raises(ValueError, match="t_on"):
        sample_remdm(den, x, proc, steps=4, t_on=1.5)
    with pytest.raises(ValueError, match="order_temperature"):
        sample_llada(den, x, proc, steps=4, order_temperature=-1)
    with pytest.raises(ValueError, match="remasking: expected one of entropy, low_confidence, margin, random"):
        sample_llada(den, x, proc, steps=4, remasking="top")
