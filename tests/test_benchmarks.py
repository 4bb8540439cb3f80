"""The sampler benchmarks: their metrics against closed forms, the overhead arithmetic, and both
scripts' main paths in --quick mode (tables complete, numbers finite)."""
from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch

from scoresde.sde.analytic import GaussianMixture, four_mode_mixture

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def samplers_bench():
    return _load("samplers")


@pytest.fixture(scope="module")
def common_bench():
    return _load("common")


@pytest.fixture(scope="module")
def overhead_bench():
    return _load("overhead")


def _rows(md: str, first_cell: str) -> list[list[str]]:
    """Cells of the markdown table rows whose first cell is `first_cell`."""
    out = []
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            out.append(cells)
    return out


# --- metrics --------------------------------------------------------------------------------------
def test_mixture_metric_small_for_exact_samples_large_for_wrong_mixture(common_bench):
    mix = four_mode_mixture()
    g = torch.Generator().manual_seed(0)
    exact = common_bench.metric(mix, mix.sample(20000, g))
    assert exact < 0.01
    # twice the std in every mode: KL = 1/2 (4 - 1 - log 4) per dim, 2 dims -> 0.61
    wide = GaussianMixture(mix.means, 2 * mix.stds, mix.weights)
    assert common_bench.metric(mix, wide.sample(20000, g)) == pytest.approx(2 * 0.5 * (3 - math.log(4)), abs=0.05)
    # equal weights instead of 0.1/0.2/0.3/0.4: TV = 0.2
    flat = GaussianMixture(mix.means, mix.stds)
    assert common_bench.metric(mix, flat.sample(20000, g)) == pytest.approx(0.2, abs=0.02)


def test_digits_fid(common_bench):
    """The digits metric is scoresde.metrics' digits FID against the held-out images."""
    from scoresde.metrics import digits_split, evaluate
    train, _, test, _ = digits_split()
    fid = common_bench.DigitsFID(test)
    assert fid(test) == pytest.approx(0.0, abs=1e-6)
    assert fid(train[:300]) == pytest.approx(evaluate(train[:300], test, features="digits", metrics="fid",
                                                      progress=False)["fid"], rel=1e-12)
    assert fid(torch.rand(300, 1, 8, 8) * 2 - 1) > 10 * fid(train[:300])
    assert fid(torch.full((100, 1, 8, 8), float("nan"))) == math.inf


def test_steps_and_ode_placement(samplers_bench):
    sb = samplers_bench
    assert [sb.steps_for("pc", 20), sb.steps_for("heun", 20), sb.steps_for("ddim", 20)] == [10, 10, 20]
    runs = [(0.5, 9, 0.1, 1e-1), (0.2, 23, 0.2, 1e-2), (0.1, 19, 0.3, 1e-3), (0.0, 400, 1.0, 1e-5)]
    row = sb.place_by_nfe(runs, [10, 20, 50])
    assert row == [(0.5, 9, 0.1), (0.1, 19, 0.3), None]     # nearest column, closest run wins; 400 too far


# --- overhead arithmetic ---------------------------------------------------------------------------
def test_overhead_ratio_on_fake_timings(overhead_bench):
    ob = overhead_bench
    assert ob.overhead_ratio(1.0, 100, 0.01) == pytest.approx(1.0)       # all time in the network
    assert ob.overhead_ratio(2.1, 20, 0.1) == pytest.approx(1.05)
    with pytest.raises(ValueError, match="nfe"):
        ob.overhead_ratio(1.0, 0, 0.01)
    # medians over repeats: ratios 1.1, 1.0, 1.3 -> 1.1; own 1 ms per step over a 10 ms forward -> 1.1
    s = ob.summarize([(1.1, 10, 0.1, 1e-3), (1.0, 10, 0.1, 1e-3), (2.6, 10, 0.2, 2e-3)])
    assert s["ratio"] == pytest.approx(1.1) and s["ratio_min"] == pytest.approx(1.0)
    assert s["ratio_max"] == pytest.approx(1.3) and s["forward_ms"] == pytest.approx(100.0)
    assert s["own_ratio"] == pytest.approx(1.01) and s["ms_per_step"] == pytest.approx(110.0)


# --- the scripts, --quick ----------------------------------------------------------------------------
def test_overhead_quick(overhead_bench, tmp_path):
    out = tmp_path / "overhead.md"
    overhead_bench.main(["--quick", "--no-progress", "--out", str(out)])
    md = out.read_text()
    for label, _, _ in overhead_bench.CONFIGS:
        (row,) = _rows(md, label)
        nfe, ms, fwd, ratio, own, own_ratio = row[1:7]
        assert int(nfe) >= 1
        values = [float(ms), float(fwd), float(ratio.split()[0]), float(own), float(own_ratio)]
        assert all(math.isfinite(v) and v > 0 for v in values), row


def test_samplers_quick(samplers_bench, tmp_path):
    text = samplers_bench.main(["--quick", "--no-progress", "--out-dir", str(tmp_path),
                                "--cache", str(tmp_path / "cache")])
    md = (tmp_path / "samplers.md").read_text()
    assert text in md and (tmp_path / "samplers.png").stat().st_size > 10000
    assert md.count("**exact score") == 2 and "**trained MLP on mixture" in md and "**trained U-Net on digits" in md
    cell = re.compile(r"^(inf|[-+0-9.e]+) / ([0-9.]+)s( \((\d+)\))?$")
    for label, (name, _) in samplers_bench.SAMPLERS.items():
        rows = _rows(md, label)
        assert len(rows) == 4, label                                    # one row per problem
        for r in rows:
            for c in r[2:]:
                if c == "–":                                              # ode: no tolerance near this NFE
                    assert name == "ode"
                    continue
                if c == "undef.":                          # DDPM's chain with fewer than 20 steps is refused
                    assert name in ("reverse_diffusion", "pc", "annealed_langevin")
                    continue
                m = cell.match(c)
                assert m, (label, c)
                assert math.isfinite(float(m.group(2)))                  # wall seconds
    # on exact scores, the accurate samplers give finite metrics near the floor at NFE 20
    for r in _rows(md, "deis")[:2] + _rows(md, "dpm_solver (2M)")[:2]:
        assert float(r[-1].split(" / ")[0]) < 0.1
    for r in _rows(md, "*floor: 2000 exact draws*"):
        assert all(math.isfinite(float(c)) for c in r[2:])


def test_edm_phema_benchmark_quick():
    """benchmarks/edm_phema.py --quick: both tables complete, their numbers finite; a stored length exact."""
    text = _load("edm_phema").main(["--quick", "--out", ""])
    rows = _rows(text, "50")
    assert len(rows) == 8 and all(math.isfinite(float(c)) for r in rows for c in (r[3], r[5]))
    assert [r for r in rows if r[2] == "0.050"][0][3] == "0.00e+00"
    assert _rows(text, "NFE") == [["NFE", "9", "19"]] and len(_rows(text, "10")) == 1


def test_cascade_benchmark_quick(tmp_path):
    """benchmarks/cascade.py --quick: every table row present and finite; to_digits8 inverts digits32's upsampling."""
    bench = _load("cascade")
    x8 = torch.rand(3, 1, 8, 8) * 2 - 1
    up = torch.nn.functional.interpolate(x8, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(bench.to_digits8(up), x8, atol=1e-5, rtol=0)
    text = bench.main(["--quick", "--cache", str(tmp_path / "runs"), "--out", str(tmp_path / "c.md"),
                       "--plot", str(tmp_path / "c.png")])
    assert (tmp_path / "c.png").stat().st_size > 5000
    assert [r[0] for r in _rows(text, "single")] == ["single"] and len(_rows(text, "sr_none")) == 1
    for label in ("single-stage 32x32", "floor: 80 training images"):
        (row,) = _rows(text, label)
        assert all(math.isfinite(float(c)) for c in row[1:3])
    assert len(_rows(text, "aug noise")) >= 3 and len(_rows(text, "aug none")) >= 2      # ablation + SR rows
    assert re.search(r"\*\*cascade / single-stage FID \(digit\) = [0-9.]+\*\*", text)
