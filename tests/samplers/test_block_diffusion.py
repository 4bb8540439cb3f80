"""Block diffusion (BD3-LM) against enumeration on a tiny vocabulary and length: the vectorised x_t (+) x_0 pass,
the block NELBO (exact value, unbiased estimators), block size 1 = the exact autoregressive likelihood of the
same network, block size L = the masked diffusion model, the KV cache, and block-by-block sampling."""
import math

import pytest
import torch

from scoresde.discrete import MaskedProcess
from scoresde.evaluation.token_exact import (ExactDenoiser, SupportDenoiser, all_sequences, empirical_law,
                                             exact_block_nelbo, exact_nelbo, model_block_nll, total_variation)
from scoresde.models.token_model import BlockCache
from scoresde.nets import get_model
from scoresde.samplers.block import RecomputeState, sample_blocks, split_steps
from scoresde.sde.block_masked import BlockMaskedProcess, block_ranges

V, L = 3, 4


def law():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(V ** L, generator=g, dtype=torch.float64) ** 3
    p[::5] = 0
    return p / p.sum()


def net(block_size, seed=0):
    """A tiny block-causal transformer in float64 with a random (non-zero) head: an inexact denoiser."""
    torch.manual_seed(seed)
    n = get_model("seq_transformer", vocab_size=V + 1, num_outputs=V, seq_len=L, width=16, depth=2, heads=2,
                  block_size=block_size).double().eval().requires_grad_(False)
    torch.nn.init.normal_(n.head.weight, std=0.2)
    return n


def single(n):
    """The network on single sequences (block-causal mask, no x0): the denoiser of `exact_block_nelbo`."""
    return lambda xt, t: n(xt)


def cached_chain_nll(n, x):
    """(B,) -log prod_i p(x_i | x_<i) / L read one position at a time through the KV cache (block size 1)."""
    cache, total = BlockCache(n), torch.zeros(len(x), dtype=torch.float64)
    for i in range(L):
        logits = cache.denoise(torch.full((len(x), 1), V), None, i, i + 1)
        total -= torch.log_softmax(logits.double(), -1)[:, 0].gather(1, x[:, i:i + 1])[:, 0]
        cache.commit(x[:, i:i + 1], i, i + 1)
    return total / L


def test_block_ranges_and_step_split():
    assert block_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert block_ranges(10, 4, start=5) == [(5, 8), (8, 10)]
    assert split_steps(16, block_ranges(17, 4)) == [4, 4, 3, 4, 1] and sum(split_steps(64, block_ranges(17, 4))) == 64
    assert split_steps(2, block_ranges(17, 4)) == [1, 1, 1, 1, 1]                  # at least one step per block


@pytest.mark.parametrize("b", [1, 2, 3])
def test_vectorised_pass_equals_the_network_on_each_prefix_and_block(b):
    """Block k of forward(x_t, x0=x_0) = the network on (x_0 blocks < k, x_t block k) alone, for random masks."""
    n = net(b)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, V, (6, L), generator=g)
    xt = torch.where(torch.rand(6, L, generator=g) < 0.5, V, x0)
    out = n(xt, None, x0)
    for lo, hi in block_ranges(L, b):
        ref = n(torch.cat([x0[:, :lo], xt[:, lo:hi]], 1))[:, lo:hi]
        torch.testing.assert_close(out[:, lo:hi], ref, rtol=0, atol=1e-12)
    assert not torch.allclose(n(xt, None, x0), n(xt, None, (x0 + 1) % V)) or b >= L  # the clean prefix matters


def test_block_size_1_is_the_exact_autoregressive_likelihood():
    """With one position per block the only mask pattern masks it: the bound is the chain rule
    -sum_i log p_theta(x_i | x_<i) / L of the same network, with no Jensen gap. "Equal": the Monte Carlo
    estimator (deterministic here) and the enumeration agree with the chain read through the KV cache to float32
    rounding (the network's logits are float32; 1e-12 between the paths that share the float64 log-softmax), and exp(-L bound) sums to 1 over V^L: it is a likelihood."""
    n, x = net(1), all_sequences(V, L)
    mc = BlockMaskedProcess(V, 1).nelbo(lambda xt, t, x0: n(xt, None, x0), x).double()
    enum = exact_block_nelbo(single(n), x, V, 1)
    chain = cached_chain_nll(n, x)
    torch.testing.assert_close(enum, chain, rtol=0, atol=1e-12)
    torch.testing.assert_close(model_block_nll(single(n), x, V, 1), chain, rtol=0, atol=1e-12)
    torch.testing.assert_close(mc, chain, rtol=1e-6, atol=1e-6)
    assert abs(float(torch.exp(-L * chain).sum()) - 1) < 1e-10
    two = exact_block_nelbo(single(net(2)), x, V, 2)                         # block size 2: a bound, not a law
    assert float(torch.exp(-L * two).sum()) < 1 - 5e-4
    gap = two - model_block_nll(single(net(2)), x, V, 2)
    assert (gap > -1e-12).all() and gap.max() > 1e-4


def test_full_length_blocks_are_todays_masked_model():
    """block_size >= L: one block; the same weights give the bidirectional network's logits, so the bound is
    `exact_nelbo` of the plain masked diffusion model."""
    blocky, plain = net(L), net(0)
    plain.load_state_dict(blocky.state_dict())
    x = all_sequences(V, L)
    xt = torch.where(torch.rand(len(x), L, generator=torch.Generator().manual_seed(0)) < 0.5, V, x)
    torch.testing.assert_close(blocky(xt, None, x), plain(xt), rtol=0, atol=1e-12)
    torch.testing.assert_close(exact_block_nelbo(single(blocky), x, V, L), exact_nelbo(single(plain), x, V),
                               rtol=0, atol=1e-12)


def test_exact_denoiser_makes_every_block_bound_the_exact_nll():
    p = law()
    den, x = ExactDenoiser(p, V, L), all_sequences(V, L)
    ok = p > 0
    for b in (1, 2, 3, 4):
        torch.testing.assert_close(exact_block_nelbo(den, x, V, b)[ok], (-p.log() / L)[ok], rtol=0, atol=1e-10)


@pytest.mark.parametrize("b,estimator", [(1, "count"), (2, "count"), (3, "count"), (4, "count"), (2, "time"),
                                         (3, "time")])
def test_monte_carlo_block_bounds_are_unbiased(b, estimator):
    n, x = net(b), all_sequences(V, L)
    exact = exact_block_nelbo(single(n), x, V, b)
    xs = x.repeat(400, 1)
    den = lambda xt, t, x0: n(xt, None, x0)                                              # noqa: E731
    proc = BlockMaskedProcess(V, b, eps=0.0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        est = proc.loss(den, xs, estimator=estimator, generator=g, reduce=False).double().reshape(400, -1)
    err = (est.mean(0) - exact).abs() - 1e-6                       # float32 logits: 1e-6 of rounding
    assert (err < 4.5 * est.std(0) / math.sqrt(400)).all(), err
    with torch.no_grad():
        ev = proc.nelbo(den, xs[:81 * 25], estimator=estimator, generator=g).double().reshape(-1, len(x))
    assert float((ev.mean(0) - exact).abs().max()) < 6 * float(ev.std(0).max()) / math.sqrt(len(ev)) + 1e-6


def test_kv_cache_equals_recomputing_the_prefix():
    n = net(2)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, V, (5, L), generator=g)
    cache, full = BlockCache(n), RecomputeState(single(n), 5, L, V)
    for lo, hi in block_ranges(L, 2):
        for _ in range(2):                                      # two denoising calls per block
            xb = torch.where(torch.rand(5, hi - lo, generator=g) < 0.5, V, x0[:, lo:hi])
            torch.testing.assert_close(cache.denoise(xb, None, lo, hi), full.denoise(xb, None, lo, hi),
                                       rtol=0, atol=1e-12)
        cache.commit(x0[:, lo:hi], lo, hi)
        full.commit(x0[:, lo:hi], lo, hi)
    keep = torch.tensor([1, 3])
    cache2, full2 = BlockCache(n), RecomputeState(single(n), 5, L, V)
    cache2.commit(x0[:, :2], 0, 2)
    full2.commit(x0[:, :2], 0, 2)
    cache2.select(keep)
    full2.select(keep)
    xb = torch.full((2, 2), V)
    torch.testing.assert_close(cache2.denoise(xb, None, 2, 4), full2.denoise(xb, None, 2, 4), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="cache holds positions"):
        cache2.denoise(xb, None, 0, 2)


@pytest.mark.parametrize("b", [1, 2])
def test_block_sampling_draws_the_model_law(b):
    """One token per step (random order within a block): the exact denoiser gives the data law; the tiny network
    gives exp(-L model_block_nll), the law the block likelihood enumerates (block size 1: the chain rule)."""
    p = law()
    x = torch.full((20000, L), V)
    proc = MaskedProcess(V)
    st = {}
    out = sample_blocks(RecomputeState(ExactDenoiser(p, V, L), len(x), L, V), x, proc, block_size=b, steps=L,
                        sampler="llada", remasking="random", generator=torch.Generator().manual_seed(0), stats=st)
    assert total_variation(empirical_law(out, V), p) < 0.025
    assert st["nfe"] == L and st["nfe_per_sequence"] == L
    n = net(b)
    target = torch.exp(-L * model_block_nll(single(n), all_sequences(V, L), V, b))
    with torch.no_grad():
        out = sample_blocks(BlockCache(n), x, proc, block_size=b, steps=L, sampler="llada", remasking="random",
                            generator=torch.Generator().manual_seed(1))
    tv = total_variation(empirical_law(out, V), target)
    noise = 0.5 * float((target * (1 - target) / len(x)).sqrt().sum())      # E TV of 20000 exact draws, about
    assert tv < 1.5 * noise, (tv, noise)


def test_block_sampling_stops_rows_at_eos_and_keeps_a_prompt():
    """Rows leave the batch after a block with EOS (fewer calls per sequence than batched calls); every sample of
    the exact denoiser of a language with EOS is in its support; fixed prompt tokens are kept."""
    EOS, M = 0, 3                                                   # tokens 0 (EOS), 1, 2
    words = [[1, 0, 0, 0, 0, 0], [1, 2, 0, 0, 0, 0], [2, 2, 1, 2, 0, 0], [1, 1, 2, 2, 1, 0]]
    seqs = torch.tensor(words)
    den = SupportDenoiser(seqs, torch.full((4,), 0.25, dtype=torch.float64), 3)
    proc = MaskedProcess(3)
    x = torch.full((400, 6), M)
    st = {}
    out = sample_blocks(RecomputeState(den, 400, 6, M), x, proc, block_size=2, steps=6, sampler="llada",
                        eos_id=EOS, generator=torch.Generator().manual_seed(0), stats=st)
    done = torch.where(out == M, EOS, out)
    assert all(r in words for r in done.tolist())
    assert st["nfe"] == 6 and st["nfe_per_sequence"] < 5                  # short rows stopped early
    x[:, 0] = 2                                                            # a prompt: the first token is 2
    out = sample_blocks(RecomputeState(den, 400, 6, M), x, proc, block_size=2, steps=6, sampler="remdm", eta=0.1,
                        eos_id=EOS, generator=torch.Generator().manual_seed(0))
    assert (torch.where(out == M, EOS, out) == torch.tensor(words[2])).all()
    with pytest.raises(ValueError, match="llada, remdm or mdlm"):
        sample_blocks(RecomputeState(den, 4, 6, M), x[:4], proc, block_size=2, steps=6, sampler="euler")
    with pytest.raises(ValueError, match="block_length"):
        sample_blocks(RecomputeState(den, 4, 6, M), x[:4], proc, block_size=2, steps=6, block_length=2)


def test_block_network_and_process_checks():
    with pytest.raises(ValueError, match="block_size"):
        get_model("seq_transformer", vocab_size=4, seq_len=4, width=16, heads=2, block_size=2, time_conditioning=True)
    with pytest.raises(ValueError, match="x0"):
        net(0)(torch.zeros(1, L, dtype=torch.long), None, torch.zeros(1, L, dtype=torch.long))
    with pytest.raises(ValueError, match="KV cache"):
        BlockCache(net(0))
    with pytest.raises(ValueError, match="block_size"):
        BlockMaskedProcess(V, 0)
    with pytest.raises(ValueError, match="one time per block"):
        BlockMaskedProcess(V, 2).loss(lambda *a: None, torch.zeros(1, L, dtype=torch.long), t=torch.ones(1))
    assert BlockMaskedProcess(V, 2).config() == {"vocab_size": V, "schedule": "linear", "eps": 1e-3, "block_size": 2}
