"""Each sampler's declared facts (`SamplerInfo`, scoresde/samplers/core.py) against what it does."""
import inspect

import pytest
import torch

import scoresde as ss
from problems import counting
from scoresde.samplers import sampler_info
from scoresde.samplers.core import KINDS, SAMPLERS, SamplerInfo, sample
from scoresde.samplers.optimize import FAST_SAMPLERS, FITTED_SAMPLERS, budget_rule, grid_size, min_budget

SDE = ss.VPSDE(beta_min=0.1, beta_max=0.5)      # DDPM's chain is defined down to 1 step (beta_max / N < 1)

# (sampler, options) for every sampler whose NFE is a function of its steps
DECLARED = [
    ("euler_maruyama", {}), ("reverse_diffusion", {}), ("ancestral", {}),
    ("pc", {}), ("pc", {"corrector": "none"}), ("pc", {"corrector": "langevin", "corrector_steps": 2}),
    ("pc", {"predictor": "none", "corrector_steps": 2}),
    ("pc", {"predictor": "ancestral", "corrector": "annealed_langevin", "corrector_steps": 3}),
    ("annealed_langevin", {}), ("annealed_langevin", {"corrector_steps": 2}),
    ("torchsde", {}), ("torchsde", {"method": "milstein"}),
    ("ddim", {}), ("heun", {}), ("heun", {"schedule": "uniform"}), ("edm", {}), ("edm", {"S_churn": 0.0}), ("dpm_solver", {"order": 3}),
    ("deis", {}), ("deis", {"order": 3, "corrector": True}), ("unipc", {}), ("unipc", {"order": 3}), ("bns", {}),
]


def test_every_sampler_with_a_fixed_nfe_is_checked():
    fixed = {r.name for r in SAMPLERS.records() if r.nfe(3) is not None}
    assert fixed == {name for name, _ in DECLARED}
    assert fixed | {"ode"} == set(ss.list_samplers())
    assert SAMPLERS["ode"].nfe(3) is None and SAMPLERS["torchsde"].nfe(3, method="srk") is None


@pytest.mark.parametrize("sampler, options", DECLARED)
def test_declared_nfe_is_the_counted_nfe(sampler, options):
    info = sampler_info(sampler)
    for steps in (1, 2, 7):
        for denoise in (True, False):
            score = counting(lambda x, t: -x)
            _, out = sample(SDE, score, (4, 2), sampler=sampler, steps=steps, denoise=denoise, return_info=True,
                            generator=torch.Generator().manual_seed(0), **options)
            assert out["nfe"] == score.calls == info.nfe(steps, denoise, **options), (steps, denoise)
            if "schedule" in options:                # an explicit grid replaces the schedule
                continue
            # an explicit grid (uniform: the DDPM chain accepts no other), as `sample(..., times=...)` steps it
            score = counting(lambda x, t: -x)
            times = torch.linspace(SDE.T, 1e-3, steps + 1, dtype=torch.float64)
            _, out = sample(SDE, score, (4, 2), sampler=sampler, times=times, denoise=denoise, return_info=True,
                            generator=torch.Generator().manual_seed(0), **options)
            assert out["nfe"] == score.calls == info.grid_nfe(steps, denoise, **options), (steps, denoise, "times")
    for budget in range(1, 12):                      # the most steps within a budget
        steps = info.steps_for(budget, **options)
        assert steps == 1 or info.nfe(steps, **options) <= budget < info.nfe(steps + 1, **options)


def test_heun_and_pc_nfe_rules():
    heun, pc = SAMPLERS["heun"], SAMPLERS["pc"]
    assert [heun.nfe(5), heun.nfe(5, denoise=False), heun.grid_nfe(5), heun.grid_nfe(5, denoise=False)] == [9, 9, 11, 9]
    assert [pc.nfe(5), pc.nfe(5, corrector="none"), pc.nfe(5, corrector_steps=2),
            pc.nfe(5, predictor="none", corrector_steps=2)] == [10, 5, 15, 10]
    assert SAMPLERS["annealed_langevin"].nfe(5, corrector_steps=3) == 15


def test_declared_schedule_is_the_functions_default():
    for r in SAMPLERS.records():
        param = inspect.signature(r.fn).parameters.get("schedule")
        assert r.schedule == (None if param is None else param.default), r.name
        assert (r.schedule is not None) <= r.takes_grid and r.kind in KINDS and "\n" not in r.summary


@pytest.mark.parametrize("sampler", ss.list_samplers())
def test_declared_stochasticity(sampler):
    x_T = SDE.prior_sampling((64, 2), generator=torch.Generator().manual_seed(0))
    a, b = (sample(SDE, lambda x, t: -x, x_init=x_T, sampler=sampler, steps=4,
                   generator=torch.Generator().manual_seed(seed)) for seed in (1, 2))
    assert torch.equal(a, b) != SAMPLERS[sampler].stochastic


def test_fitted_samplers_come_from_the_records_in_registration_order():
    assert FAST_SAMPLERS == ("ddim", "heun", "dpm_solver", "deis", "unipc")
    assert FITTED_SAMPLERS == FAST_SAMPLERS + ("bns",)
    assert [budget_rule(s) for s in FITTED_SAMPLERS] == [">= 2", "odd, >= 3", ">= 2", ">= 2", ">= 2", ">= 2"]


@pytest.mark.parametrize("sampler", FITTED_SAMPLERS)
@pytest.mark.parametrize("denoise", [True, False])
def test_grid_size_inverts_the_declared_nfe(sampler, denoise):
    info = SAMPLERS[sampler]
    spendable = {info.grid_nfe(n, denoise) for n in range(1, 12)}
    assert min_budget(sampler, denoise) == min(spendable)
    for budget in range(1, 10):
        if budget not in spendable:
            with pytest.raises(ValueError, match=f"budget: {sampler} .*{budget}"):
                grid_size(sampler, budget, denoise)
            continue
        L = grid_size(sampler, budget, denoise)
        times = torch.linspace(SDE.T, 1e-3, L, dtype=torch.float64)
        score = counting(lambda x, t: -x)
        sample(SDE, score, (4, 2), sampler=sampler, times=times, denoise=denoise)
        assert score.calls == budget, (budget, L)


def test_the_record_is_the_sampler():
    info = sampler_info("ddim")
    x = SDE.prior_sampling((8, 2), generator=torch.Generator().manual_seed(0))
    ts = torch.linspace(SDE.T, 1e-3, 5)
    assert torch.equal(info(SDE, lambda x, t: -x, x, ts), info.fn(SDE, lambda x, t: -x, x, ts))
    assert info.fn.__name__ == "ddim" and info.fitted == "times" and not info.stochastic
    with pytest.raises(KeyError, match="unknown sampler 'nope'; known: ancestral"):
        sampler_info("nope")
    with pytest.raises(ValueError, match="kind: expected one of"):
        SamplerInfo(name="x", fn=len, kind="flow", summary="", nfe=len, stochastic=False, takes_grid=False)


@pytest.mark.parametrize("sampler", ss.list_samplers())
def test_declared_options_are_the_accepted_ones(sampler):
    """`option_defaults()` lists every option the sampler takes (its defaults given explicitly sample the same
    as none), and no other: an unknown one is a TypeError from `sample` and from `check_sampler_options`."""
    from scoresde.samplers.core import check_sampler_options
    defaults = sampler_info(sampler).option_defaults()
    given = {k: v for k, v in defaults.items() if v is not None}
    kw = dict(steps=3, generator=torch.Generator().manual_seed(0))
    plain = sample(SDE, lambda x, t: -x, (4, 2), sampler=sampler, **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    assert torch.equal(sample(SDE, lambda x, t: -x, (4, 2), sampler=sampler, **kw, **given), plain)
    assert check_sampler_options(sampler, given) == given
    with pytest.raises(TypeError):
        sample(SDE, lambda x, t: -x, (4, 2), sampler=sampler, steps=3, not_an_option=1)
    with pytest.raises(TypeError, match="unknown option"):
        check_sampler_options(sampler, {"not_an_option": 1})
    for key, value in given.items():                  # a value of another type is refused, naming the option
        wrong = "abc" if not isinstance(value, str) else 3
        with pytest.raises(TypeError, match=f"option {key}: expected"):
            check_sampler_options(sampler, {key: wrong})
