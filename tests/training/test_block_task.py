"""Block diffusion through the engine and the command line: `--task masked --set discrete.block_size=4` trains a
block-causal network on the block NELBO, saves and loads it, samples block by block with the KV cache (any
length, ending at EOS) with mdlm / llada / remdm, and reports the network calls."""
import os

import pytest
import torch
from click.testing import CliRunner

import scoresde as ss
from scoresde.cli.main import cli
from scoresde.models.token_model import MaskedLM
from scoresde.sde.block_masked import BlockMaskedProcess

TINY = {"task": "masked", "device": "cpu", "data": {"size": 300}, "model": {"width": 16, "depth": 1, "heads": 2},
        "train": {"steps": 8, "batch_size": 16, "log_every": 4, "ckpt_every": 8, "progress": False, "warmup": 2},
        "sample": {"n": 8, "steps": 8, "sampler": "remdm"}, "eval": {"n": 8},
        "discrete": {"seq_len": 9, "block_size": 4}}
ARGS = ["--device", "cpu", "--no-progress", "--steps", "6", "--batch-size", "8", "--set", "model.width=16",
        "--set", "model.depth=1", "--set", "model.heads=2", "--set", "sample.n=4", "--set", "sample.steps=4",
        "--set", "discrete.block_size=4", "--set", "data.size=200"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_block_run_trains_loads_and_samples_block_by_block(tmp_path):
    r = ss.train(TINY, out=str(tmp_path / "run"))
    model, process = ss.load(tmp_path / "run")
    assert isinstance(model, MaskedLM) and isinstance(process, BlockMaskedProcess) and process.block_size == 4
    assert model.net.block_size == 4 and model.block_size == 4
    x = torch.randint(0, 5, (3, 9))
    torch.testing.assert_close(model(x), r.model(x))
    g = lambda: torch.Generator().manual_seed(0)                       # noqa: E731
    for sampler, kw in (("llada", {"remasking": "margin"}), ("remdm", {"eta": 0.05}), ("mdlm", {})):
        st = {}
        s = model.sample(6, sampler=sampler, steps=9, generator=g(), stats=st, **kw)
        assert s.shape == (6, 9) and (s < 5).all() and st["nfe"] <= 9 + 3 and st["nfe_per_sequence"] <= st["nfe"]
        eos = (s == model.eos_id).long()
        assert ((eos.cumsum(1) > 0).long() >= eos).all() and ((eos.cumsum(1) > 0) <= (s == model.eos_id)).all()
    long = model.sample(4, sampler="llada", steps=20, length=20, generator=g())
    assert long.shape == (4, 20)
    s = model.sample(4, sampler="llada", steps=9, prompt="([", generator=g())
    assert all(t.startswith("([") for t in model.decode(s))
    with pytest.raises(ValueError, match="length: expected at least"):
        model.sample(2, length=4)
    bound = model.nelbo(x.clamp(max=4), generator=g())
    assert bound.shape == (3,) and torch.isfinite(bound).all()


def test_block_size_config_checks(tmp_path):
    with pytest.raises(ValueError, match="block diffusion is a masked model"):
        ss.train({**TINY, "task": "autoregressive", "model": {**TINY["model"], "name": "causal_transformer"}},
                 out=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="takes no time input"):
        ss.train({**TINY, "model": {**TINY["model"], "time_conditioning": True}}, out=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="discrete.block_size"):
        ss.train({**TINY, "discrete": {**TINY["discrete"], "block_size": -1}}, out=str(tmp_path / "x"))


def test_cli_block_run_samples_with_remdm_and_reports_calls(tmp_path):
    out = tmp_path / "b"
    r = run("train", "--task", "masked", "--data", "brackets", "--out", out, *ARGS)
    assert r.exit_code == 0, r.output
    r = run("sample", "--checkpoint", out, "--sampler", "remdm", "--eta", 0.05, "--remdm-schedule", "conf",
            "--steps", 8, "--n", 3)
    assert r.exit_code == 0, r.output
    last = r.stdout.strip().splitlines()[-1]
    assert "remdm, 8 steps, blocks of 4" in last and "network calls" in last and "per sample" in last
    r = run("sample", "--checkpoint", out, "--sampler", "llada", "--remasking", "margin", "--order-temperature", 0.5,
            "--n", 2)
    assert r.exit_code == 0, r.output
    r = run("sample", "--checkpoint", out, "--sampler", "mdlm", "--eta", 0.1)
    assert r.exit_code != 0 and "--eta: options of the remdm sampler" in r.stderr
    r = run("likelihood", "--checkpoint", out, "--data", "brackets", "--n", 8, "--draws", 2)
    assert r.exit_code == 0 and "NELBO" in r.stdout, r.output
    assert os.path.exists(out / "samples.txt")
