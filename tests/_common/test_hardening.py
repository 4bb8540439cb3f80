"""Hardening of the numerical API: NaN fails fast in every sampler, bad score functions are named,
plots refuse non-finite data, model keys and data sources are checked early, thread policy, bars.

NaN tests run under a wall-clock limit (SIGALRM): before these checks, one NaN made the adaptive
RK45 solver reject steps until max_steps = 100000 (tens of minutes).
"""
import time

import numpy as np
import pytest
import torch

import scoresde as ss
from scoresde.sde.analytic import four_mode_mixture
from scoresde._common.finite import CheckedScore, NonFiniteError
from scoresde.training.config import resolve
from scoresde.data.datasets import check_data_source
from scoresde.evaluation.likelihood import _ExampleBar, dataset_likelihood
from scoresde.runs.plots import inpainting_grid, pair_rows, plot_samples
from scoresde._common.threads import policy_threads, thread_policy
from helpers import time_limit

SDE = ss.VPSDE()
SCORE = four_mode_mixture().score_fn(SDE)




def nan_below(t_bad: float):
    """The exact mixture score, but NaN for t < t_bad (a model broken at small noise levels)."""
    def score(x, t):
        return torch.where((t < t_bad)[:, None], torch.full_like(x, float("nan")), SCORE(x, t))
    return score


# --- item 5: NaN never spins, in any sampler --------------------------------------------------------
def test_nan_in_x_init_fails_at_once_for_the_ode_sampler():
    x = torch.randn(8, 2)
    x[3, 1] = float("nan")
    with time_limit(20), pytest.raises(ValueError, match="x_init: expected finite values, found 1 NaN/inf"):
        SDE.sample(SCORE, (8, 2), sampler="ode", x_init=x)


@pytest.mark.parametrize("sampler", ss.list_samplers())
def test_nan_score_is_reported_within_a_step_with_its_time(sampler):
    steps = 40
    calls = []

    def score(x, t):
        calls.append(float(t[0]))
        return nan_below(0.5)(x, t)
    with time_limit(30), pytest.raises(NonFiniteError, match=r"score_fn returned NaN/inf at t = 0\.[34]") as e:
        SDE.sample(score, (16, 2), sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0))
    first_bad = next(i for i, t in enumerate(calls) if t < 0.5)
    assert f"at t = {calls[first_bad]:.6g} (evaluation {first_bad + 1})" in str(e.value)
    assert f"sampler '{sampler}'" in str(e.value)
    assert len(calls) - first_bad <= 2              # on the CPU: stopped at the first NaN (+1 for pc's pair)


def test_state_that_overflows_with_finite_scores_is_named_as_the_state():
    def huge(x, t):                                # finite, but x + dt g^2 s overflows float32
        return torch.full_like(x, -3e38)
    with time_limit(20), pytest.raises(NonFiniteError, match="the state x became NaN/inf"):
        SDE.sample(huge, (4, 2), sampler="euler_maruyama", steps=50)


def test_nan_score_in_log_likelihood_fails_fast():
    with time_limit(60), pytest.raises(NonFiniteError,
                                       match="score_fn returned 8 NaN/inf of 8 values at t = 1e-05 .* in log_likelihood"):
        SDE.log_likelihood(lambda x, t: torch.full_like(x, float("nan")), torch.randn(4, 2))
    with time_limit(60), pytest.raises(NonFiniteError, match=r"at t = 0\.[3-4]"):
        SDE.log_likelihood(lambda x, t: torch.where((t > 0.3)[:, None], float("nan"), SCORE(x, t)),
                           torch.randn(4, 2), rtol=1e-3, atol=1e-3)
    x = torch.randn(4, 2)
    x[0, 0] = float("inf")
    with time_limit(20), pytest.raises(ValueError, match="x: expected finite values"):
        SDE.log_likelihood(SCORE, x)


def test_odeint_stops_on_a_nan_derivative():
    from scoresde._common.odeint import odeint_rk45
    with time_limit(20), pytest.raises(NonFiniteError, match="odeint_rk45: NaN/inf in the step from t = "):
        odeint_rk45(lambda t, y: y * float("nan") if t > 0.5 else -y, torch.ones(3), 0.0, 1.0)


def test_impute_fails_fast_and_allows_nan_placeholders_where_unknown():
    x_known, mask = torch.randn(6, 2), torch.tensor([1.0, 0.0])
    with time_limit(30), pytest.raises(NonFiniteError, match="score_fn returned NaN/inf at t = 0.4.* in impute"):
        ss.impute(SDE, nan_below(0.5), x_known, mask, steps=40)
    bad = x_known.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x_known: expected finite values where mask == 1"):
        ss.impute(SDE, SCORE, bad, mask, steps=20)
    holes = x_known.clone()
    holes[:, 1] = float("nan")                    # the unknown entries may be NaN placeholders
    x = ss.impute(SDE, SCORE, holes, mask, steps=20, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all() and torch.equal(x[:, 0], x_known[:, 0])


def test_checked_score_on_an_accelerator_reads_flags_every_k_evaluations():
    checked = CheckedScore(lambda x, t: torch.full_like(x, float("nan")) if float(t) < 0.5 else x,
                           where="test", check_every=4)
    x = torch.ones(2, 2)
    checked(x, torch.tensor(0.9))                 # first call: checked at once
    for t in (0.8, 0.4, 0.3):                     # pending: nothing read yet
        checked(x, torch.tensor(t))
    with pytest.raises(NonFiniteError, match=r"at t = 0\.4 \(evaluation 3\)"):
        checked(x, torch.tensor(0.2))             # the 4th pending flag triggers the read


# --- item 6: bad score functions are named ------------------------------------------------------------
@pytest.mark.parametrize("bad, exc, found", [
    (lambda x, t: SCORE(x, t)[:, :1], ValueError, "shape (8, 1)"),
    (lambda x, t: None, TypeError, "found NoneType"),
    (lambda x, t: SCORE(x, t).double(), TypeError, "torch.float64"),
    (lambda x, t: SCORE(x, t).sum(1), ValueError, "shape (8,)"),
])
@pytest.mark.parametrize("sampler", ["ode", "euler_maruyama", "dpm_solver"])
def test_bad_score_fn_output_is_refused_on_the_first_call(bad, exc, found, sampler):
    with pytest.raises(exc, match=r"score_fn: expected a tensor shaped like x \(8, 2\)") as e:
        SDE.sample(bad, (8, 2), sampler=sampler, steps=5)
    assert found in str(e.value)


def test_log_likelihood_refuses_a_mismatched_score():
    for bad, found in [(lambda x, t: SCORE(x, t)[:, :1], "shape (3, 1)"), (lambda x, t: None, "NoneType")]:
        with pytest.raises((TypeError, ValueError), match="score_fn: expected a tensor shaped like x") as e:
            SDE.log_likelihood(bad, torch.randn(3, 2))
        assert found in str(e.value)
    with pytest.raises(ValueError, match="score_fn: .* shape"):
        ss.impute(SDE, lambda x, t: x[:, :1], torch.randn(3, 2), torch.tensor([1, 0]), steps=30)


# --- plots refuse non-finite input -----------------------------------------------------------------
def test_plots_refuse_non_finite_values(tmp_path):
    x = torch.randn(10, 2)
    x[4] = float("nan")
    with pytest.raises(ValueError, match="samples: expected finite values to plot, found 2 NaN/inf"):
        plot_samples(x, str(tmp_path / "s.png"))
    img = torch.zeros(4, 1, 8, 8)
    img[1, 0, 2, 2] = float("inf")
    with pytest.raises(ValueError, match="images: expected finite values to plot"):
        plot_samples(img, str(tmp_path / "i.png"))
    assert not list(tmp_path.iterdir())


def test_inpainting_grid_pairs_each_known_image_with_its_fill(tmp_path):
    n, cols = 11, 8
    known = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 4, 4) / 100
    filled = -known
    shown, cols_used = pair_rows(known, torch.ones_like(known, dtype=torch.bool), filled)
    assert cols_used == cols and shown.shape[0] == 4 * cols          # 2 pairs of rows (8 + 3 images)
    for i in range(n):
        r, c = divmod(i, cols)
        assert torch.equal(shown[(2 * r) * cols + c], known[i])         # known image i ...
        assert torch.equal(shown[(2 * r + 1) * cols + c], filled[i])    # ... directly above its fill
    assert (shown[3 * cols + 3:] == 1).all()                           # padding is white
    inpainting_grid(known, torch.ones_like(known, dtype=torch.bool), filled, str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").stat().st_size > 0


# --- item 7: model keys, data sources ------------------------------------------------------------------
def test_unknown_model_keys_name_the_known_ones():
    with pytest.raises(ValueError, match=r"config model\.widht: unknown key of model 'mlp'; known: model\.width"):
        resolve(None, {"model.widht": 5})
    with pytest.raises(ValueError, match=r"model\.chh: .*model\.ch_mult"):
        resolve(None, {"model.name": "ddpmpp", "model.chh": 8})
    assert resolve(None, {"model.name": "ddpmpp", "model.ch": 8, "model.parameterization": "score"})["model"]["ch"] == 8
    with pytest.raises(TypeError, match=r"widht: unknown argument of model 'mlp'; known: data_shape, width"):
        ss.get_model("mlp", widht=3)


def test_check_data_source_without_loading(tmp_path):
    assert check_data_source("moons") == "builtin"
    with pytest.raises(FileNotFoundError, match="no such file"):
        check_data_source(str(tmp_path / "missing.npy"))
    np.save(tmp_path / "ok.npy", np.zeros((5, 2), np.float32))
    np.save(tmp_path / "r1.npy", np.zeros(5))
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    (tmp_path / "empty").mkdir()
    assert check_data_source(str(tmp_path / "ok.npy")) == "array"
    with pytest.raises(ValueError, match="at least 2 dims"):
        check_data_source(str(tmp_path / "r1.npy"))
    with pytest.raises(ValueError, match="not a readable"):
        check_data_source(str(tmp_path / "junk.npy"))
    with pytest.raises(ValueError, match="no images found"):
        check_data_source(str(tmp_path / "empty"))


# --- frictions: threads, bars ------------------------------------------------------------------------
def test_thread_policy_matches_train_and_restores():
    assert policy_threads((2,), "cpu") == 1 and policy_threads((1, 16, 16), "cpu") == 1
    assert policy_threads((3, 32, 32), "cpu") is None and policy_threads((2,), "cpu", threads=3) == 3
    assert policy_threads((2,), "cuda") is None
    before = torch.get_num_threads()
    seen = []
    try:
        torch.set_num_threads(2)
        with thread_policy((2,), "cpu"):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2

        def score(x, t):
            seen.append(torch.get_num_threads())
            return SCORE(x, t)
        SDE.sample(score, (4, 2), sampler="ddim", steps=3)
        SDE.log_likelihood(score, torch.randn(2, 2), rtol=1e-2, atol=1e-2)
        assert set(seen) == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("sampler", ["ddim", "heun", "dpm_solver", "deis", "euler_maruyama", "pc"])
def test_progress_bar_counts_the_requested_steps(sampler, capsys):
    SDE.sample(SCORE, (4, 2), sampler=sampler, steps=20, progress=True)
    err = capsys.readouterr().err
    assert "0/20" in err and "/19 " not in err and "/19|" not in err, err[-300:]


def test_likelihood_bar_moves_within_a_batch():
    times = []
    SDE.log_likelihood(SCORE, torch.randn(3, 2), rtol=1e-3, atol=1e-3, callback=times.append)
    assert min(times) == pytest.approx(1e-5) and max(times) == pytest.approx(1.0) and len(times) > 10
    bar = _ExampleBar(10, 1e-5, 1.0)
    try:
        advance = bar.batch(0, 10)
        advance(0.5)
        assert bar.bar.n == pytest.approx(5.0, abs=0.01)     # half a batch done, before it ends
        advance(0.25)                                      # trial points behind the front never move it back
        assert bar.bar.n == pytest.approx(5.0, abs=0.01)
    finally:
        bar.close()
    r = dataset_likelihood(SCORE, SDE, torch.randn(6, 2), 4, divergence="exact", rtol=1e-2, atol=1e-2, progress=True)
    assert r["nats"].shape == (6,)


def test_checks_cost_no_more_than_a_few_percent_on_cpu():
    net = ss.ScoreModel(ss.get_model("mlp", data_shape=(2,)), SDE).eval()
    x, t = torch.randn(256, 2), torch.full((256,), 0.5)
    checked = CheckedScore(net, where="bench")
    with torch.no_grad():
        checked(x, t)
        best = {}
        for name, fn in [("bare", net), ("checked", checked)] * 3:
            start = time.perf_counter()
            for _ in range(50):
                fn(x, t)
            best[name] = min(best.get(name, 1e9), time.perf_counter() - start)
    assert best["checked"] < 1.5 * best["bare"], best     # loose: a shared machine; overhead.py measures it
