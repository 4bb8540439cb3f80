"""Token data for sequence models: built-in languages, text files, `.npy` arrays of token ids.

Every loader returns a `TokenData`: a (N, L) int64 tensor of token ids in [0, V), the vocabulary size V,
the tokenizer (text and languages) or None (token arrays), the language (built-in data: exact
validity), and the end-of-sequence id padding short sequences (None when the data has none).

- A built-in language (`brackets`, `sums`, see `languages`): `size` strings drawn from a seed, encoded
  with the language's fixed alphabet and EOS-padded to L (default: the longest string + 1).
- A text file: character tokens (the sorted characters of the text) or bytes. `text_mode="lines"`: each
  non-empty line is one sequence (EOS-terminated, padded; a line longer than L continues in the next
  row); `"stream"`: the whole text cut into rows of L tokens.
- A `.npy` array (N, L) of non-negative integer token ids; V = `vocab_size` or the largest id + 1, at most
  `MAX_VOCAB` (the header is checked against the memory budget before the ids are read).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from scoresde._common.headers import array_headers, load_checked
from scoresde._common.limits import MAX_VOCAB
from scoresde.data.languages import LANGUAGES, Language, get_language
from scoresde.data.tokenizer import EOS, CharTokenizer


__all__ = ["TokenData", "load_tokens", "tokens_from_array", "encode_texts", "split_holdout", "TEXT_MODES"]

TEXT_MODES = ("lines", "stream")
MAX_AUTO_LEN = 256          # seq_len = 0 takes the longest line + 1, up to this


@dataclass
class TokenData:
    x: torch.Tensor                          # (N, L) int64
    vocab_size: int
    name: str
    tokenizer: CharTokenizer | None = None
    language: Language | None = None
    eos_id: int | None = None

    @property
    def seq_len(self) -> int:
        return self.x.shape[1]

    def __len__(self) -> int:
        return self.x.shape[0]

    def decode(self, row) -> str:
        """The text of one row (up to its first EOS), or its ids when there is no tokenizer."""
        if self.tokenizer is None:
            ids = [int(v) for v in row]
            if self.eos_id is not None and self.eos_id in ids:
                ids = ids[:ids.index(self.eos_id)]
            return " ".join(map(str, ids))
        return self.tokenizer.decode(row)

    def is_valid(self, row) -> bool:
        """A built-in language's exact test: the row holds an EOS and the text before it is in the language."""
        if self.language is None:
            raise ValueError(f"data {self.name!r}: validity is defined for the built-in languages only "
                             f"({', '.join(LANGUAGES)})")
        ids = [int(v) for v in row]
        return EOS in ids and self.language.is_valid(self.tokenizer.decode(ids))


def encode_texts(texts: list[str], tokenizer: CharTokenizer, seq_len: int, name: str = "text") -> torch.Tensor:
    """(N, L) rows: each text's tokens then EOS, padded with EOS; a longer text continues in further rows."""
    rows: list[list[int]] = []
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text, name=f"{name} line {i + 1}") + [EOS]
        for k in range(0, len(ids), seq_len):
            piece = ids[k:k + seq_len]
            rows.append(piece + [EOS] * (seq_len - len(piece)))
    return torch.tensor(rows, dtype=torch.long).reshape(-1, seq_len)


def _check_seq_len(seq_len) -> int:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 0:
        raise ValueError(f"seq_len: expected an int >= 0 (0: from the data), found {seq_len!r}")
    return seq_len


def load_tokens(name: str, *, seq_len: int = 0, size: int = 50000, seed: int = 0, tokenizer: str = "char",
                text_mode: str = "lines", vocab_size: int = 0, eos_id: int = -1, max_depth: int = 3,
                digits: int = 2, existing: CharTokenizer | None = None) -> TokenData:
    """Load token data by built-in language name or path. `existing` (a trained model's tokenizer) encodes
    text with that vocabulary instead of building one (characters it lacks are a ValueError)."""
    seq_len = _check_seq_len(seq_len)
    if not isinstance(name, str) or not name:
        raise TypeError(f"data: expected a language name or a path, found {name!r}")
    if name in LANGUAGES:
        lang = get_language(name, max_depth=max_depth, max_len=max(2, seq_len - 1) if seq_len else 16,
                            digits=digits)
        tok = existing or CharTokenizer(lang.alphabet)
        L = seq_len or lang.max_len + 1
        if L < lang.max_len + 1:
            raise ValueError(f"seq_len: {name!r} strings need up to {lang.max_len + 1} tokens with EOS, found {L}")
        texts = lang.sample(size, torch.Generator().manual_seed(seed))
        return TokenData(encode_texts(texts, tok, L, name), tok.vocab_size, name, tok, lang, EOS)
    if not os.path.exists(name):
        raise FileNotFoundError(f"data {name!r}: no such file, and not a built-in language ({', '.join(LANGUAGES)})")
    if os.path.isdir(name):
        raise ValueError(f"data {name!r}: expected a text file or a .npy array of token ids, found a directory")
    if name.lower().endswith(".npy"):
        return _load_npy(name, seq_len, vocab_size, eos_id)
    return _load_text(name, seq_len, tokenizer, text_mode, existing)


def _load_text(path: str, seq_len: int, kind: str, mode: str, existing: CharTokenizer | None) -> TokenData:
    if mode not in TEXT_MODES:
        raise ValueError(f"text_mode: expected one of {', '.join(TEXT_MODES)}, found {mode!r}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"data {path!r}: not UTF-8 text (byte {e.start}); pass a text file, or a .npy array of "
                         "token ids") from None
    tok = existing or CharTokenizer.from_text(text.replace("\n", "") if mode == "lines" else text, kind)
    if mode == "lines":
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines:
            raise ValueError(f"data {path!r}: no non-empty lines")
        L = seq_len or min(max(len(tok.encode(ln, f"{path} line")) for ln in lines) + 1, MAX_AUTO_LEN)
        return TokenData(encode_texts(lines, tok, L, path), tok.vocab_size, path, tok, None, EOS)
    L = seq_len or 64
    ids = tok.encode(text, path)
    if len(ids) < L:
        raise ValueError(f"data {path!r}: {len(ids)} tokens, fewer than one sequence of seq_len = {L}")
    n = len(ids) // L
    return TokenData(torch.tensor(ids[:n * L]).reshape(n, L), tok.vocab_size, path, tok, None, None)


def _load_npy(path: str, seq_len: int, vocab_size: int, eos_id: int) -> TokenData:
    """The header first (objects, a forged size, the memory budget: the ids and their int64 copy), then the ids."""
    headers = array_headers(path)
    if "" not in headers:
        raise ValueError(f"data {path!r}: expected a .npy array of token ids, found an .npz archive")
    a = load_checked(path, "", extra_per_value=8, headers=headers)
    return tokens_from_array(a, path, seq_len=seq_len, vocab_size=vocab_size, eos_id=eos_id)


def tokens_from_array(a, name: str = "array", *, seq_len: int = 0, vocab_size: int = 0, eos_id: int = -1) -> TokenData:
    """TokenData of an (N, L) array or tensor of integer token ids; V = vocab_size or the largest id + 1."""
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if a.dtype.kind not in "iu":
        raise ValueError(f"data {name!r}: expected integer token ids, found dtype {a.dtype}")
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"data {name!r}: expected an array of shape (N, L) of token ids, found shape {a.shape}")
    if seq_len and seq_len != a.shape[1]:
        raise ValueError(f"seq_len: the array {name!r} has rows of {a.shape[1]} tokens, found seq_len = {seq_len}")
    lo, hi = int(a.min()), int(a.max())
    if vocab_size > MAX_VOCAB or (not vocab_size and hi >= MAX_VOCAB):     # V sizes the embedding tables
        what = f"vocab_size = {vocab_size}" if vocab_size else f"its largest token id {hi} (vocab_size = {hi + 1})"
        raise ValueError(f"data {name!r}: {what} is over the largest vocabulary, {MAX_VOCAB} tokens; "
                         "a token id out of any vocabulary (discrete.vocab_size)")
    V = vocab_size or hi + 1
    if lo < 0 or hi >= V:
        raise ValueError(f"data {name!r}: token ids in [{lo}, {hi}], expected [0, {V - 1}] (vocab_size = {V}); "
                         "a token out of the vocabulary")
    if V < 2:
        raise ValueError(f"data {name!r}: a vocabulary of at least 2 tokens is needed, found {V}")
    if eos_id >= V:
        raise ValueError(f"eos_id: expected -1 (none) or an id < vocab_size = {V}, found {eos_id}")
    return TokenData(torch.from_numpy(a.astype(np.int64)), V, name, None, None, eos_id if eos_id >= 0 else None)


def split_holdout(n: int, fraction: float) -> int:
    """Rows kept out of training at the end of the data: ceil(fraction n), at least 1 when fraction > 0
    and n >= 2, never all of them."""
    if fraction <= 0 or n < 2:
        return 0
    return min(max(1, math.ceil(fraction * n)), n - 1)
