"""Bit-identity with the outputs pinned at commit 8c26e4f (tests/fixtures/pinned/outputs.safetensors).

Every quantity is recomputed by the same function of tests/fixtures/pinned/make_pinned.py that pinned it
(samplers on an exact score and on the trained model of tests/fixtures/main_run, likelihoods, losses,
ScoreModel forwards, a resume of main_run, and main_run's training itself) and compared with
`torch.equal`: any change of any value, dtype or shape fails. Only the public API is used, so these
tests hold across a restructuring of the package. Regenerate the pins only with the code they were made
from (see make_pinned.py); a deliberate numerical change must say so and re-pin.
"""
import importlib.util
import json
import os
import shutil

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import scoresde as ss

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("make_pinned", os.path.join(HERE, "fixtures", "pinned", "make_pinned.py"))
mp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mp)

MAIN_RUN = mp.MAIN_RUN
PINNED = load_file(mp.OUTPUTS)
with safe_open(mp.OUTPUTS, "pt") as _f:
    STRINGS = _f.metadata()

GROUPS = {                       # the pinned keys each recipe of make_pinned.py produces
    "analytic_samples": ("sample/", "nfe/"),
    "model_samples": ("model_sample/", "model_forward/", "model_weights/"),
    "likelihoods": ("likelihood/",),
    "losses_and_forwards": ("forward/", "dsm_loss/", "ddpm_loss/", "smld_loss/"),
    "resume": ("resume/",),
}


def assert_pinned(got: dict, group: str) -> None:
    expected = {k: v for k, v in PINNED.items() if k.startswith(GROUPS[group])}
    assert sorted(got) == sorted(expected)
    bad = [k for k, v in expected.items()
           if got[k].dtype != v.dtype or got[k].shape != v.shape or not torch.equal(got[k], v)]
    assert bad == [], f"{len(bad)} of {len(expected)} pinned {group} values changed: {bad[:10]}"


PINNED_SAMPLERS = json.loads(STRINGS["samplers"])
ADDED_SAMPLERS = ["edm"]          # registered after the pins; tested in their own files (tests/samplers/)


def test_every_pinned_value_is_checked_and_every_sampler_pinned():
    assert [k for k in PINNED if not k.startswith(sum(GROUPS.values(), ()))] == []
    assert ss.list_samplers() == sorted(PINNED_SAMPLERS + ADDED_SAMPLERS)
    assert all(f"sample/{s}/{name}" in PINNED for s in ("vp", "subvp", "ve") for name in PINNED_SAMPLERS)


def test_samplers_on_the_exact_score():
    assert_pinned(mp.analytic_samples(PINNED_SAMPLERS), "analytic_samples")


def test_main_run_loads_and_samples():
    model, sde = ss.load(MAIN_RUN, verify=False)
    assert isinstance(sde, ss.VPSDE) and isinstance(model, ss.ScoreModel) and model.data_shape == (2,)
    assert_pinned(mp.model_samples(MAIN_RUN), "model_samples")


def test_likelihoods():
    assert_pinned(mp.likelihoods(MAIN_RUN), "likelihoods")


def test_losses_and_score_model_forwards():
    assert_pinned(mp.losses_and_forwards(), "losses_and_forwards")


def test_main_run_resumes(tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(MAIN_RUN, run)
    got, strings = mp.resume(str(run))
    assert_pinned(got, "resume")
    assert strings == {k: v for k, v in STRINGS.items() if k.startswith("resume/")}


def test_training_reproduces_main_run(tmp_path):
    run = tmp_path / "run"
    mp.train_main_run(str(run))
    for name in ("ckpt_00000020.safetensors", "ckpt_00000040.safetensors"):
        new_t, new_meta = mp.read_checkpoint_file(str(run / "checkpoints" / name))
        old_t, old_meta = mp.read_checkpoint_file(os.path.join(MAIN_RUN, "checkpoints", name))
        assert new_meta == old_meta
        assert sorted(new_t) == sorted(old_t)
        assert [k for k in old_t if new_t[k].dtype != old_t[k].dtype or not torch.equal(new_t[k], old_t[k])] == []
    for column in ("step", "loss", "lr", "grad_norm", "skipped"):
        assert mp.log_column(str(run), column) == mp.log_column(MAIN_RUN, column)
    assert np.array_equal(np.load(run / "samples.npy"), np.load(os.path.join(MAIN_RUN, "samples.npy")))
    with open(run / "metrics.json") as f, open(os.path.join(MAIN_RUN, "metrics.json")) as g:
        new, old = json.load(f), json.load(g)
    assert {k: v for k, v in new.items() if "seconds" not in k} == {k: v for k, v in old.items() if "seconds" not in k}
