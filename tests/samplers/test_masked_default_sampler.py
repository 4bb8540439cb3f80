"""The default sampler of a masked diffusion run is valid AND diverse, and every summary says both (issue 33).

LLaDA's confidence remasking (the previous default) orders the reveals by the probability of the drawn token:
with the exact denoiser of the brackets language it fills the sequences with EOS from the right and returns
the shortest string again and again, "100% valid" with 3% distinct. The default is now entropy remasking,
which orders the positions without looking at the drawn tokens (exact with one token per step).
"""
import itertools

import torch

from scoresde.data.languages import Brackets
from scoresde.data.tokenizer import EOS, CharTokenizer
from scoresde.evaluation.token_exact import SupportDenoiser
from scoresde.runs.plots import metrics_summary, sample_metrics, text_figure
from scoresde.samplers.masked import DISCRETE_SAMPLERS
from scoresde.sde.masked import MaskedProcess
from scoresde.training.config import resolve
from scoresde.training.tasks.masked import MaskedTask

MAX_DEPTH, MAX_LEN = 2, 8
L = MAX_LEN + 1


def brackets_law():
    """Every string of brackets(depth <= 2, length <= 8), EOS-padded to L = 9, with the data's probabilities (a
    uniform even length, then a uniform string of that length)."""
    lang, tok = Brackets(MAX_DEPTH, MAX_LEN), CharTokenizer("()[]")
    rows, probs, lengths = [], [], range(2, MAX_LEN + 1, 2)
    for n in lengths:
        words = ["".join(p) for p in itertools.product("()[]", repeat=n) if lang.is_valid("".join(p))]
        rows += [tok.encode(w) + [EOS] * (L - n) for w in words]
        probs += [1 / len(lengths) / len(words)] * len(words)
    return torch.tensor(rows), torch.tensor(probs, dtype=torch.float64), lang, tok


class Texts:
    """What `sample_metrics` reads of a token model: decode, is_valid, eos_id."""

    def __init__(self, lang, tok):
        self.lang, self.tok, self.eos_id = lang, tok, EOS

    def decode(self, x):
        return [self.tok.decode(r) for r in x.tolist()]

    def is_valid(self, x):
        return [EOS in r and self.lang.is_valid(self.tok.decode(r)) for r in x.tolist()]


def draw(kw, n=256):
    seqs, probs, lang, tok = brackets_law()
    den, proc = SupportDenoiser(seqs, probs, tok.vocab_size), MaskedProcess(tok.vocab_size)
    kw = dict(kw)
    fn = DISCRETE_SAMPLERS[kw.pop("sampler")]
    x = fn(den, torch.full((n, L), proc.mask_id), proc, generator=torch.Generator().manual_seed(0), **kw)
    return sample_metrics(Texts(lang, tok), x), x


def test_the_default_sampler_of_a_masked_run_is_valid_and_diverse_with_the_exact_denoiser():
    kw = MaskedTask(resolve({"task": "masked"}))._sample_kw()     # what `train --task masked` samples with
    assert kw["sampler"] == "llada" and kw["remasking"] == "entropy"
    m, _ = draw(kw)
    assert m["valid_fraction"] == 1.0                              # the exact denoiser, one token per step
    assert m["distinct_valid_fraction"] > 0.25                     # 0.36 measured; the data's law itself
    assert m["mean_length"] > 4                                    # the lengths 2..8 are uniform: mean 5
    collapsed, _ = draw({**kw, "remasking": "low_confidence"})     # the previous default
    assert collapsed["valid_fraction"] == 1.0 and collapsed["distinct_valid_fraction"] < 0.1
    assert collapsed["mean_length"] < 2.5                          # nearly every sample is "()" or "[]"


def test_every_summary_line_gives_distinct_among_valid_beside_validity():
    m, x = draw({"sampler": "llada", "steps": 16, "remasking": "low_confidence"}, n=64)
    line = metrics_summary(m)
    assert f"{100 * m['valid_fraction']:.1f}% valid" in line
    assert f"{100 * m['distinct_valid_fraction']:.1f}% distinct among valid" in line
    assert metrics_summary({"valid_fraction": 1.0}) == "100.0% valid"
    assert metrics_summary({"mode_weight_tv": 0.0123}) == "mode-weight TV 0.012"
    seqs, probs, lang, tok = brackets_law()
    texts, valid = Texts(lang, tok).decode(x), Texts(lang, tok).is_valid(x)
    fig = text_figure(texts, valid, title="brackets: 10 steps")
    shown = " ".join(t.get_text() for t in fig.texts)
    assert "% valid" in shown and "% distinct among valid" in shown and "32 of 64 samples shown" in shown


def test_the_masked_task_logs_distinct_among_valid_at_each_evaluation():
    task = MaskedTask(resolve({"task": "masked", "device": "cpu", "data": {"size": 50}}))
    task.prepare()
    assert task.eval_fields == ("bits_per_token", "valid_fraction", "distinct_valid_fraction")
