"""Datasets: built-ins, digits, arrays of any rank, image folders, and clear errors on bad data."""
import numpy as np
import pytest
import torch

from scoresde.sde.analytic import mode_stats
from scoresde.data.datasets import list_datasets, load_dataset


@pytest.mark.parametrize("name", ["mixture", "moons", "swissroll", "checkerboard", "rings"])
def test_builtin_2d(name):
    ds = load_dataset(name, size=2000, seed=1)
    assert ds.x.shape == (2000, 2) and ds.x.dtype == torch.float32 and ds.kind == "points"
    assert torch.isfinite(ds.x).all() and 0.2 < ds.x.abs().max() < 3
    assert torch.equal(ds.x, load_dataset(name, size=2000, seed=1).x)
    assert not torch.equal(ds.x, load_dataset(name, size=2000, seed=2).x)


def test_mixture_carries_its_law():
    ds = load_dataset("mixture", size=20000)
    tv, err = mode_stats(ds.mixture, ds.x)
    assert tv < 0.02 and err < 0.05


def test_checkerboard_fills_dark_squares_only():
    x = load_dataset("checkerboard", size=5000).x * 2          # back to [-2, 2]
    assert ((torch.floor(x[:, 0]) + torch.floor(x[:, 1])) % 2 == 0).all()


def test_digits():
    ds = load_dataset("digits")
    assert ds.x.shape == (1797, 1, 8, 8) and ds.x.min() == -1 and ds.x.max() == 1
    assert ds.labels.shape == (1797,) and set(ds.labels.tolist()) == set(range(10)) and ds.levels == 17
    assert set(list_datasets()) >= {"mixture", "moons", "swissroll", "checkerboard", "rings", "digits"}


def test_arrays_of_any_rank(tmp_path):
    a = np.random.default_rng(0).normal(size=(10, 3, 4, 5)).astype(np.float64)
    np.save(tmp_path / "a.npy", a)
    ds = load_dataset(str(tmp_path / "a.npy"))
    assert ds.shape == (3, 4, 5) and torch.allclose(ds.x, torch.from_numpy(a).float())
    np.savez(tmp_path / "b.npz", x=a[:, 0, 0], y=np.arange(10))
    ds = load_dataset(str(tmp_path / "b.npz"))
    assert ds.shape == (5,) and ds.labels.tolist() == list(range(10))
    np.save(tmp_path / "u.npy", np.array([[0, 255]], dtype=np.uint8))
    assert load_dataset(str(tmp_path / "u.npy")).x.tolist() == [[-1.0, 1.0]]


def test_image_folder(tmp_path):
    from PIL import Image
    for cls, value in (("cat", 0), ("dog", 255)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("L", (6, 5), value).save(tmp_path / cls / f"{i}.png")
    ds = load_dataset(str(tmp_path))
    assert ds.x.shape == (6, 1, 5, 6) and ds.labels.tolist() == [0, 0, 0, 1, 1, 1] and ds.classes == ["cat", "dog"]
    assert ds.x[0].eq(-1).all() and ds.x[-1].eq(1).all()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "cat" / "odd.png")
    with pytest.raises(ValueError, match="different sizes"):
        load_dataset(str(tmp_path))
    assert load_dataset(str(tmp_path), image_size=4).x.shape == (7, 3, 4, 4)


@pytest.mark.parametrize("array, match", [
    (np.array([1.0, np.nan, 2.0]).reshape(3, 1), "NaN or infinite"),
    (np.array([[np.inf, 0.0]]), "NaN or infinite"),
    (np.arange(5.0), "at least 2 dims"),
    (np.float64(3.0), "at least 2 dims"),
    (np.array(["a", "b"]).reshape(2, 1), "real numbers"),
])
def test_bad_arrays(tmp_path, array, match):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ValueError, match=match):
        load_dataset(str(tmp_path / "bad.npy"))


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a built-in dataset"):
        load_dataset(str(tmp_path / "missing.npy"))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="not a readable"):
        load_dataset(str(tmp_path / "junk.npy"))
    (tmp_path / "x.txt").write_text("1 2")
    with pytest.raises(ValueError, match="expected a .npy/.npz"):
        load_dataset(str(tmp_path / "x.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_dataset(str(tmp_path / "empty"))
