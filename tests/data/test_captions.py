"""Captioned data: image folders with metadata.jsonl / metadata.csv (Hugging Face imagefolder), .npz text
arrays, the built-in digitpairs (captions reproducible and consistent with the measured images), and one
clear error for every bad or hostile input (hostile files loaded in a child under an address-space limit)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde.data.captions import text_array
from scoresde.data.datasets import check_data_source, example_shape, from_array, load_dataset
from scoresde.data import digitpairs as dp
from scoresde.evaluation.metrics.digits import digits_split


def _images(folder, names, size=4):
    """Grey PNGs `names` (relative paths) under `folder`, image i filled with the value 10 i."""
    for i, n in enumerate(names):
        p = folder / n
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size, size), 10 * i, dtype=np.uint8)).save(p)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


# --- image folders ---------------------------------------------------------------------------------------------
def test_jsonl_folder_aligns_captions_with_images(tmp_path):
    _images(tmp_path, ["b.png", "a.png", "sub/c.png"])
    _jsonl(tmp_path / "metadata.jsonl", [{"file_name": "sub/c.png", "text": "third", "extra": [1, 2]},
                                         {"file_name": "a.png", "text": "ünïcode ✓ \u2028 line"},
                                         {"file_name": "b.png", "text": "first"}])
    ds = load_dataset(str(tmp_path))
    # files sorted by path: a.png (value 10), b.png (0), sub/c.png (20); texts follow their image
    assert ds.texts == ["ünïcode ✓ \u2028 line", "first", "third"]
    assert ds.x[:, 0, 0, 0].tolist() == pytest.approx([10 / 127.5 - 1, -1.0, 20 / 127.5 - 1])
    assert ds.labels is None and ds.shape == (1, 4, 4)
    assert check_data_source(str(tmp_path)) == "images"


def test_csv_folder_with_split_subfolders(tmp_path):
    _images(tmp_path, ["train/images/x.png", "train/images/y.png", "test/z.png"])
    (tmp_path / "train" / "metadata.csv").write_text('file_name,text,score\nimages/x.png,"a, quoted ""x""",1\n'
                                                     "images/y.png,plain y,2\n", encoding="utf-8")
    (tmp_path / "test" / "metadata.csv").write_text("text,file_name\nzed,z.png\n", encoding="utf-8")
    ds = load_dataset(str(tmp_path))
    assert ds.texts == ["zed", 'a, quoted "x"', "plain y"]          # test/z, train/images/x, train/images/y
    assert ds.labels.tolist() == [0, 1, 1] and ds.classes == ["test", "train/images"]


def test_folder_without_metadata_loads_as_before(tmp_path):
    _images(tmp_path, ["cat/a.png", "dog/b.png"])
    ds = load_dataset(str(tmp_path))
    assert ds.texts is None and ds.labels.tolist() == [0, 1]


@pytest.mark.parametrize("name, content, match", [
    ("metadata.jsonl", '{"file_name": "a.png", "text": "ok"}\n{"file_name": "gone.png", "text": "x"}\n',
     r"line 2: file_name 'gone.png': no such file"),
    ("metadata.jsonl", '{"file_name": "a.png", "caption": "no text"}\n', r"line 1: no 'text' column"),
    ("metadata.jsonl", '{"file_name": "a.png", "text": 3}\n', r"line 1: 'text' must be a string"),
    ("metadata.jsonl", '{"file_name": "a.png", "text": "x"}\n\n{"file_name": "./a.png", "text": "y"}\n',
     r"line 3: file_name './a.png' is already captioned on line 1"),
    ("metadata.jsonl", '{"file_name": "a.png", "text": "x"}\n{"file_name": "a.png"\n', r"line 2: not a JSON object"),
    ("metadata.jsonl", '["a.png", "x"]\n', r"line 1: expected a JSON object"),
    ("metadata.jsonl", '{"file_name": "a.png", "text": "x", "text": "y"}\n', r"line 1: .*'text' appears twice"),
    ("metadata.jsonl", '{"file_name": "../a.png", "text": "x"}\n', r"line 1: file_name '../a.png' must be a path "
     r"inside"),
    ("metadata.jsonl", '{"file_name": "/etc/passwd.png", "text": "x"}\n', r"line 1: .* must be a path inside"),
    ("metadata.jsonl", '{"file_name": "notes.txt", "text": "x"}\n', r"line 1: file_name 'notes.txt' is not an image"),
    ("metadata.jsonl", "[" * 100000 + "\n", r"line 1: not a JSON object \(nested too deeply\)"),
    ("metadata.csv", "file_name,text\na.png,x\nb.png\n", r"line 3: expected 2 fields as in the header, found 1"),
    ("metadata.csv", "file_name,text,text\na.png,x,y\n", r"line 1: the column 'text' appears twice"),
    ("metadata.csv", "file_name,caption\na.png,x\n", r"line 2: no 'text' column"),
    ("metadata.csv", "", r"line 1: empty file"),
    ("metadata.csv", 'file_name,text\na.png,"open quote\n', r"line \d: malformed CSV"),
])
def test_bad_metadata_is_one_error_naming_file_and_line(tmp_path, name, content, match):
    _images(tmp_path, ["a.png"])
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / name).write_text(content, encoding="utf-8")
    for fn in (load_dataset, check_data_source):
        with pytest.raises(ValueError, match=match) as e:
            fn(str(tmp_path))
        assert name in str(e.value) and "\n" not in str(e.value)


def test_bad_encoding_names_the_line(tmp_path):
    _images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "metadata.jsonl").write_bytes(b'{"file_name": "a.png", "text": "ok"}\n'
                                              b'{"file_name": "b.png", "text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl' line 2: not valid UTF-8 \(byte 0xe9"):
        load_dataset(str(tmp_path))


def test_uncaptioned_image_and_two_kinds_of_metadata(tmp_path):
    _images(tmp_path, ["a.png", "b.png"])
    _jsonl(tmp_path / "metadata.jsonl", [{"file_name": "a.png", "text": "x"}])
    with pytest.raises(ValueError, match=r"1 of 2 images have no row in metadata.jsonl, e.g. 'b.png'"):
        load_dataset(str(tmp_path))
    (tmp_path / "metadata.csv").write_text("file_name,text\nb.png,y\n")
    with pytest.raises(ValueError, match="holds both metadata.jsonl and metadata.csv"):
        load_dataset(str(tmp_path))


# --- .npz text arrays ------------------------------------------------------------------------------------------
def test_npz_with_text(tmp_path):
    x = np.random.default_rng(0).normal(size=(3, 1, 2, 2)).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x, text=text_array(["one", "twö", ""]), y=np.arange(3))
    ds = load_dataset(str(tmp_path / "c.npz"))
    assert ds.texts == ["one", "twö", ""] and ds.labels.tolist() == [0, 1, 2] and ds.shape == (1, 2, 2)
    np.savez(tmp_path / "b.npz", x=x, text=np.array([b"a", b"b", b"c"]))            # bytes: UTF-8
    assert load_dataset(str(tmp_path / "b.npz")).texts == ["a", "b", "c"]
    np.savez(tmp_path / "only.npz", images=x, text=text_array("abc"))              # text is never the data
    assert load_dataset(str(tmp_path / "only.npz")).shape == (1, 2, 2)
    assert example_shape(str(tmp_path / "only.npz")) == (1, 2, 2)


@pytest.mark.parametrize("text, match", [
    (np.array(["a", "b"]), r"2 captions for 3 examples"),
    (np.array([["a"], ["b"], ["c"]]), r"one caption per example, shape \(N,\), found shape \(3, 1\)"),
    (np.arange(3), r"expected captions as a string array .* found dtype int64"),
    (np.array([b"\xff", b"b", b"c"]), r"entry 0 is not valid UTF-8"),
])
def test_bad_npz_text(tmp_path, text, match):
    np.savez(tmp_path / "t.npz", x=np.zeros((3, 2), np.float32), text=text)
    with pytest.raises(ValueError, match=match):
        load_dataset(str(tmp_path / "t.npz"))


def test_object_text_array_is_never_unpickled(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.zeros((2, 2), np.float32), text=np.array(["a", None], dtype=object))
    for fn in (load_dataset, check_data_source):
        with pytest.raises(ValueError, match=r"array 'text': .* Python objects \(never unpickled\)"):
            fn(str(tmp_path / "o.npz"))


def test_from_array_texts():
    assert from_array(np.zeros((2, 3)), texts=("a", "b")).texts == ["a", "b"]
    with pytest.raises(ValueError, match="data array: 1 captions for 2 examples"):
        from_array(np.zeros((2, 3)), texts=["a"])
    with pytest.raises(TypeError, match=r"texts\[1\] must be a string, found int"):
        from_array(np.zeros((2, 3)), texts=["a", 1])


# --- hostile files, in a child under RLIMIT_AS ------------------------------------------------------------------
_CHILD = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
import scoresde as ss
for p in sys.argv[1:]:
    try:
        ss.load_dataset(p)
        print(json.dumps({"path": p, "outcome": "loaded"}))
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(json.dumps({"path": p, "outcome": "clean", "message": str(e)}))
    except BaseException as e:
        print(json.dumps({"path": p, "outcome": type(e).__name__, "message": str(e)[:200]}))
"""


def _forged_npz(path, text_header: bytes):
    """An .npz with a small x and a `text` member whose npy header claims what `text_header` says, and no data."""
    import zipfile
    import io
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 2), np.float32))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", buf.getvalue())
        head = text_header + b" " * (118 - len(text_header)) + b"\n"
        z.writestr("text.npy", b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little") + head)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS bounds the child on Linux only")
def test_hostile_caption_files_are_refused_in_one_line(tmp_path):
    files = {}
    files["huge_count.npz"] = lambda p: _forged_npz(p, b"{'descr': '<U8', 'fortran_order': False, 'shape': (2,), }"
                                                    .replace(b"(2,)", b"(100000000000,)"))
    files["forged.npz"] = lambda p: _forged_npz(p, b"{'descr': '<U8', 'fortran_order': False, 'shape': (2,), }")
    for name, make in files.items():
        make(str(tmp_path / name))
    deep = tmp_path / "deep"
    _images(deep, ["a.png"])
    (deep / "metadata.jsonl").write_text("[" * 500000 + "\n")
    big = tmp_path / "big"                                              # captions over a tiny memory budget
    _images(big, ["a.png"])
    _jsonl(big / "metadata.jsonl", [{"file_name": "a.png", "text": "x" * 200000}])
    np.savez_compressed(tmp_path / "long.npz", x=np.zeros((2, 2), np.float32), text=text_array(["y" * 100000] * 2))
    paths = [str(tmp_path / n) for n in files] + [str(deep)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda ps, e: subprocess.run([sys.executable, "-c", _CHILD, *ps], capture_output=True, text=True,  # noqa
                                       env=e, timeout=300)
    out = run(paths, env)
    recs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(recs) == len(paths), out.stderr[-2000:]
    for r in recs:
        assert r["outcome"] == "clean" and "\n" not in r["message"] and os.path.basename(r["path"]) in r["message"], r
    assert "100000000000 captions for 2 examples" in recs[0]["message"], recs
    assert "claims" in recs[1]["message"] and "nested too deeply" in recs[2]["message"], recs
    out = run([str(big), str(tmp_path / "long.npz")], {**env, "SCORESDE_MEMORY_BUDGET": "1M"})
    recs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["outcome"] for r in recs] == ["clean"] * 2, recs
    assert "metadata.jsonl" in recs[0]["message"] and "memory budget" in recs[0]["message"], recs
    assert "long.npz" in recs[1]["message"] and "array 'text'" in recs[1]["message"], recs
    assert "memory budget" in recs[1]["message"], recs


# --- the built-in digitpairs -----------------------------------------------------------------------------------
def test_digitpairs_is_registered_and_reproducible():
    ds = load_dataset("digitpairs", size=300, seed=3)
    assert ds.x.shape == (300, 1, 16, 32) and len(ds.texts) == 300 and ds.kind == "images"
    assert ds.x.min() >= -1 and ds.x.max() <= 1 and example_shape("digitpairs") == (1, 16, 32)
    again = load_dataset("digitpairs", size=300, seed=3)
    assert torch.equal(ds.x, again.x) and ds.texts == again.texts
    other = load_dataset("digitpairs", size=300, seed=4)
    assert ds.texts != other.texts
    assert check_data_source("digitpairs") == "builtin"


def test_digitpairs_captions_match_the_digits_drawn():
    """Every caption parses back to the digits whose labels the canvas was made of, in order; both phrasings and
    both caption kinds (with and without attributes) occur."""
    ds = dp.digitpairs(400, torch.Generator().manual_seed(0))
    parsed = [dp.parse_caption(t) for t in ds.texts]
    assert [10 * p.left.digit + p.right.digit for p in parsed] == ds.labels.tolist()
    assert any(" left of " in t for t in ds.texts) and any(" right of " in t for t in ds.texts)
    named = [p.left.size is not None for p in parsed]
    assert 0.35 < np.mean(named) < 0.65
    assert all((p.left.size is None) == (p.right.size is None) for p in parsed)


def test_digitpairs_attributes_are_those_measured():
    """The named sizes and weights are what an independent reading of each half gives: the ink height (rows
    with a pixel > 0), and the ink of the half brought back to 8x8 against the digit's tertiles."""
    ds = dp.digitpairs(400, torch.Generator().manual_seed(1))
    for t, x in zip(ds.texts, ds.x):
        p = dp.parse_caption(t)
        for glyph, half in ((p.left, x[..., :16]), (p.right, x[..., 16:])):
            rows = torch.nonzero((half[0] > 0).any(1)).flatten()
            height = int(rows[-1] - rows[0] + 1)
            assert height <= 12 or height >= 15                          # small glyphs 12 rows, large 16
            if glyph.size is not None:
                assert glyph.size == ("small" if height <= 14 else "large")
            if glyph.weight is not None:
                g = half[None] if height > 14 else torch.nn.functional.interpolate(
                    half[None, :, 2:14, 2:14], size=(16, 16), mode="bilinear", align_corners=False)
                ink = float(((dp.to_digits8(g) + 1) / 2).mean())
                lo, hi = dp.weight_thresholds()[glyph.digit].tolist()
                assert (ink > hi) if glyph.weight == "bold" else (ink < lo)


def test_digitpairs_large_halves_give_back_their_digits():
    """A large half brought back to 8x8 is the source digit (the inverse of the upsampling), and the weight
    tertiles split each digit's ink in thirds."""
    x8 = load_dataset("digits").x[:50]
    half = dp.render_half(x8, torch.zeros(50, dtype=torch.bool))
    m = dp.measure(half)
    assert torch.allclose(m["glyph"], x8, atol=1e-5) and not m["small"].any()
    small = dp.measure(dp.render_half(x8, torch.ones(50, dtype=torch.bool)))
    assert small["small"].all() and (small["height"] == 12).all()
    ds = load_dataset("digits")
    ink = ((ds.x + 1) / 2).mean((1, 2, 3))
    w = dp.weight_class(ink, ds.labels)
    for v in (-1, 0, 1):
        assert abs((w == v).double().mean().item() - 1 / 3) < 0.03


def test_digitpairs_splits_use_the_classifier_split():
    """The test split is built from the classifier's held-out digits only, the train split from the rest."""
    train, _, test, _ = digits_split()
    ds = dp.digitpairs(60, torch.Generator().manual_seed(0), split="test")
    pool = {tuple(v.flatten().tolist()) for v in test}
    m = dp.measure(ds.x[..., :16])
    large = ~m["small"]
    assert large.any() and all(tuple(v.flatten().tolist()) in pool
                               for v in (m["glyph"][large] * 8).round() / 8)
    with pytest.raises(ValueError, match="split: expected 'train' or 'test', found 'val'"):
        dp.digitpairs(2, split="val")


def test_digitpairs_size_is_bounded_before_drawing(monkeypatch):
    monkeypatch.setenv("SCORESDE_MEMORY_BUDGET", "64M")
    with pytest.raises(ValueError, match="data digitpairs: 10000000 canvases needs about .* over the memory budget"):
        load_dataset("digitpairs", size=10_000_000)


@pytest.mark.parametrize("caption, left, right", [
    ("three left of eight", (3, None, None), (8, None, None)),
    ("eight right of three", (3, None, None), (8, None, None)),
    ("a small seven right of a bold one", (1, None, "bold"), (7, "small", None)),
    ("  A Large Thin Two left of a small bold zero ", (2, "large", "thin"), (0, "small", "bold")),
])
def test_parse_caption(caption, left, right):
    p = dp.parse_caption(caption)
    assert (p.left.digit, p.left.size, p.left.weight) == left and (p.right.digit, p.right.size, p.right.weight) == right


@pytest.mark.parametrize("caption, match", [
    ("three above eight", "expected '<digit> left of <digit>'"),
    ("a huge three left of eight", "unexpected word 'huge'"),
    ("three left of ten", "expected a digit word"),
])
def test_parse_caption_errors(caption, match):
    with pytest.raises(ValueError, match=match):
        dp.parse_caption(caption)
