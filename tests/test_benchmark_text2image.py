"""benchmarks/text2image.py's sampler drivers on an exact score: diffusers' schedulers driven through the
noise-level map (eps = -sigma score at the continuous time of the scheduler's sigma) and ours spend exactly
their budget of guided evaluations and converge to the data law (Gaussian data, closed-form score)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import scoresde as ss

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_text2image", BENCH / "text2image.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_drivers_count_evaluations_and_reach_the_data_std(bench):
    sde, s = ss.VPSDE(), 0.5

    def score(x, t):                     # data N(0, s^2 I): grad log p_t(x) = -x / (alpha^2 s^2 + sigma^2)
        a, sg = (v.float().reshape(-1, 1, 1, 1) for v in sde.marginal_coefs(t.double()))
        return -x / (a * a * s * s + sg * sg)

    z = torch.randn(4000, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    for name, (cls, cfg) in bench.PEERS.items():
        x, calls = bench.diffusers_run(sde, score, z, cls, cfg, 5)
        assert calls == 5 and torch.isfinite(x).all(), name
        x, calls = bench.diffusers_run(sde, score, z, cls, cfg, 100)
        assert calls == 100 and abs(x.std().item() - s) < 0.03, (name, x.std())
    for name, (sampler, opts) in bench.OURS.items():
        x, calls = bench.ours(sde, score, z, sampler, opts, 5)
        assert calls <= 5 and torch.isfinite(x).all(), name
        x, _ = bench.ours(sde, score, z, sampler, opts, 100)
        assert abs(x.std().item() - s) < 0.03, (name, x.std())


def test_the_benchmark_trains_the_recipe_of_configs_digitpairs(bench):
    """configs/digitpairs.toml is the benchmark's model: the same network, text encoder and training settings."""
    import tomllib
    cfg = tomllib.loads((BENCH.parent / "configs" / "digitpairs.toml").read_text())
    assert cfg["model"] == {**bench.UNET, **bench.TEXT}
    train = {k: v for k, v in cfg["train"].items() if k not in ("steps", "ckpt_every")}
    assert train == bench.TRAIN and cfg["data"]["name"] == "digitpairs"
    assert cfg["train"]["steps"] == 12000 and cfg["sample"]["sampler"] == "dpm_solver"
    from scoresde.training.config import resolve
    resolved = resolve(BENCH.parent / "configs" / "digitpairs.toml", {"autoencoder": "runs/pairs_ae"})
    assert resolved["model"]["context_pos"] is True and resolved["model"]["parameterization"] == "v"


def test_the_guidance_weight_is_the_lowest_fid_at_the_accuracy_goal(bench):
    s = lambda a, f: {"prompt_accuracy": a, "fid": f}  # noqa: E731
    assert bench.pick_weight({1.0: s(0.88, 4.0), 2.0: s(0.99, 8.0), 3.0: s(1.0, 11.0)}) == 2.0
    assert bench.pick_weight({1.0: s(0.5, 4.0), 2.0: s(0.7, 8.0), 3.0: s(0.7, 7.0)}) == 3.0    # none there: accuracy
