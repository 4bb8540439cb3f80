"""scoresde.metrics: FID against closed forms and pytorch-fid, KID's unbiasedness and exact MMD, precision /
recall on toy manifolds, IS, the Inception network against torch-fidelity, the digits classifier, run_metrics."""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch

import scoresde as ss
from scoresde.metrics import (Reference, class_accuracy, digits_split, evaluate, extract_features, feature_stats,
                              fid_from_features, frechet_distance, get_feature_net, inception_score, kid,
                              load_digits_classifier, load_inception, load_stats, mmd2_unbiased, precision_recall,
                              run_metric_name, run_metrics, save_stats)
from scoresde.evaluation.metrics.inception import (INCEPTION_WEIGHTS_ENV, random_inception_state_dict,
                                                   tf1_resize_bilinear)

import peers  # noqa: E402  (tests/ is on sys.path: conftest.py)
from problems import TESTS  # noqa: E402

DATA = TESTS / "fixtures" / "metrics"


@pytest.fixture(scope="module")
def fixture():
    with np.load(DATA / "peers.npz") as z:
        return {k: z[k] for k in z.keys()}


# --- FID ------------------------------------------------------------------------------------------------
def test_frechet_distance_closed_forms():
    # commuting covariances: tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sqrt a_i - sqrt b_i)^2
    a, b = np.array([1.0, 4.0, 9.0, 1.0]), np.array([4.0, 1.0, 1.0, 16.0])
    mu1, mu2 = np.zeros(4), np.array([1.0, -2.0, 0.0, 0.5])
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(5.25 + 15.0, rel=1e-12)
    # identity vs a general SPD matrix S: sum_i (1 - sqrt(lambda_i))^2
    g = np.random.default_rng(0)
    q, _ = np.linalg.qr(g.standard_normal((6, 6)))
    lam = np.array([0.1, 0.5, 1.0, 2.0, 4.0, 9.0])
    S = (q * lam) @ q.T
    assert frechet_distance(np.zeros(6), np.eye(6), np.zeros(6), S) == pytest.approx(((1 - np.sqrt(lam)) ** 2).sum(),
                                                                                       rel=1e-10)
    assert frechet_distance(np.ones(6), S, np.ones(6), S) == pytest.approx(0.0, abs=1e-9)
    # from samples: N(0, I) vs N(m, 4 I) in 5 dims -> |m|^2 + 5 (1 - 2)^2
    x, y = g.standard_normal((40000, 5)), 2 * g.standard_normal((40000, 5)) + 0.5
    assert fid_from_features(x, y) == pytest.approx(5 * 0.25 + 5.0, rel=0.02)


@pytest.mark.parametrize("case", ["full", "lowrank", "singular"])
def test_frechet_distance_equals_pytorch_fid(fixture, case):
    """pytorch-fid's calculate_frechet_distance on these stats, incl. its eps fallback for singular products."""
    args = [fixture[f"fd_{case}_{k}"] for k in ("mu1", "sigma1", "mu2", "sigma2")]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ours = frechet_distance(*args)
    assert ours == pytest.approx(float(fixture[f"fd_{case}_value"]), rel=1e-6)
    assert any("singular" in str(x.message) for x in w) == (case == "singular")
    live = peers.pytorch_fid_frechet_distance()
    if live is not None:                                        # the installed pytorch-fid, run here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert ours == pytest.approx(float(live(*args)), rel=1e-6)


def test_frechet_distance_matches_pytorch_fid_on_random_stats():
    live = peers.pytorch_fid_frechet_distance()
    if live is None:
        pytest.skip("pytorch-fid not installed (pip install --no-deps pytorch-fid)")
    g = np.random.default_rng(1)
    for n, F in [(300, 64), (40, 64), (500, 128)]:
        m1, s1 = feature_stats(g.standard_normal((n, F)))
        m2, s2 = feature_stats(g.gamma(2.0, size=(n + 7, F)))
        assert frechet_distance(m1, s1, m2, s2) == pytest.approx(live(m1, s1, m2, s2), rel=1e-6)


def test_fid_needs_more_samples_than_dims_and_valid_shapes():
    g = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"N > F.*N = 8 samples of F = 8"):
        fid_from_features(g.standard_normal((8, 8)), g.standard_normal((100, 8)))
    with pytest.raises(ValueError, match="same feature dimension"):
        fid_from_features(g.standard_normal((20, 3)), g.standard_normal((20, 4)))
    with pytest.raises(ValueError, match=r"sigma2: expected a \(3, 3\)"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        fid_from_features(np.full((20, 2), np.nan), g.standard_normal((20, 2)))


def test_stats_round_trip_and_pytorch_fid_format(tmp_path):
    g = np.random.default_rng(0)
    mu, sigma = feature_stats(g.standard_normal((50, 4)))
    save_stats(str(tmp_path / "s.npz"), mu, sigma)
    m2, s2 = load_stats(str(tmp_path / "s.npz"))
    assert np.array_equal(m2, mu) and np.array_equal(s2, sigma)
    np.savez_compressed(tmp_path / "pf.npz", mu=mu.astype(np.float32), sigma=sigma)   # as pytorch-fid writes
    assert np.allclose(load_stats(str(tmp_path / "pf.npz"))[0], mu, atol=1e-6)
    np.savez(tmp_path / "bad.npz", mean=mu)
    with pytest.raises(ValueError, match=r"expected arrays 'mu' and 'sigma', found keys \['mean'\]"):
        load_stats(str(tmp_path / "bad.npz"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_stats(str(tmp_path / "none.npz"))


# --- KID ------------------------------------------------------------------------------------------------
def _gaussian_moments(mu, cov):
    m2 = cov + np.outer(mu, mu)
    m3 = (np.einsum("a,b,c->abc", mu, mu, mu) + np.einsum("a,bc->abc", mu, cov)
          + np.einsum("b,ac->abc", mu, cov) + np.einsum("c,ab->abc", mu, cov))
    return mu, m2, m3


def exact_mmd2(p, q, d):
    """MMD^2 under (x.y/d + 1)^3 = sum_j C(3, j) (x.y / d)^j: sum_j C(3, j) d^-j |M_j(P) - M_j(Q)|^2,
    with M_j the j-th moment tensors (E (x.y)^j = <M_j(P), M_j(Q)> for independent x, y)."""
    return sum(math.comb(3, j) * d ** -j * ((a - b) ** 2).sum() for j, a, b in zip((1, 2, 3), p, q))


def test_mmd2_unbiased_equals_double_loop():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / 35
    assert mmd2_unbiased(x, y) == pytest.approx((xx + yy - 2 * xy).item(), rel=1e-12)


def test_kid_unbiased_zero_for_same_law_and_exact_mmd_otherwise():
    g = torch.Generator().manual_seed(0)
    d, m, reps = 3, 100, 400
    mu, s = torch.tensor([0.5, 0.0, -0.25], dtype=torch.float64), 1.2
    same, diff, biased = [], [], []
    for _ in range(reps):
        x, y = torch.randn(m, d, generator=g, dtype=torch.float64), torch.randn(m, d, generator=g, dtype=torch.float64)
        same.append(mmd2_unbiased(x, y))
        diff.append(mmd2_unbiased(x, s * y + mu))
        kxx, kyy, kxy = [(a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y))]
        biased.append((kxx.mean() + kyy.mean() - 2 * kxy.mean()).item())      # V-statistic: biased upwards
    se = lambda v: np.std(v) / np.sqrt(reps)  # noqa: E731
    assert abs(np.mean(same)) < 4 * se(same)
    assert np.mean(biased) > 10 * se(biased)                 # the check above can fail: the biased form would
    exact = exact_mmd2(_gaussian_moments(np.zeros(d), np.eye(d)),
                       _gaussian_moments(mu.numpy(), s ** 2 * np.eye(d)), d)
    assert exact > 0.5 and abs(np.mean(diff) - exact) < 4 * se(diff)
    # kid(): mean and std over subsets of two fixed sets
    a, b = torch.randn(3000, d, generator=g), torch.randn(3000, d, generator=g)
    mean, std = kid(a, b, subsets=50, subset_size=500)
    assert abs(mean) < 0.05 * exact and std > 0
    mean2, _ = kid(a, s * b + mu.float(), subsets=50, subset_size=500)
    assert mean2 == pytest.approx(exact, rel=0.1)
    assert kid(a[:50], b, subsets=3, subset_size=1000) == kid(a[:50], b, subsets=3, subset_size=50)  # capped


# --- precision / recall ---------------------------------------------------------------------------------
def _circle(n, lo, hi, g, r=1.0):
    theta = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
    return r * torch.stack([theta.cos(), theta.sin()], 1)


def test_precision_recall_on_toy_manifolds():
    g = torch.Generator().manual_seed(0)
    real = _circle(3000, 0, 2 * math.pi, g)
    # the same law: both near 1 (random gaps between real points can exceed their k-NN radii)
    same = precision_recall(real, _circle(3000, 0, 2 * math.pi, g))
    assert same["precision"] > 0.97 and same["recall"] > 0.97
    half = _circle(2000, 0, math.pi, g)                        # mode dropping: all fakes real, half the circle
    pr = precision_recall(real, half)
    assert pr["precision"] > 0.97 and pr["recall"] == pytest.approx(0.5, abs=0.03)
    junk = torch.cat([_circle(1000, 0, 2 * math.pi, g), _circle(1000, 0, 2 * math.pi, g, r=3.0)])
    pr = precision_recall(real, junk)                          # half the fakes far off the manifold
    assert pr["precision"] == pytest.approx(0.5, abs=0.01) and pr["recall"] > 0.98
    # k-th neighbour radii on a grid: points at spacing h have their 3rd neighbour at 2h (two on each side)
    grid = torch.arange(20, dtype=torch.float64)[:, None] * 0.5
    from scoresde.evaluation.metrics.precision_recall import kth_neighbour_radii
    assert torch.allclose(kth_neighbour_radii(grid, 3)[5:15], torch.full((10,), 1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="k: expected an integer"):
        precision_recall(real[:3], half, k=3)


# --- IS and accuracy ------------------------------------------------------------------------------------
def test_inception_score_closed_forms():
    K, n = 10, 1000
    onehot = 50.0 * torch.eye(K)[torch.arange(n) % K]          # confident and balanced: IS = K
    assert inception_score(onehot, splits=10)[0] == pytest.approx(K, rel=1e-6)
    assert inception_score(torch.zeros(n, K))[0] == pytest.approx(1.0)     # uninformative: IS = 1
    z = torch.randn(n, K, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = torch.softmax(z, 1)
    exact = torch.exp((p * (p.log() - p.mean(0).log())).sum(1).mean()).item()
    assert inception_score(z, splits=1) == (pytest.approx(exact, rel=1e-10), 0.0)
    assert class_accuracy(onehot, torch.arange(n) % K) == 1.0
    assert class_accuracy(onehot, (torch.arange(n) + 1) % K) == 0.0


# --- the Inception network ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "random.pth"
    torch.save(random_inception_state_dict(0), path)
    return str(path)


def _inception_inputs():
    """uint8 images as tests/fixtures/metrics/make_fixtures.py draws them: upsampled and downsampled to 299."""
    a = torch.randint(0, 256, (3, 3, 40, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    b = torch.randint(0, 256, (1, 3, 310, 300), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    return a, b


def test_inception_features_equal_torch_fidelity(fixture, random_inception):
    """Same random state dict, same images: torch-fidelity 0.4.0's "2048" features and "logits_unbiased"."""
    net = load_inception(random_inception)
    live = peers.torch_fidelity_inception_class()
    if live is not None:                                        # the installed torch-fidelity, run here
        live = live("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=random_inception)
    for name, x in zip("ab", _inception_inputs()):
        with torch.no_grad():
            f, z = net(x)
        for ours, ref in ((f, fixture[f"inception_{name}_2048"]), (z, fixture[f"inception_{name}_logits"])):
            assert ours.shape == ref.shape
            assert np.abs(ours.numpy() - ref).max() <= 1e-4 * np.abs(ref).max()
        assert f.std() > 0.1 and (f >= 0).all()                # non-degenerate features: the test can fail
        if live is not None:
            with torch.no_grad():
                lf, lz = live(x)
            assert torch.allclose(f, lf, rtol=1e-5, atol=1e-5) and torch.allclose(z, lz, rtol=1e-5, atol=1e-4)


def test_inception_input_conversion():
    """[-1, 1] samples become the 8-bit images they were made from (EDM's x * 127.5 + 128, floored);
    grey images are repeated to three channels."""
    from scoresde.evaluation.metrics.features import _to_uint8_range
    u = torch.randint(0, 256, (4, 3, 5, 5), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert torch.equal(_to_uint8_range(u.float() / 127.5 - 1), u.float())
    assert torch.equal(_to_uint8_range(u), u.float())
    assert torch.equal(_to_uint8_range(torch.tensor([-2.0, 2.0]).reshape(1, 1, 1, 2))[0, :, 0],
                       torch.tensor([[0.0, 255.0]] * 3))
    grey = torch.rand(2, 1, 4, 4) * 2 - 1
    assert torch.equal(_to_uint8_range(grey), _to_uint8_range(grey.repeat(1, 3, 1, 1)))


def test_tf1_resize_bilinear_formula():
    x = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])
    # 2 -> 4: source = d * 0.5 -> 0, 0.5, 1, 1.5 (clamped to the last pixel)
    out = tf1_resize_bilinear(x, 4)
    row0 = torch.tensor([0.0, 5.0, 10.0, 10.0])
    assert torch.allclose(out[0, 0, 0], row0) and torch.allclose(out[0, 0, 1], row0 + 10)
    assert torch.allclose(out[0, 0, 3], row0 + 20)
    same = torch.rand(1, 3, 5, 5)
    assert torch.equal(tf1_resize_bilinear(same, 5), same)


def test_load_inception_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth.*--inception-weights"):
        load_inception(None)
    with pytest.raises(FileNotFoundError, match="no such file; download"):
        load_inception(str(tmp_path / "missing.pth"))
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="not the FID Inception-v3 state dict"):
        load_inception(str(tmp_path / "wrong.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a readable PyTorch state dict"):
        load_inception(str(tmp_path / "junk.pth"))
    with pytest.raises(KeyError, match="expected one of inception, digits"):
        get_feature_net("vgg")


# --- digits ---------------------------------------------------------------------------------------------
def test_shipped_digits_classifier():
    from safetensors import safe_open
    from scoresde.evaluation.metrics.digits import DIGITS_WEIGHTS
    net = load_digits_classifier()
    x_train, _, x_test, y_test = digits_split()
    assert len(x_test) == 359 and len(x_train) == 1438 and os.path.getsize(DIGITS_WEIGHTS) < 200_000
    with torch.no_grad():
        f, logits = net(x_test)
    acc = class_accuracy(logits, y_test)
    with safe_open(DIGITS_WEIGHTS, "pt") as fh:
        assert float(fh.metadata()["heldout_accuracy"]) == pytest.approx(acc, abs=1e-4)
    assert acc > 0.97 and f.shape == (359, 64)
    assert net(x_train)[0].var(0).mean().item() == pytest.approx(1.0, rel=1e-3)    # the feature scale
    # the floor: held-out vs train
    floor = evaluate(x_test, x_train, features="digits", metrics="fid,pr", progress=False)
    noise = evaluate(torch.rand(359, 1, 8, 8) * 2 - 1, x_train, features="digits", metrics="fid,pr", progress=False)
    assert 0 < floor["fid"] < 4 and noise["fid"] > 10 * floor["fid"]
    assert floor["precision"] > 0.7 and floor["recall"] > 0.6
    assert noise["precision"] < floor["precision"] - 0.3 and noise["recall"] < 0.2


def test_train_digits_classifier_learns_quickly():
    from scoresde.evaluation.metrics.train_digits import _shift, train_digits_classifier
    x_train, y_train, x_test, y_test = digits_split()
    net = train_digits_classifier(x_train[:600], y_train[:600], epochs=8, progress=False, width=8)
    with torch.no_grad():
        assert class_accuracy(net(x_test)[1], y_test) > 0.5                         # chance: 0.1
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(200, 1, 1, 1)
    s = _shift(x, torch.Generator().manual_seed(0))
    assert ((s == x).flatten(1).all(1)).any() and (s == -1).any()                # some unmoved, some padded
    assert all(torch.isin(row[row != -1], x[0]).all() for row in s)


def test_extract_features_batches_and_checks():
    net = get_feature_net("digits")
    x = digits_split()[2][:50]
    f1, z1 = extract_features(net, x, batch_size=7, progress=False)
    f2, z2 = extract_features(net, x, batch_size=50, progress=False)
    assert f1.shape == (50, 64) and z1.shape == (50, 10)
    assert np.allclose(f1, f2, atol=1e-5) and np.allclose(z1, z2, atol=1e-5)
    with pytest.raises(ValueError, match=r"need images of shape \(N, 1, 8, 8\), found examples of shape \(3, 8, 8\)"):
        extract_features(net, torch.zeros(4, 3, 8, 8), progress=False)
    with pytest.raises(ValueError, match="NaN"):
        extract_features(net, torch.full((4, 1, 8, 8), float("nan")), progress=False)
    f, z = extract_features(lambda x: x.flatten(1)[:, :3], torch.randn(10, 2, 2), progress=False)
    assert f.shape == (10, 3) and z is None


# --- evaluate and run_metrics -------------------------------------------------------------------------------
def test_evaluate_with_a_callable_and_stats_reference(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 3, generator=g), torch.randn(500, 3, generator=g) + 1.0
    out = evaluate(x, y, features=lambda v: v, metrics=("fid", "kid", "pr"), progress=False)
    assert out["fid"] == pytest.approx(3.0, rel=0.15) and out["kid"] > 0 and set(out) == {
        "fid", "kid", "kid_std", "precision", "recall"}
    save_stats(str(tmp_path / "ref.npz"), *feature_stats(y.numpy()))
    assert evaluate(x, str(tmp_path / "ref.npz"), features=lambda v: v, metrics="fid", progress=False)["fid"] == \
        pytest.approx(out["fid"], rel=1e-9)
    with pytest.raises(ValueError, match="hold only mu and sigma|holds only mu and sigma"):
        evaluate(x, str(tmp_path / "ref.npz"), features=lambda v: v, metrics="fid,kid", progress=False)
    with pytest.raises(ValueError, match="statistics of 3 features, but"):
        evaluate(x[:, :2], str(tmp_path / "ref.npz"), features=lambda v: v, metrics="fid", progress=False)
    with pytest.raises(ValueError, match="need a classifier's logits"):
        evaluate(x, y, features=lambda v: v, metrics="is", progress=False)
    with pytest.raises(ValueError, match="metrics: expected a list of fid, kid, pr, is, acc"):
        evaluate(x, y, features=lambda v: v, metrics="fid,lpips", progress=False)


def test_run_metrics_per_dataset():
    mix = ss.load_dataset("mixture", size=3000)
    from scoresde.sde.analytic import mode_stats
    out = run_metrics(mix, mix.x[:1000])
    assert out == dict(zip(("mode_weight_tv", "within_mode_std_error"), mode_stats(mix.mixture, mix.x[:1000])))
    assert run_metric_name(mix) == "mode_weight_tv"

    digits = ss.load_dataset("digits")
    x_train, y_train, x_test, y_test = digits_split()
    good = run_metrics(digits, x_test, labels=y_test)
    bad = run_metrics(digits, torch.rand(359, 1, 8, 8) * 2 - 1)
    assert set(good) == {"fid", "kid", "kid_std", "class_accuracy"} and set(bad) == {"fid", "kid", "kid_std"}
    assert good["fid"] < 3 and bad["fid"] > 10 * good["fid"] and good["class_accuracy"] > 0.97
    assert run_metric_name(digits) == "fid"
    with pytest.raises(ValueError, match="N > F"):
        run_metrics(digits, x_test[:64])

    moons = ss.load_dataset("moons", size=3000)
    same, other = run_metrics(moons, moons.x[:1000])["kid"], run_metrics(moons, torch.randn(1000, 2))["kid"]
    assert abs(same) < 0.01 < other and run_metric_name(moons) == "kid"
    images = ss.data.from_array(np.zeros((10, 3, 4, 4), np.uint8))
    assert run_metrics(images, images.x) == {} and run_metric_name(images) is None


def test_reference_cache_follows_the_dataset():
    digits = ss.load_dataset("digits")
    sub = ss.data.Dataset(digits.x[:500].clone(), "digits", labels=digits.labels[:500], kind="images")
    x = digits.x[1000:1400]
    assert run_metrics(digits, x)["fid"] != run_metrics(sub, x)["fid"]
    ref = Reference.from_features(extract_features("digits", sub.x, progress=False)[0])
    assert run_metrics(sub, x)["fid"] == pytest.approx(evaluate(x, ref, features="digits", metrics="fid",
                                                                progress=False)["fid"], rel=1e-12)
