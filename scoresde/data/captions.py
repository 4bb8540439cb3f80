"""Captions of data on disk: image-folder metadata files and `.npz` text arrays.

An image folder is captioned the way Hugging Face's `imagefolder` builder reads one: a `metadata.jsonl`
(one JSON object per line) or `metadata.csv` (a header row) whose `file_name` column holds each image's
path relative to the metadata file's own folder (so `images/1.png` points into a sub-folder) and whose
`text` column holds its caption; other columns are ignored. Several metadata files may sit in several
folders (one per split, say); each names images at or below its own folder. Every image of a captioned
folder needs exactly one row.

Reading is bounded: a metadata file's size is checked against the memory budget (what its rows cost as
Python objects) before it is read, it is read once and decoded as strict UTF-8, and every problem (bad
encoding, malformed JSON or CSV, a missing column, a row naming a missing file, a file outside the folder
or a duplicate) is one `ValueError` naming the file and the line. A `.npz` text array is refused by its
header (Python objects, forged sizes, over budget) before it is read.
"""
from __future__ import annotations

import csv
import io
import json
import os

import numpy as np

from scoresde._common.headers import ArrayHeader, check_header, load_checked
from scoresde._common.limits import check_memory

__all__ = ["METADATA_FILES", "TEXT_KEY", "find_metadata", "read_metadata", "captioned_images", "check_text_header",
           "load_texts", "text_array", "check_texts"]

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
TEXT_KEY = "text"              # the caption array of an .npz, the caption column of a metadata file
FILE_KEY = "file_name"         # the image column of a metadata file (Hugging Face imagefolder)
_ROW_COST = 32                 # bytes of Python objects (dicts, str) per byte of metadata, at most
_STR_COST = 64                 # bytes of a Python str beyond its characters (object header), rounded up


def find_metadata(path: str) -> list[str]:
    """The metadata files under the folder `path` (sorted); ValueError when one folder holds both kinds."""
    found = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        here = [n for n in METADATA_FILES if n in names]
        if len(here) > 1:
            raise ValueError(f"data {root!r}: holds both metadata.jsonl and metadata.csv; keep one")
        found += [os.path.join(root, n) for n in here]
    return found


def _decode(path: str) -> str:
    """The file as text: bounded by the memory budget first, then strict UTF-8 (a BOM allowed), the first
    undecodable byte reported with its line."""
    size = os.path.getsize(path)
    check_memory(_ROW_COST * size, f"metadata {path!r} (a {size}-byte file): its rows")
    with open(path, "rb") as f:
        raw = f.read(size + 1)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(f"metadata {path!r} line {line}: not valid UTF-8 (byte {raw[e.start]:#04x} at offset "
                         f"{e.start}); save the file as UTF-8") from None


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:
        raise ValueError(f"the key {dup!r} appears twice")
    return dict(pairs)


def _jsonl_rows(path: str, text: str):
    """(line number, row dict) of each non-blank line of a JSON Lines file."""
    for i, line in enumerate(text.split("\n"), 1):          # not splitlines: U+2028 may sit inside a JSON string
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_no_duplicate_keys)
        except (ValueError, RecursionError) as e:
            msg = "nested too deeply" if isinstance(e, RecursionError) else str(e).splitlines()[0]
            raise ValueError(f"metadata {path!r} line {i}: not a JSON object ({msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"metadata {path!r} line {i}: expected a JSON object with keys {FILE_KEY!r} and "
                             f"{TEXT_KEY!r}, found a {type(row).__name__}")
        yield i, row


def _csv_rows(path: str, text: str):
    """(line number, row dict) of each data row of a CSV file with a header row."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise ValueError(f"metadata {path!r} line 1: empty file; expected a header row with columns "
                             f"{FILE_KEY!r} and {TEXT_KEY!r}")
        dup = next((h for h in header if header.count(h) > 1), None)
        if dup is not None:
            raise ValueError(f"metadata {path!r} line 1: the column {dup!r} appears twice in the header")
        line = reader.line_num
        for fields in reader:
            if fields and len(fields) != len(header):
                raise ValueError(f"metadata {path!r} line {line + 1}: expected {len(header)} fields as in the "
                                 f"header, found {len(fields)}")
            if fields:
                yield line + 1, dict(zip(header, fields))
            line = reader.line_num
    except csv.Error as e:
        raise ValueError(f"metadata {path!r} line {reader.line_num}: malformed CSV ({e})") from None


def read_metadata(path: str, text_column: str = TEXT_KEY, extensions: tuple[str, ...] = ()) -> list[tuple[str, str, int]]:
    """(image path, caption, line number) of each row of one metadata file, the image path resolved against
    the file's folder. ValueError naming the file and line for a missing column, a value that is not a
    string, a path that is absolute or leaves the folder, a row naming a missing file or one whose name does
    not end in one of `extensions` (when given), or an image named twice."""
    text = _decode(path)
    rows = _jsonl_rows(path, text) if path.endswith(".jsonl") else _csv_rows(path, text)
    folder = os.path.dirname(os.path.abspath(path))
    out, seen = [], {}
    for line, row in rows:
        where = f"metadata {path!r} line {line}"
        for key in (FILE_KEY, text_column):
            if key not in row:
                raise ValueError(f"{where}: no {key!r} column (found {sorted(row)[:8]}); the Hugging Face "
                                 f"imagefolder convention is {FILE_KEY!r} (image path) and {TEXT_KEY!r} (caption)")
            if not isinstance(row[key], str):
                raise ValueError(f"{where}: {key!r} must be a string, found {type(row[key]).__name__} "
                                 f"{str(row[key])[:40]!r}")
        name = row[FILE_KEY]
        full = os.path.normpath(os.path.join(folder, name))
        if not name or os.path.isabs(name) or os.path.commonpath([folder, full]) != folder:
            raise ValueError(f"{where}: {FILE_KEY} {name[:80]!r} must be a path inside the metadata file's folder")
        if extensions and not name.lower().endswith(extensions):
            raise ValueError(f"{where}: {FILE_KEY} {name[:80]!r} is not an image ({', '.join(extensions)})")
        if not os.path.isfile(full):
            raise ValueError(f"{where}: {FILE_KEY} {name[:80]!r}: no such file")
        if full in seen:
            raise ValueError(f"{where}: {FILE_KEY} {name[:80]!r} is already captioned on line {seen[full]}")
        seen[full] = line
        out.append((full, row[text_column], line))
    if not out:
        raise ValueError(f"metadata {path!r}: no rows; expected one row per image with {FILE_KEY!r} and "
                         f"{text_column!r}")
    return out


def captioned_images(path: str, images: list[str], text_column: str = TEXT_KEY,
                     extensions: tuple[str, ...] = ()) -> list[str] | None:
    """The captions of `images` (absolute paths under the folder `path`, in that order) from the folder's
    metadata files, or None when it has none. ValueError when an image has no row (naming the first such
    image) or two metadata files caption the same image."""
    files = find_metadata(path)
    if not files:
        return None
    captions: dict[str, tuple[str, str, int]] = {}
    for meta in files:
        for full, text, line in read_metadata(meta, text_column, extensions):
            if full in captions:
                other, first = captions[full][0], captions[full][2]
                raise ValueError(f"metadata {meta!r} line {line}: {os.path.relpath(full, path)!r} is already "
                                 f"captioned by {other!r} line {first}")
            captions[full] = (meta, text, line)
    missing = [f for f in images if os.path.abspath(f) not in captions]
    if missing:
        raise ValueError(f"data {path!r}: {len(missing)} of {len(images)} images have no row in "
                         f"{', '.join(os.path.relpath(m, path) for m in files)}, e.g. "
                         f"{os.path.relpath(missing[0], path)!r}; caption every image or move it out")
    return [captions[os.path.abspath(f)][1] for f in images]


def check_texts(texts, n: int, name: str = "data") -> list[str]:
    """Captions as a list of N strings (a list/tuple of str or a numpy string array), one per example."""
    if isinstance(texts, np.ndarray) and texts.dtype.kind == "U" and texts.ndim == 1:
        texts = texts.tolist()
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(f"data {name}: texts must be a list of strings (one caption per example), found "
                        f"{type(texts).__name__}")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"data {name}: texts[{bad}] must be a string, found {type(texts[bad]).__name__}")
    if len(texts) != n:
        raise ValueError(f"data {name}: {len(texts)} captions for {n} examples")
    return list(texts)


# --- .npz text arrays -------------------------------------------------------------------------------------------
def check_text_header(h: ArrayHeader, n: int | None = None) -> None:
    """Refuse (ValueError naming the file) a text array that is not a 1-D array of strings (numpy `str_` or
    UTF-8 `bytes_`), not one per example (`n`), or over the memory budget as Python strings."""
    src = f"data {h.path!r}: array {h.key!r}"
    if h.dtype.kind not in ("U", "S"):
        kind = "Python objects (never unpickled)" if h.dtype.hasobject else f"dtype {h.dtype}"
        raise ValueError(f"{src}: expected captions as a string array (np.array(list_of_str), dtype <U...), "
                         f"found {kind}")
    if len(h.shape) != 1:
        raise ValueError(f"{src}: expected one caption per example, shape (N,), found shape {h.shape}")
    if n is not None and h.shape[0] != n:
        raise ValueError(f"{src}: {h.shape[0]} captions for {n} examples")
    # the array itself, then one Python str per caption (its characters as UTF-8 at most 4 bytes each)
    check_header(h, extra_per_value=_STR_COST + 4 * max(h.dtype.itemsize // (4 if h.dtype.kind == "U" else 1), 1))


def load_texts(path: str, headers: dict[str, ArrayHeader], n: int) -> list[str]:
    """The captions (array `text`) of the `.npz` at `path`, one per example, as Python strings."""
    h = headers[TEXT_KEY]
    check_text_header(h, n)
    arr = load_checked(path, TEXT_KEY, headers=headers)
    if arr.dtype.kind == "U":
        return [str(s) for s in arr]
    out = []
    for i, s in enumerate(arr):
        try:
            out.append(bytes(s).decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError(f"data {path!r}: array {TEXT_KEY!r} entry {i} is not valid UTF-8; save captions as "
                             "a str array (dtype <U...)") from None
    return out


def text_array(texts) -> np.ndarray:
    """Captions as the string array an `.npz` stores (`np.savez(path, x=x, text=text_array(texts))`)."""
    return np.asarray([str(t) for t in texts], dtype=np.str_)
