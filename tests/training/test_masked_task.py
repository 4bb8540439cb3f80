"""Sequence models end to end: the transformers, tokenizers, token data and languages, the masked and
autoregressive tasks through the engine (resume, load) and the command line (train, sample, likelihood)."""
import itertools
import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import scoresde as ss
from scoresde.runs.checkpoint import read_checkpoint
from scoresde.cli.main import cli
from scoresde.data.tokens import load_tokens
from scoresde.data.languages import get_language
from scoresde.models.token_model import AutoregressiveLM, MaskedLM
from scoresde.data.tokenizer import CharTokenizer
from scoresde.nets import count_parameters, get_model
from problems import TESTS

HERE = str(TESTS)
TINY = {"task": "masked", "device": "cpu", "data": {"size": 300}, "model": {"width": 16, "depth": 1, "heads": 2},
        "train": {"steps": 12, "batch_size": 16, "log_every": 4, "ckpt_every": 6, "progress": False, "warmup": 2},
        "sample": {"n": 8, "steps": 4}, "eval": {"n": 8}, "discrete": {"seq_len": 9}}
TINY_ARGS = ["--device", "cpu", "--no-progress", "--steps", "6", "--batch-size", "8", "--set", "model.width=16",
             "--set", "model.depth=1", "--set", "model.heads=2", "--set", "sample.n=4", "--set", "sample.steps=4",
             "--set", "train.ckpt_every=3"]
TEXT = "the cat sat on the mat\nthe dog ate the hat\n\na cat and a dog\nthe mat is on the cat\n" * 5


def tiny(**sections):
    return {k: {**v, **sections.get(k, {})} if isinstance(v, dict) else sections.get(k, v) for k, v in TINY.items()}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(r, match):
    assert r.exit_code != 0, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and match in lines[0], r.stderr


# --- networks -----------------------------------------------------------------------------------------------
def test_bidirectional_and_causal_transformers():
    torch.manual_seed(0)
    kw = dict(vocab_size=6, num_outputs=5, seq_len=8, width=16, depth=2, heads=2)
    bi, causal = get_model("seq_transformer", **kw), get_model("causal_transformer", **kw)
    assert count_parameters(bi) == count_parameters(causal)
    for net in (bi, causal):
        torch.nn.init.normal_(net.head.weight)                     # the head starts at zero
    x = torch.randint(0, 6, (3, 8))
    y = x.clone()
    y[:, 5] = (y[:, 5] + 1) % 6                                     # change token 5
    for net, sees_later in ((bi, True), (causal, False)):
        a, b = net(x), net(y)
        assert a.shape == (3, 8, 5) and a.dtype == torch.float32
        assert (not torch.allclose(a[:, :5], b[:, :5])) == sees_later
        assert not torch.allclose(a[:, 5:], b[:, 5:])
    with torch.autocast("cpu", dtype=torch.bfloat16):                # the dtype mix of bf16 autocast (CUDA path)
        low = bi(x)
    assert low.dtype == torch.float32 and (low - bi(x)).abs().max() < 0.1 * bi(x).abs().max()
    learned = get_model("seq_transformer", **kw, positions="learned", time_conditioning=True)
    assert get_model("seq_transformer", **learned.config).config == learned.config
    assert learned(x, torch.rand(3)).shape == (3, 8, 5)
    with pytest.raises(ValueError, match="time-conditioned"):
        learned(x)
    with pytest.raises(ValueError, match="width"):
        get_model("seq_transformer", **{**kw, "width": 18, "heads": 4})
    with pytest.raises(TypeError, match="task"):
        get_model("seq_transformer", data_shape=(2,))               # the score task's arguments


# --- tokens, data and languages -----------------------------------------------------------------------------
def test_tokenizers_and_text_data(tmp_path):
    tok = CharTokenizer.from_text("hello world")
    assert tok.vocab_size == 1 + len(set("hello world")) and tok.decode(tok.encode("hello") + [0, 3]) == "hello"
    with pytest.raises(ValueError, match="'z' at position 1 is out of the vocabulary"):
        tok.encode("hz")
    byte = CharTokenizer(kind="byte")
    assert byte.vocab_size == 257 and byte.decode(byte.encode("é ok")) == "é ok"
    path = tmp_path / "t.txt"
    path.write_text("ab\n\nabc\n" + "b" * 12 + "\n")
    d = load_tokens(str(path), seq_len=5)
    assert d.x.tolist()[:2] == [[1, 2, 0, 0, 0], [1, 2, 3, 0, 0]] and len(d) == 2 + 3 and d.eos_id == 0
    assert [d.decode(r) for r in d.x[:2]] == ["ab", "abc"]
    assert load_tokens(str(path)).seq_len == 13                       # the longest line + EOS
    s = load_tokens(str(path), seq_len=4, text_mode="stream")
    assert s.eos_id is None and s.x.shape == (len("ab\n\nabc\n" + "b" * 12 + "\n") // 4, 4)
    np.save(tmp_path / "ids.npy", np.array([[0, 3, 1], [2, 2, 0]]))
    a = load_tokens(str(tmp_path / "ids.npy"), eos_id=0)
    assert a.vocab_size == 4 and a.decode(a.x[0]) == "" and a.decode(a.x[1]) == "2 2"
    for arr, match in ((np.zeros((2, 3)), "integer token ids"), (np.array([[0, -1]]), "out of the vocabulary"),
                       (np.arange(3), r"shape \(N, L\)")):
        np.save(tmp_path / "bad.npy", arr)
        with pytest.raises(ValueError, match=match):
            load_tokens(str(tmp_path / "bad.npy"))
    with pytest.raises(ValueError, match="out of the vocabulary"):
        load_tokens(str(tmp_path / "ids.npy"), vocab_size=3)
    with pytest.raises(ValueError, match="out of the vocabulary"):
        load_tokens(str(path), existing=CharTokenizer("ab"))
    with pytest.raises(FileNotFoundError, match="not a built-in language"):
        load_tokens("nope")


def test_languages_are_uniform_within_a_length_and_checked_exactly():
    lang = get_language("brackets", max_depth=2, max_len=6)
    drawn = lang.sample(30000, torch.Generator().manual_seed(0))
    for n in (2, 4, 6):
        valid = {"".join(p) for p in itertools.product("()[]", repeat=n) if lang.is_valid("".join(p))}
        seen = [s for s in drawn if len(s) == n]
        assert set(seen) == valid                                     # every valid string, nothing else
        counts = np.array([seen.count(v) for v in sorted(valid)])
        assert counts.std() / counts.mean() < 4 / np.sqrt(counts.mean())     # uniform within the length
    assert len(valid) == 2 ** 3 * 4                                   # depth <= 2: ((())) excluded: 5 - 1 shapes
    for bad in ("", "(]", "((((", "([)]", "((()))", "()()()()"):
        assert not lang.is_valid(bad)
    sums = get_language("sums", digits=2)
    assert all(map(sums.is_valid, sums.sample(200)))
    for bad in ("1+2=4", "01+2=3", "1+2=03", "100+1=101", "1+2", "1+2=3="):
        assert not sums.is_valid(bad)
    d = load_tokens("sums", size=10)
    assert d.seq_len == 3 * 2 + 3 + 1 and all(d.is_valid(r) for r in d.x)


# --- the tasks through the engine ---------------------------------------------------------------------------
def test_masked_run_resumes_exactly_loads_and_samples(tmp_path):
    full = ss.train(tiny(), out=str(tmp_path / "full"))
    ss.train(tiny(train={"steps": 6}), out=str(tmp_path / "half"))
    resumed = ss.train({"train": {"steps": 12}}, out=str(tmp_path / "half"), resume=True)
    a, meta = read_checkpoint(full.checkpoint)
    b, _ = read_checkpoint(resumed.checkpoint)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert meta["task"] == "masked" and meta["tokens"]["language"]["name"] == "brackets"
    assert 'task = "masked"' in open(tmp_path / "full" / "config.toml").read()
    assert {"valid_fraction", "distinct_fraction", "mean_length"} <= set(full.metrics)
    assert os.path.exists(tmp_path / "full" / "samples.txt") and os.path.exists(tmp_path / "full" / "samples.png")
    model, process = ss.load(tmp_path / "full")
    assert isinstance(model, MaskedLM) and process.vocab_size == 5 and model.seq_len == 9
    x = torch.randint(0, 5, (4, 9))
    torch.testing.assert_close(model(x), full.model(x))
    g = lambda: torch.Generator().manual_seed(0)                       # noqa: E731
    s = model.sample(6, sampler="llada", steps=5, prompt="([", generator=g())
    assert torch.equal(s, model.sample(6, sampler="llada", steps=5, prompt="([", generator=g()))
    assert all(t.startswith("([") for t in model.decode(s))
    assert model.nelbo(model.process.check_tokens(full.model.sample(4, generator=g())), generator=g()).shape == (4,)
    with pytest.raises(ValueError, match="longer than the model's sequence length 9"):
        model.sample(2, prompt="()" * 5)
    with pytest.raises(ValueError, match="'x' at position 1 is out of the vocabulary"):
        model.sample(2, prompt="(x")
    with pytest.raises(ValueError, match="steps: expected an int >= 1"):
        model.sample(2, steps=0)


def test_autoregressive_baseline_and_config_checks(tmp_path):
    r = ss.train(tiny(task="autoregressive", model={"name": "causal_transformer"}), out=str(tmp_path / "ar"))
    model, none = ss.load(tmp_path / "ar")
    assert isinstance(model, AutoregressiveLM) and none is None
    x = load_tokens("brackets", size=4, seq_len=9).x
    nll = model.nll(x)
    assert nll.shape == (4,) and torch.isfinite(nll).all() and torch.allclose(nll, r.model.nll(x))
    s = model.sample(3, prompt="[", generator=torch.Generator().manual_seed(0))
    assert (s[:, 0] == model.tokenizer.encode("[")[0]).all()
    with pytest.raises(ValueError, match="trains a seq_transformer network, found 'causal_transformer'"):
        ss.train(tiny(model={"name": "causal_transformer"}), out=str(tmp_path / "x"))
    with pytest.raises(KeyError, match="unknown discrete sampler 'pc'"):
        ss.train(tiny(sample={"sampler": "pc"}), out=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="discrete.remasking: expected one of"):
        ss.train(tiny(discrete={"remasking": "best"}), out=str(tmp_path / "x"))
    from scoresde.training.api import resolve_config
    default = resolve_config({})
    assert default["task"] == "score" and default["model"] == {"name": "mlp", "parameterization": "eps"}
    assert "discrete" not in default                                  # a section of the sequence tasks only
    with pytest.raises(ValueError, match=r"config \[discrete\]: options of the tasks that read them"):
        resolve_config({"discrete": {"temperature": 0.5}})


# --- the command line -----------------------------------------------------------------------------------------
def test_cli_trains_samples_and_scores_text(tmp_path):
    text, held = tmp_path / "train.txt", tmp_path / "held.txt"
    text.write_text(TEXT)
    held.write_text("the cat ate the mat\n")
    out = tmp_path / "run"
    r = run("train", "--task", "masked", "--data", text, "--out", out, *TINY_ARGS)
    assert r.exit_code == 0, r.output
    meta = read_checkpoint(os.path.join(out, "checkpoints", os.listdir(out / "checkpoints")[-1]))[1]
    assert meta["tokens"]["tokenizer"] == {"kind": "char", "alphabet": "".join(sorted(set(TEXT) - {"\n"}))}
    r = run("sample", "--checkpoint", out, "--prompt", "the ", "--n", 3, "--sampler", "mdlm", "--steps", 8)
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("the ") for line in lines[:3]) and "3 samples" in lines[3]
    r = run("sample", "--checkpoint", out, "--prompt", "a_c", "--mask-char", "_", "--n", 2, "--out", tmp_path / "s.txt")
    assert r.exit_code == 0, r.output
    rows = open(tmp_path / "s.txt").read().splitlines()
    assert len(rows) == 2 and all(row[0] == "a" and row[2:3] in ("c", "") for row in rows)
    r = run("sample", "--checkpoint", out, "--n", 5, "--out", tmp_path / "s.npy", "--temperature", 0)
    assert r.exit_code == 0 and np.load(tmp_path / "s.npy").shape == (5, meta["tokens"]["seq_len"]), r.output
    r = run("likelihood", "--checkpoint", out, "--data", held, "--draws", 4)
    assert r.exit_code == 0 and "bits/token" in r.stdout and "NELBO" in r.stdout, r.output
    one_line_error(run("sample", "--checkpoint", out, "--prompt", "the cat!"), "'!' at position 7 is out of the vocab")
    one_line_error(run("sample", "--checkpoint", out, "--prompt", "x" * 100), "out of the vocabulary")
    one_line_error(run("sample", "--checkpoint", out, "--prompt", "t" * 100), "longer than the model's sequence")
    one_line_error(run("sample", "--checkpoint", out, "--steps", 0), "--steps")
    one_line_error(run("sample", "--checkpoint", out, "--label", 1), "--label: an option of score models")
    one_line_error(run("sample", "--checkpoint", out, "--out", tmp_path / "s.png"), ".txt")
    one_line_error(run("sample", "--checkpoint", os.path.join(HERE, "fixtures", "legacy_run"), "--allow-unverified",
                       "--prompt", "a", "--out", tmp_path / "a.npy"),      # a score model: text models only
                   "--prompt: expected a text-conditional model")
    (tmp_path / "bad.txt").write_text("the cat?\n")
    one_line_error(run("likelihood", "--checkpoint", out, "--data", tmp_path / "bad.txt"), "'?'")
    r = run("train", "--task", "masked", "--dry-run")
    assert r.exit_code == 0 and 'name = "seq_transformer"' in r.output and 'name = "brackets"' in r.output


def test_cli_prompts_a_language_run(tmp_path):
    out = tmp_path / "sums"
    assert run("train", "--task", "masked", "--data", "sums", "--set", "data.size=200", "--out", out,
               *TINY_ARGS).exit_code == 0
    r = run("sample", "--checkpoint", out, "--prompt", "12+", "--n", 2, "--sampler", "llada", "--remasking", "random",
            "--block-length", 3, "--device", "cpu")
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert all(line.startswith("12+") for line in lines[:2]) and "% valid" in lines[2]
    assert json.load(open(out / "metrics.json"))["n"] == 4
    one_line_error(run("sample", "--checkpoint", out, "--sampler", "mdlm", "--remasking", "random"),
                   "options of the llada sampler")


def test_benchmark_entropy_and_exact_table():
    """benchmarks/discrete.py: the exact entropy of the brackets data against enumeration, and part 1's table."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_discrete", os.path.join(HERE, "..", "benchmarks", "discrete.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lang = get_language("brackets", max_depth=2, max_len=6)
    counts = {n: sum(lang.is_valid("".join(p)) for p in itertools.product("()[]", repeat=n)) for n in (2, 4, 6)}
    h = -sum(np.log2(1 / 3 / c) / 3 for c in counts.values())           # -sum p log p: p = 1/(3 c) for c strings
    assert bench.brackets_entropy(2, 6, 7) == pytest.approx(h / 7, rel=1e-12)
    rows = bench.exact_table(n=2000)
    assert len(rows) == 2 + 12 and rows[2].startswith("| mdlm | 1 | 0.3")
    seqs, probs, lang, tok = bench.brackets_support(2, 6, 7)                 # the data's law by its support
    assert len(seqs) == sum(counts.values()) and all(lang.is_valid(tok.decode(r)) for r in seqs.tolist())
    assert float(-(probs * probs.log2()).sum()) / 7 == pytest.approx(h / 7, rel=1e-12)
    pick = torch.tensor([0, 5, 41, 41])                                      # the data law's NLL of sequences
    assert bench.brackets_nll(seqs[pick], 2, 6) == pytest.approx(float(-probs[pick].log2().mean()) / 7, rel=1e-12)


def test_benchmark_oracle_one_token_per_step_is_always_valid():
    """With the exact denoiser of the brackets data, revealing one token per step never makes an invalid string."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_discrete", os.path.join(HERE, "..", "benchmarks", "discrete.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = {tuple(c.strip() for c in r.split("|")[1:4]): r.split("|")[4].strip()
            for r in bench.oracle_table(200, max_depth=2, max_len=8)[4:-1]}
    assert rows[("llada (random)", "1", "64")] == "100.0" and rows[("mdlm", "1", "256")] != ""


def test_benchmark_budget_is_cpu_time_of_the_process(tmp_path):
    """benchmarks/discrete.py stops each training run after a CPU-time budget (ITIMER_PROF), not wall time."""
    import importlib.util
    import time
    spec = importlib.util.spec_from_file_location("bench_discrete", os.path.join(HERE, "..", "benchmarks", "discrete.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = tiny(train={"steps": 10 ** 6, "ckpt_every": 10 ** 6})
    from scoresde.training.config import validate
    assert validate(cfg)["discrete"]["loss"] == "count"                        # the lower-variance default
    w0 = time.perf_counter()
    r, cpu, wall = bench.train_for(cfg, str(tmp_path / "run"), 1.5)
    assert 0 < r.step < 10 ** 6 and r.interrupted == "SIGTERM"
    assert 1.5 <= cpu < 4 and wall <= time.perf_counter() - w0
