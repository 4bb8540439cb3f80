"""Checkpoint files: safetensors + JSON round trip, atomic writes, clear errors on bad files."""
import os

import pytest
import torch
from safetensors.torch import save_file

from scoresde.runs.checkpoint import (CheckpointError, find_checkpoint, flatten_state, read_checkpoint, save_checkpoint,
                                      unflatten_state)
from scoresde._common.files import atomic_write_bytes
from scoresde.runs.load import load


def test_flatten_round_trip_keeps_int_keys_tuples_and_tensors():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.randn(3))], betas=(0.8, 0.9))
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    sd = opt.state_dict()
    tensors = {}
    meta = flatten_state(sd, "optim", tensors)
    back = unflatten_state(meta, tensors)
    assert list(back["state"]) == [0] and back["param_groups"][0]["betas"] == (0.8, 0.9)
    assert torch.equal(back["state"][0]["exp_avg"], sd["state"][0]["exp_avg"])
    with pytest.raises(TypeError, match="cannot store a object"):
        flatten_state({"x": object()}, "s", {})


def test_save_and_read(tmp_path):
    p = tmp_path / "ckpt_00000001.safetensors"
    meta = {"step": 1, "config": {}, "model": {}, "sde": {}, "state": {"a": [1, 2]}}
    save_checkpoint(p, {"model/w": torch.arange(4.0)}, meta)
    tensors, back = read_checkpoint(p)
    assert back == meta and torch.equal(tensors["model/w"], torch.arange(4.0))
    assert os.listdir(tmp_path) == [p.name]


@pytest.mark.parametrize("content", [b"", b"garbage bytes, not a checkpoint", b"\xff" * 100])
def test_corrupt_file_is_a_clear_error(tmp_path, content):
    p = tmp_path / "ckpt_00000005.safetensors"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt or not a safetensors file"):
        read_checkpoint(p)
    with pytest.raises(CheckpointError):
        load(tmp_path)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "c.safetensors"
    save_checkpoint(p, {"model/w": torch.randn(1000)}, {"step": 1, "config": {}, "model": {}, "sde": {}, "state": {}})
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(p)


def test_foreign_safetensors_file_is_refused(tmp_path):
    p = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    with pytest.raises(CheckpointError, match="not a scoresde checkpoint"):
        read_checkpoint(p)


def test_directory_without_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="holds no checkpoints"):
        find_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        find_checkpoint(tmp_path / "missing")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    p = tmp_path / "f.bin"
    atomic_write_bytes(p, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(p, "not bytes")
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new"
