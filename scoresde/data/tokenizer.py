"""Character- and byte-level tokenizers built from the training data and stored in checkpoints.

Token 0 is the end-of-sequence token EOS: sequences shorter than the model's length are padded with it,
and the pad is learned and counted in the loss, as LLaDA pads with EOS (Nie et al. 2025,
arXiv:2502.09992, sec. 2.3), so a sampled sequence ends where its first EOS is. Character tokens
are 1 .. V-1 in the order of the alphabet (the sorted characters of the training text); byte tokens are
1 + the byte value. The mask token of the diffusion process is V (never produced by `encode`).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

__all__ = ["CharTokenizer", "EOS", "OutOfVocabularyError"]

EOS = 0
KINDS = ("char", "byte")


class OutOfVocabularyError(ValueError):
    """Text with a character the tokenizer's alphabet lacks."""


class CharTokenizer:
    """`kind="char"` over `alphabet` (a string of distinct characters), or `kind="byte"` (257 tokens)."""

    def __init__(self, alphabet: str = "", kind: str = "char"):
        if kind not in KINDS:
            raise ValueError(f"tokenizer: expected one of {', '.join(KINDS)}, found {kind!r}")
        if kind == "char":
            if not isinstance(alphabet, str) or not alphabet:
                raise ValueError(f"alphabet: expected a non-empty string of characters, found {alphabet!r}")
            if len(set(alphabet)) != len(alphabet):
                raise ValueError("alphabet: expected distinct characters, found repeats")
        self.kind, self.alphabet = kind, alphabet if kind == "char" else ""
        self._ids = {c: i + 1 for i, c in enumerate(self.alphabet)}

    @classmethod
    def from_text(cls, texts: str | Iterable[str], kind: str = "char") -> "CharTokenizer":
        """The tokenizer of a text (or texts): its sorted distinct characters (kind "char")."""
        if isinstance(texts, str):
            texts = [texts]
        chars = sorted(set().union(*map(set, texts))) if kind == "char" else []
        if kind == "char" and not chars:
            raise ValueError("data: the text is empty; a character tokenizer needs at least one character")
        return cls("".join(chars), kind)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "CharTokenizer":
        return cls(config.get("alphabet", ""), config.get("kind", "char"))

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "alphabet": self.alphabet}

    @property
    def vocab_size(self) -> int:
        """V: EOS plus the characters (or the 256 bytes)."""
        return 257 if self.kind == "byte" else 1 + len(self.alphabet)

    def encode(self, text: str, name: str = "text") -> list[int]:
        """Token ids of `text` (no EOS appended). A character outside the alphabet is a ValueError."""
        if not isinstance(text, str):
            raise TypeError(f"{name}: expected a string, found {type(text).__name__}")
        if self.kind == "byte":
            return [b + 1 for b in text.encode("utf-8")]
        try:
            return [self._ids[c] for c in text]
        except KeyError as e:
            c = e.args[0]
            shown = self.alphabet if len(self.alphabet) <= 40 else self.alphabet[:40] + "..."
            raise OutOfVocabularyError(f"{name}: character {c!r} at position {text.index(c)} is out of the vocabulary "
                             f"(the model knows {len(self.alphabet)} characters: {shown!r})") from None

    def decode(self, ids: Sequence[int], *, stop_at_eos: bool = True, mask: str = "_") -> str:
        """The text of `ids`, up to the first EOS; ids out of range (the mask) print as `mask`."""
        out: list[str] = []
        raw = bytearray()
        for i in (int(v) for v in ids):
            if i == EOS and stop_at_eos:
                break
            if self.kind == "byte":
                raw.extend([i - 1] if 1 <= i <= 256 else mask.encode())
            else:
                out.append(self.alphabet[i - 1] if 1 <= i <= len(self.alphabet) else mask)
        return raw.decode("utf-8", errors="replace") if self.kind == "byte" else "".join(out)
