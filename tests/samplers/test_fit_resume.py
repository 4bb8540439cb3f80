"""optimize_steps keeps a partial fit and an interrupted one resumes (issue 33, item 5): the bns fit ends
exactly where an uninterrupted one ends, without redoing the reference solve, the search or the Adam steps
already made (counted in score evaluations, never in seconds); the file goes when the fit ends."""
import os

import pytest
import torch

import scoresde as ss
from scoresde._common.statefile import load_state, save_state
from scoresde.samplers.optimize import BNS_ITERATIONS
from problems import four_mode_mixture

SDE = ss.VPSDE(0.1, 20.0)
MIX = four_mode_mixture(0.1)
EPS = 1e-3
FIT = dict(sampler="bns", eps=EPS, reference_steps=60, maxfev=30, iterations=60, return_info=True, save_every=5)


class Interrupt(Exception):
    pass


class Counted:
    """The mixture's score, counting its calls and raising `Interrupt` at call `stop`."""

    def __init__(self, stop=None):
        self.calls, self.stop, self.score = 0, stop, MIX.score_fn(SDE)

    def __call__(self, x, t):
        self.calls += 1
        if self.stop is not None and self.calls >= self.stop:
            raise Interrupt
        return self.score(x, t)


def z():
    return torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


@pytest.mark.parametrize("where", [0.3, 0.8])          # during the search; during the bns fit
def test_an_interrupted_fit_resumes_where_it_stopped(tmp_path, where):
    full = Counted()
    grid, info = ss.optimize_steps(SDE, full, 5, calibration=z(), **FIT)
    assert info["resumed"] is None
    path = tmp_path / "fit.partial.safetensors"
    first = Counted(stop=int(where * full.calls))
    with pytest.raises(Interrupt):
        ss.optimize_steps(SDE, first, 5, calibration=z(), checkpoint=path, **FIT)
    saved = load_state(path)
    assert saved["x_ref"].shape == (64, 2) and ("bns" in saved) == (where > 0.5)
    second = Counted()
    grid2, info2 = ss.optimize_steps(SDE, second, 5, calibration=z(), checkpoint=path, **FIT)
    assert info2["resumed"].startswith(f"resumed from {path}")
    assert not path.exists()                                         # the fit ended: no partial file left
    assert second.calls < full.calls - 60                            # no reference solve (60 calls) again
    assert first.calls + second.calls < full.calls + 6 * FIT["save_every"] * 2   # little redone
    if where > 0.5:                                                  # the bns fit resumes exactly
        assert torch.equal(grid2, grid) and info2["weights"] == info["weights"] and info2["error"] == info["error"]
    else:                                                            # the search restarts from its best grid
        assert info2["error"] <= info2["error_unipc"] <= info2["error_default"]


def test_a_partial_fit_for_other_arguments_is_ignored_and_replaced(tmp_path):
    path = tmp_path / "fit.partial.safetensors"
    save_state(path, {"key": {"budget": 7}, "x_ref": torch.zeros(64, 2)})
    grid, info = ss.optimize_steps(SDE, Counted(), 5, calibration=z(), checkpoint=path, **FIT)
    assert info["resumed"].startswith(f"ignored {path}: made for other") and "budget" in info["resumed"]
    assert not path.exists() and len(grid) == 5


def test_the_default_iterations_and_the_bars_have_totals(capsys):
    assert BNS_ITERATIONS <= 500                                     # minutes, not tens of minutes, on digits
    ss.optimize_steps(SDE, Counted(), 5, calibration=z(), progress=True,
                      **{**FIT, "iterations": 6, "maxfev": 12})
    err = capsys.readouterr().err
    for desc, total in (("reference solve (dpm_solver 3, 60 steps)", 60), ("grid search (unipc, 5 NFE)", 17),
                        ("bns fit (5 NFE, Adam steps)", 8)):
        assert desc in err and f"/{total} [" in err, (desc, err[-800:])
    assert os.environ.get("TQDM_DISABLE") is None
