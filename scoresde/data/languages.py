"""Built-in synthetic languages whose validity is checked exactly: data for tests, examples, benchmarks.

- `brackets`: balanced strings of two kinds of brackets, `()` and `[]`, nested at most `max_depth`
  deep, of even length 2 .. `max_len`; a Dyck language with a depth bound (the classic probe of a
  sequence model's ability to track nesting, e.g. Hewitt et al. 2020, arXiv:2010.07515). The length is
  uniform over the even lengths and the string uniform among the valid strings of that length.
- `sums`: `a+b=c` with a, b uniform in [0, 10^digits) written without leading zeros and c = a + b:
  every token of c depends on distant tokens (carries), so the task needs the whole context.

A sample is valid when the text before its first EOS is a string of the language (and an EOS exists).
"""
from __future__ import annotations

import re
from typing import Any

import torch

from scoresde._common.registry import Registry
from scoresde._common.validation import check_int


__all__ = ["LANGUAGES", "Language", "Brackets", "Sums", "get_language"]

LANGUAGES = Registry("language")


class Language:
    """A set of strings over `alphabet` with an exact membership test and a sampler."""

    name = ""
    alphabet = ""
    max_len = 0                      # the longest string; sequences need max_len + 1 tokens (EOS)

    def sample(self, n: int, generator: torch.Generator | None = None) -> list[str]:
        raise NotImplementedError

    def is_valid(self, s: str) -> bool:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        raise NotImplementedError


@LANGUAGES.register("brackets")
class Brackets(Language):
    """Balanced `()`/`[]` strings of depth <= max_depth and even length in [2, max_len]."""

    name, alphabet = "brackets", "()[]"
    PAIRS = ("()", "[]")

    def __init__(self, max_depth: int = 3, max_len: int = 16):
        self.max_depth = check_int("max_depth", max_depth)
        self.max_len = check_int("max_len", max_len, minimum=2) // 2 * 2

    def config(self):
        return {"name": self.name, "max_depth": self.max_depth, "max_len": self.max_len}

    def _completions(self, n: int) -> torch.Tensor:
        """N[p, d]: weighted number of ways from position p at depth d to depth 0 at position n (an open
        bracket counts twice: two kinds)."""
        D = self.max_depth
        N = torch.zeros(n + 1, D + 2, dtype=torch.float64)
        N[n, 0] = 1
        for p in range(n - 1, -1, -1):
            N[p, :D] += 2 * N[p + 1, 1:D + 1]                                   # open
            N[p, 1:D + 1] += N[p + 1, :D]                                       # close
        return N

    def sample(self, n, generator=None):
        D = self.max_depth
        lengths = 2 * torch.randint(1, self.max_len // 2 + 1, (n,), generator=generator)
        out = [""] * n
        for m in lengths.unique().tolist():
            rows = (lengths == m).nonzero()[:, 0].tolist()
            N, B = self._completions(m), len(rows)
            depth = torch.zeros(B, dtype=torch.long)
            stack = torch.zeros(B, D + 1, dtype=torch.long)           # stack[:, d]: kind opened to reach depth d
            code = torch.zeros(B, m, dtype=torch.long)                 # index into "()[]"
            for p in range(m):
                w_open = 2 * N[p + 1, (depth + 1).clamp(max=D + 1)] * (depth < D)
                w_close = N[p + 1, (depth - 1).clamp(min=0)] * (depth > 0)
                u = torch.rand(B, generator=generator, dtype=torch.float64)
                opening = u * (w_open + w_close) < w_open              # P(open) = w_open / (w_open + w_close)
                kind = torch.randint(0, 2, (B,), generator=generator)
                top = stack.gather(1, depth[:, None])[:, 0]            # the kind a close must match
                up = (depth + 1).clamp(max=D)[:, None]
                stack.scatter_(1, up, torch.where(opening, kind, stack.gather(1, up)[:, 0])[:, None])
                code[:, p] = torch.where(opening, 2 * kind, 2 * top + 1)
                depth = depth + torch.where(opening, 1, -1)
            for r, c in zip(rows, code.tolist()):
                out[r] = "".join("()[]"[i] for i in c)
        return out

    def is_valid(self, s):
        if not 2 <= len(s) <= self.max_len:
            return False
        stack = []
        for c in s:
            if c in "([":
                stack.append(c)
                if len(stack) > self.max_depth:
                    return False
            elif c in ")]":
                if not stack or "([".index(stack.pop()) != ")]".index(c):
                    return False
            else:
                return False
        return not stack


@LANGUAGES.register("sums")
class Sums(Language):
    """`a+b=c` with a, b < 10^digits (no leading zeros) and c = a + b."""

    name, alphabet = "sums", "+0123456789="

    def __init__(self, digits: int = 2):
        self.digits = check_int("digits", digits)
        self.max_len = 3 * self.digits + 3
        num = rf"(0|[1-9][0-9]{{0,{self.digits - 1}}})"
        self._re = re.compile(rf"^{num}\+{num}=(0|[1-9][0-9]*)$")

    def config(self):
        return {"name": self.name, "digits": self.digits}

    def sample(self, n, generator=None):
        ab = torch.randint(0, 10 ** self.digits, (n, 2), generator=generator).tolist()
        return [f"{a}+{b}={a + b}" for a, b in ab]

    def is_valid(self, s):
        m = self._re.match(s)
        return bool(m) and int(m.group(1)) + int(m.group(2)) == int(m.group(3))


def get_language(name: str, *, max_depth: int = 3, max_len: int = 16, digits: int = 2) -> Language:
    """A built-in language by name with its options (KeyError listing the known names)."""
    cls = LANGUAGES[name]
    return cls(max_depth=max_depth, max_len=max_len) if cls is Brackets else cls(digits=digits)
