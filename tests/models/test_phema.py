"""Post-hoc EMA (scoresde/models/phema.py): the power-function profiles' formulas against numeric integrals,
the tracked EMA against its profile, and reconstructions against directly tracked EMAs."""
import math

import pytest
import torch

from scoresde.models.phema import (SIGMA_REL_MAX, PowerFunctionEMA, Snapshot, gamma_of, power_beta, profile_inner,
                                   reconstruct, sigma_rel_of, solve_weights)


def _grid(t, n=400001):
    return torch.linspace(0.0, float(t), n, dtype=torch.float64)


def _profile(tau, t, gamma):
    """p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) on [0, t], 0 after."""
    return torch.where(tau <= t, (gamma + 1) * tau ** gamma / t ** (gamma + 1), torch.zeros_like(tau))


@pytest.mark.parametrize("gamma", [0.0, 1.5, 6.94, 16.97, 60.0])
def test_sigma_rel_is_the_profiles_relative_std(gamma):
    tau = _grid(1.0)
    p = _profile(tau, 1.0, gamma)
    mass = torch.trapezoid(p, tau)
    mean = torch.trapezoid(tau * p, tau)
    std = torch.trapezoid((tau - mean) ** 2 * p, tau).sqrt()
    assert float(mass) == pytest.approx(1.0, abs=1e-6)
    assert float(std) == pytest.approx(sigma_rel_of(gamma), rel=1e-5)
    assert gamma_of(sigma_rel_of(gamma)) == pytest.approx(gamma, rel=1e-9, abs=1e-9)


def test_gamma_of_edm2s_lengths():
    assert gamma_of(0.10) == pytest.approx(6.94, abs=5e-3) and gamma_of(0.05) == pytest.approx(16.97, abs=5e-3)
    assert gamma_of(SIGMA_REL_MAX) == 0.0
    assert sigma_rel_of(gamma_of(0.0123)) == pytest.approx(0.0123, rel=1e-12)


@pytest.mark.parametrize("t_a, g_a, t_b, g_b", [(1.0, 3.0, 1.0, 3.0), (0.6, 6.94, 1.0, 16.97),
                                                 (1.0, 16.97, 0.35, 2.0), (0.8, 0.0, 0.5, 1.0)])
def test_inner_products_match_numeric_integration(t_a, g_a, t_b, g_b):
    tau = _grid(min(t_a, t_b))          # the product vanishes beyond the shorter profile
    numeric = torch.trapezoid(_profile(tau, t_a, g_a) * _profile(tau, t_b, g_b), tau)
    closed = profile_inner(t_a, g_a, t_b, g_b)
    assert float(closed) == pytest.approx(float(numeric), rel=2e-5)
    assert float(profile_inner(t_b, g_b, t_a, g_a)) == pytest.approx(float(closed), rel=1e-14)   # symmetric


@pytest.mark.parametrize("sigma_rel", [0.05, 0.1, 0.25])
def test_tracked_weights_are_the_profile_integrated_over_each_step(sigma_rel):
    """With the parameter at step k = e_k, the EMA after t updates holds the weight of each step:
    (k^(gamma+1) - (k-1)^(gamma+1)) / t^(gamma+1), the profile integrated over (k - 1, k]."""
    t = 50
    lin = torch.nn.Linear(t, 1, bias=False).double()
    ema = PowerFunctionEMA(lin, sigma_rel)
    for k in range(1, t + 1):
        with torch.no_grad():
            lin.weight.zero_()
            lin.weight[0, k - 1] = 1.0
        ema.update(lin)
    g = gamma_of(sigma_rel)
    k = torch.arange(1, t + 1, dtype=torch.float64)
    expected = (k ** (g + 1) - (k - 1) ** (g + 1)) / t ** (g + 1)
    torch.testing.assert_close(ema.shadow["weight"][0], expected, rtol=1e-12, atol=1e-15)
    assert power_beta(g, 1) == 0.0 and ema.num_updates == t


def _train(steps=400, every=10, stored=(0.05, 0.10), direct=(0.03, 0.08, 0.15), at=()):
    """A tiny network trained `steps` steps with random updates (noise plus a drift); the stored EMAs
    snapshotted every `every` steps, the `direct` ones tracked (and copied at the steps `at`)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    emas = [PowerFunctionEMA(net, s) for s in stored]
    targets = {s: PowerFunctionEMA(net, s) for s in direct}
    g = torch.Generator().manual_seed(1)
    drift = {k: torch.randn(p.shape, generator=g) for k, p in net.named_parameters()}
    snaps, copies = [], {}
    for step in range(1, steps + 1):
        with torch.no_grad():
            for k, p in net.named_parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g) + 0.002 * drift[k])
        for e in emas + list(targets.values()):
            e.update(net)
        if step % every == 0:
            snaps += [e.snapshot() for e in emas]
        if step in at:
            copies[step] = {s: e.snapshot() for s, e in targets.items()}
    return snaps, targets, copies


def _max_rel(a, b):
    return max(float((a[k] - b[k]).norm() / b[k].norm()) for k in b)


def test_reconstruction_matches_a_directly_tracked_ema():
    """The goal: a reconstructed profile within 1e-3 relative of the directly tracked EMA of that profile
    (measured: about 1e-6 at sigma_rel 0.08 between the stored 0.05 and 0.10), at the end and at an earlier step."""
    snaps, targets, copies = _train(at=(250,))
    for s, e in targets.items():
        w, info = reconstruct(snaps, s)
        assert info["step"] == 400 and len(info["snapshots"]) == 80 and abs(sum(info["weights"]) - 1) < 1e-12
        assert _max_rel(w, e.shadow) < 1e-3, s
        w, _ = reconstruct(snaps, s, step=250)
        assert _max_rel(w, copies[250][s].shadow) < 1e-3, (s, 250)
    w, info = reconstruct(snaps, 0.08)
    assert _max_rel(w, targets[0.08].shadow) < 1e-5 and info["profile_error"] < 1e-3
    # the differences are not trivially small: the stored EMAs themselves are far from the target
    assert _max_rel(snaps[-1].shadow, targets[0.08].shadow) > 100 * _max_rel(w, targets[0.08].shadow)
    # a stored profile is reconstructed exactly
    w, info = reconstruct(snaps, 0.10)
    assert _max_rel(w, snaps[-1].shadow) < 1e-9 and info["profile_error"] < 1e-6


def test_state_dict_round_trip_and_resume():
    net = torch.nn.Linear(3, 2)
    a, b = PowerFunctionEMA(net, 0.1), PowerFunctionEMA(net, 0.1)
    for _ in range(5):
        with torch.no_grad():
            net.weight.add_(1.0)
        a.update(net)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        net.weight.add_(1.0)
    a.update(net)
    b.update(net)
    assert b.num_updates == 6 and torch.equal(a.shadow["weight"], b.shadow["weight"])
    with pytest.raises(ValueError, match="state: a power-function EMA of sigma_rel 0.1, this one tracks 0.05"):
        PowerFunctionEMA(net, 0.05).load_state_dict(a.state_dict())


@pytest.mark.parametrize("sigma_rel, exc, match", [
    (0.0, ValueError, r"sigma_rel: expected a relative EMA length in \(0, 0.2887\]"),
    (0.3, ValueError, "sigma_rel: expected .* found 0.3"),
    (float("nan"), ValueError, "sigma_rel: expected"),
    ("0.1", TypeError, "sigma_rel: expected a number"),
])
def test_bad_sigma_rel_is_refused(sigma_rel, exc, match):
    with pytest.raises(exc, match=match):
        PowerFunctionEMA(torch.nn.Linear(2, 2), sigma_rel)
    with pytest.raises(exc, match=match):
        reconstruct([Snapshot(10, 0.1, {"w": torch.ones(2)})], sigma_rel)


def test_bad_snapshots_are_refused():
    with pytest.raises(ValueError, match="snapshots: expected at least one"):
        reconstruct([], 0.1)
    snaps = [Snapshot(10, 0.1, {"w": torch.ones(2)}), Snapshot(20, 0.05, {"v": torch.ones(2)})]
    with pytest.raises(ValueError, match="snapshots: the snapshot of step 20"):
        reconstruct(snaps, 0.1)
    with pytest.raises(ValueError, match=r"step: expected a training step in \[1, 20\]"):
        reconstruct(snaps, 0.1, step=30)
    with pytest.raises(ValueError, match="step: no snapshot at or before step 5"):
        reconstruct(snaps, 0.1, step=5)
    with pytest.raises(ValueError, match="times: expected positive"):
        solve_weights([0, 10], [0.1, 0.1], 10, 0.1)
    x, err = solve_weights([10], [0.1], 10, 0.1)
    assert x.tolist() == [1.0] and err < 1e-7
    assert math.isfinite(solve_weights([10, 10], [0.1, 0.1], 10, 0.05)[1])     # a singular Gram matrix
