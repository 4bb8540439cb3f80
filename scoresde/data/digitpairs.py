"""`digitpairs`: the built-in captioned dataset, two digits side by side, described in words.

Each example is a 1x16x32 canvas in [-1, 1]: two of scikit-learn's 8x8 digits (the built-in `digits`),
each upsampled bilinearly to its 16x16 half as `digits32` does (`align_corners=False`), either filling
the half ("large") or drawn 12x12 in its centre ("small", the rest background -1). Its caption names the
digits in order, and half of the captions also the measured attributes of each:

    "three left of eight"          "eight right of three"          (the same canvas)
    "a small bold seven right of a large one"

so the text carries more than a label (100 ordered pairs, sizes, stroke weights) and word order matters
("three left of eight" is not "eight left of three").

Attributes are measured from the rendered half, never copied from how it was drawn (`measure`):
- size: the ink height, the number of rows from the first to the last that hold a pixel above 0
  (ink > 1/2); "small" when at most 14 of 16 (a small glyph measures 12, a large one 16);
- glyph: the half brought back to 8x8 as the data were built: a small glyph's central 12x12 resized
  bilinearly to 16x16 first, then the least-squares inverse of the bilinear x2 upsampling (exact on the
  data: a large glyph gives back its 8x8 digit to rounding);
- weight: the ink mass of the 8x8 glyph, mean((x + 1) / 2), against the digit's own tertiles over the
  1797 built-in digits (`weight_thresholds`): "thin" below the lower, "bold" above the upper, unnamed in
  between (so a bold one and a bold eight are bold for a one and for an eight).

Splits are those of the shipped digits classifier (`scoresde.metrics.digits_split`): "train" draws from
the last 1438 digits, "test" from the first 359 (the classifier's held-out digits), so the classifier
reads test canvases as it reads unseen digits. Every choice (digits, sizes, phrasing, whether attributes
are named) is drawn from the `generator`, so a seed fixes the dataset.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scoresde._common.limits import check_memory
from scoresde.data.datasets import DATASETS, Dataset, _SHAPES, digits

__all__ = ["WORDS", "SIZES", "WEIGHTS", "CANVAS", "Glyph", "PairCaption", "render_half", "make_canvas", "halves",
           "measure", "weight_thresholds", "weight_class", "format_caption", "parse_caption", "digitpairs",
           "to_digits8", "digits_test_count"]

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SIZES = ("small", "large")
WEIGHTS = ("thin", "bold")            # the middle tertile is not named
CANVAS = (1, 16, 32)
HALF, SMALL_SIDE, SMALL_MAX_HEIGHT = 16, 12, 14
_SHAPES["digitpairs"] = CANVAS


def digits_test_count() -> int:
    """The held-out digits of the classifier's split: the first 20% (359 of 1797)."""
    return len(digits()) // 5


# --- rendering and its inverse ---------------------------------------------------------------------------------
def _up(x: torch.Tensor, side: int) -> torch.Tensor:
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False).clamp(-1.0, 1.0)


def render_half(x8: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """(B, 1, 8, 8) digits -> (B, 1, 16, 16) halves: bilinear to 16x16 (large) or 12x12 centred (small)."""
    large = _up(x8.float(), HALF)
    s = torch.full_like(large, -1.0)
    o = (HALF - SMALL_SIDE) // 2
    s[..., o:o + SMALL_SIDE, o:o + SMALL_SIDE] = _up(x8.float(), SMALL_SIDE)
    return torch.where(small.reshape(-1, 1, 1, 1).bool(), s, large)


def make_canvas(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Two (B, 1, 16, 16) halves -> (B, 1, 16, 32) canvases, `left` on the left."""
    return torch.cat([left, right], dim=-1)


def halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, 16, 32) canvases -> their (left, right) (B, 1, 16, 16) halves."""
    if x.ndim != 4 or tuple(x.shape[1:]) != CANVAS:
        raise ValueError(f"samples: expected digit-pair canvases of shape (N, {', '.join(map(str, CANVAS))}), found "
                         f"shape {tuple(x.shape)}")
    return x[..., :HALF], x[..., HALF:]


@functools.lru_cache(maxsize=None)
def _inverse_up(n: int = 8, factor: int = 2) -> torch.Tensor:
    """(n, factor n): the least-squares inverse D of 1-D linear upsampling U (align_corners=False): D U = I."""
    eye = torch.eye(n, dtype=torch.float64)[:, None, :]
    U = F.interpolate(eye, scale_factor=factor, mode="linear", align_corners=False)[:, 0].T      # (factor n, n)
    return torch.linalg.pinv(U)


def to_digits8(x16: torch.Tensor) -> torch.Tensor:
    """(B, 1, 16, 16) -> (B, 1, 8, 8): x8 = D x16 D^T, the inverse of the bilinear x2 upsampling."""
    D = _inverse_up()
    return (D @ x16.double() @ D.T).float().clamp(-1.0, 1.0)


def measure(half: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a (B, 1, 16, 16) half shows: "height" (B,) ink rows, "small" (B,) bool, "glyph" (B, 1, 8, 8) the digit
    brought back to 8x8 (see the module docstring), "ink" (B,) its mean ink in [0, 1]."""
    x = half.detach().float().clamp(-1.0, 1.0)
    rows = (x[:, 0] > 0).any(-1)                                                    # (B, 16) rows holding ink
    any_ink = rows.any(1)
    first = rows.float().argmax(1)
    last = HALF - 1 - rows.flip(1).float().argmax(1)
    height = torch.where(any_ink, last - first + 1, torch.zeros_like(first))
    small = height <= SMALL_MAX_HEIGHT
    o = (HALF - SMALL_SIDE) // 2
    centre = _up(x[..., o:o + SMALL_SIDE, o:o + SMALL_SIDE], HALF)
    glyph = to_digits8(torch.where(small.reshape(-1, 1, 1, 1), centre, x))
    ink = ((glyph + 1) / 2).mean((1, 2, 3))
    return {"height": height, "small": small, "glyph": glyph, "ink": ink}


@functools.lru_cache(maxsize=1)
def weight_thresholds() -> torch.Tensor:
    """(10, 2): per digit, the 1/3 and 2/3 quantiles of the mean ink of the 1797 built-in 8x8 digits."""
    ds = digits()
    ink = ((ds.x + 1) / 2).mean((1, 2, 3)).double()
    return torch.stack([torch.quantile(ink[ds.labels == d], torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
                        for d in range(10)]).float()


def weight_class(ink: torch.Tensor, digit: torch.Tensor) -> torch.Tensor:
    """(B,) -1 thin, 0 unnamed, +1 bold: the glyph's ink against the tertiles of its digit."""
    lo, hi = weight_thresholds()[digit.long()].unbind(-1)
    return (ink > hi).long() - (ink < lo).long()


# --- captions --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Glyph:
    """One digit of a caption: `digit` 0-9, and `size` ("small"/"large") and `weight` ("thin"/"bold") when named."""

    digit: int
    size: str | None = None
    weight: str | None = None

    def phrase(self, attributes: bool) -> str:
        if not attributes:
            return WORDS[self.digit]
        return " ".join(["a"] + [w for w in (self.size, self.weight) if w] + [WORDS[self.digit]])


@dataclass(frozen=True)
class PairCaption:
    """A parsed caption: the `left` and `right` glyphs, whichever order the sentence named them in."""

    left: Glyph
    right: Glyph


def format_caption(left: Glyph, right: Glyph, left_first: bool = True, attributes: bool = False) -> str:
    """"three left of eight" (left_first) or "eight right of three"; with `attributes` each digit's named ones."""
    if left_first:
        return f"{left.phrase(attributes)} left of {right.phrase(attributes)}"
    return f"{right.phrase(attributes)} right of {left.phrase(attributes)}"


_SENTENCE = re.compile(r"^\s*(.+?)\s+(left|right)\s+of\s+(.+?)\s*$")


def _parse_phrase(words: list[str], caption: str) -> Glyph:
    size = weight = None
    if len(words) > 1 and words[0] in ("a", "an"):
        words = words[1:]
    for w in words[:-1]:
        if w in SIZES and size is None:
            size = w
        elif w in WEIGHTS and weight is None:
            weight = w
        else:
            raise ValueError(f"caption {caption!r}: unexpected word {w!r}; expected a size ({', '.join(SIZES)}) or a "
                             f"weight ({', '.join(WEIGHTS)}) before the digit")
    if not words or words[-1] not in WORDS:
        raise ValueError(f"caption {caption!r}: expected a digit word ({', '.join(WORDS)}), found "
                         f"{words[-1] if words else ''!r}")
    return Glyph(WORDS.index(words[-1]), size, weight)


def parse_caption(caption: str) -> PairCaption:
    """The glyphs a `digitpairs` caption describes ("a small seven right of a bold one" -> left: one, bold;
    right: seven, small). ValueError naming the caption when it is not of that grammar."""
    if not isinstance(caption, str):
        raise TypeError(f"caption: expected a string, found {type(caption).__name__}")
    m = _SENTENCE.match(caption.lower())
    if not m:
        raise ValueError(f"caption {caption!r}: expected '<digit> left of <digit>' or '<digit> right of <digit>', "
                         "e.g. 'three left of eight' or 'a small seven right of a bold one'")
    first, second = (_parse_phrase(p.split(), caption) for p in (m.group(1), m.group(3)))
    return PairCaption(first, second) if m.group(2) == "left" else PairCaption(second, first)


def _glyph(digit: int, small: bool, weight: int) -> Glyph:
    return Glyph(digit, SIZES[0] if small else SIZES[1], {-1: WEIGHTS[0], 1: WEIGHTS[1]}.get(weight))


# --- the dataset -----------------------------------------------------------------------------------------------
@DATASETS.register("digitpairs")
def digitpairs(n: int = 20000, generator: torch.Generator | None = None, split: str = "train") -> Dataset:
    """`n` captioned 1x16x32 digit-pair canvases (see the module docstring); labels 10 left + right.

    `split`: "train" (pairs of the last 1438 digits) or "test" (of the 359 held out by the digits classifier)."""
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', found {split!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n: expected a positive number of canvases, found {n!r}")
    # the canvases and the measuring's temporaries (float64 halves, crops): about 8 float32 copies, bounded first
    check_memory(8 * 4 * n * CANVAS[0] * CANVAS[1] * CANVAS[2], f"data digitpairs: {n} canvases")
    src, n_test = digits(), digits_test_count()
    pool = torch.arange(n_test) if split == "test" else torch.arange(n_test, len(src))
    g = generator
    idx = pool[torch.randint(len(pool), (n, 2), generator=g)]                        # (n, 2) left, right
    small = torch.rand(n, 2, generator=g) < 0.5
    left_first = (torch.rand(n, generator=g) < 0.5).tolist()
    named = (torch.rand(n, generator=g) < 0.5).tolist()
    x = make_canvas(render_half(src.x[idx[:, 0]], small[:, 0]), render_half(src.x[idx[:, 1]], small[:, 1]))
    y = src.labels[idx]                                                              # (n, 2) digits
    parts = []
    for side, half in enumerate(halves(x)):
        m = measure(half)
        parts.append((m["small"].tolist(), weight_class(m["ink"], y[:, side]).tolist()))
    (ls, lw), (rs, rw) = parts
    dl, dr = y[:, 0].tolist(), y[:, 1].tolist()
    texts = [format_caption(_glyph(dl[i], ls[i], lw[i]), _glyph(dr[i], rs[i], rw[i]), left_first[i], named[i])
             for i in range(n)]
    classes = [f"{WORDS[a]} left of {WORDS[b]}" for a in range(10) for b in range(10)]
    return Dataset(x.contiguous(), "digitpairs", labels=10 * y[:, 0] + y[:, 1], kind="images", classes=classes,
                   texts=texts)
