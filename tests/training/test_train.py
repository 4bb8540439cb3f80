"""Training loop: exact resume, non-finite losses, checkpoint rotation, ss.load."""
import os

import pytest
import torch

import scoresde as ss
from scoresde.runs.checkpoint import list_checkpoints, read_checkpoint

TINY = {"data": {"size": 400}, "model": {"width": 16, "depth": 1, "embed_dim": 8},
        "train": {"steps": 20, "batch_size": 32, "warmup": 5, "log_every": 5, "ckpt_every": 10, "progress": False},
        "sample": {"n": 32, "steps": 5}, "device": "cpu"}


def tiny(**train):
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY.items()}
    cfg["train"] = {**cfg["train"], **train}
    return cfg


def test_resume_is_bit_identical(tmp_path):
    full = ss.train(tiny(steps=40), out=str(tmp_path / "full"))
    ss.train(tiny(steps=20), out=str(tmp_path / "half"))
    resumed = ss.train({"train": {"steps": 40}}, out=str(tmp_path / "half"), resume=True)
    assert full.step == resumed.step == 40
    a, ma = read_checkpoint(full.checkpoint)
    b, mb = read_checkpoint(resumed.checkpoint)
    assert a.keys() == b.keys() and any(k.startswith("optim/") for k in a)
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert diff == [], f"tensors differ after resume: {diff[:5]}"
    assert ma["state"]["ema"]["num_updates"] == mb["state"]["ema"]["num_updates"] == 40
    # the CSV log of the resumed run has each step once
    steps = [int(line.split(",")[0]) for line in open(tmp_path / "half" / "log.csv").read().split()[1:]]
    assert steps == list(range(5, 45, 5))


def test_load_returns_model_and_sde(tmp_path):
    r = ss.train(tiny(), out=str(tmp_path))
    model, sde = ss.load(tmp_path)
    assert isinstance(model, ss.ScoreModel) and isinstance(sde, ss.VPSDE)
    x = torch.randn(5, 2)
    torch.testing.assert_close(model(x, 0.5), r.model(x, 0.5))      # EMA weights, like the result's
    raw, _ = ss.load(tmp_path, ema=False)
    assert not torch.equal(raw(x, 0.5), model(x, 0.5))
    assert sde.sample(model, 7, sampler="euler_maruyama", steps=5).shape == (7, 2)
    assert os.path.exists(r.samples_path) and os.path.exists(tmp_path / "loss.png")
    assert not [f for f in os.listdir(tmp_path / "checkpoints") if f.endswith(".tmp")]


def test_keeps_last_checkpoints(tmp_path):
    ss.train(tiny(steps=25, ckpt_every=5, keep=2), out=str(tmp_path))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [20, 25]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    ss.train(tiny(steps=10), out=str(tmp_path))
    (step, path), = list_checkpoints(tmp_path)
    before = open(path, "rb").read()
    import scoresde.training.losses
    monkeypatch.setattr(scoresde.training.losses, "dsm_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(ss.TrainingError, match="non-finite for 3 steps in a row.*ckpt_00000010"):
        ss.train({"train": {"steps": 100, "max_nonfinite": 3}}, out=str(tmp_path), resume=True)
    assert list_checkpoints(tmp_path) == [(10, path)] and open(path, "rb").read() == before


def test_isolated_nonfinite_steps_are_skipped(tmp_path, monkeypatch):
    import scoresde.training.losses
    real, calls = scoresde.training.losses.dsm_loss, []

    def flaky(*a, **k):
        calls.append(1)
        loss = real(*a, **k)
        return loss * float("inf") if len(calls) % 4 == 0 else loss
    monkeypatch.setattr(scoresde.training.losses, "dsm_loss", flaky)
    r = ss.train(tiny(steps=12), out=str(tmp_path))
    assert r.skipped == 3 and r.step == 12
    assert r.checkpoint.endswith("ckpt_00000012.safetensors")
    assert read_checkpoint(r.checkpoint)[1]["state"]["ema"]["num_updates"] == 9


def test_refuses_to_overwrite_a_run(tmp_path):
    ss.train(tiny(steps=5), out=str(tmp_path))
    with pytest.raises(ValueError, match="already holds checkpoints"):
        ss.train(tiny(steps=5), out=str(tmp_path))


def test_trains_on_an_array_of_rank_3(tmp_path):
    x = torch.randn(64, 3, 4)
    r = ss.train(tiny(steps=5), data=x, out=str(tmp_path))
    model, _ = ss.load(tmp_path)
    assert model.data_shape == (3, 4) and r.step == 5
