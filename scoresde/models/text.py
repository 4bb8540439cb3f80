"""Text encoders: prompts -> the token sequence a network cross-attends to, behind one interface.

A `TextEncoder` turns prompts into a `Cond` whose `context` (B, L, D) holds one D-vector per token and
whose `context_mask` (B, L) marks the real tokens (True) against the padding (False); `null(B)` is the
unconditional condition of classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598): by default
the encoding of the empty prompt "", as Stable Diffusion's pipelines use (a subclass may return zeros,
as SDXL does with `force_zeros_for_empty_prompt`). A `ScoreModel` carries its encoder as
`model.text_encoder` (a submodule: trained, saved and averaged with the model), so `model(x, t, prompts)`
and `ss.classifier_free_score(model, w, prompt=...)` take text.

`TransformerTextEncoder` is the encoder LDM's own text-to-image model trained jointly with its U-Net
from scratch (Rombach et al. 2022, arXiv:2112.10752, Sec. 4.3.1: a transformer over the tokenized
prompt, `cond_stage_trainable`): here a small pre-LayerNorm transformer (Vaswani et al. 2017,
arXiv:1706.03762) over bytes (or the characters of the training captions; `data/tokenizer.py`), with
a BOS token first, learned positions (so word order matters), a padding mask, and a final LayerNorm.
Nothing is downloaded. The empty prompt encodes to the BOS token alone, a learned null token that
prompt dropout (`train.p_uncond`: the prompt replaced by "") trains.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from scoresde._common.registry import Registry
from scoresde._common.validation import check_int, check_positive
from scoresde.data.tokenizer import EOS, CharTokenizer
from scoresde.models.conditioning import Cond
from scoresde.models.nets.attention import CrossAttention, FeedForward


__all__ = ["TextEncoder", "TransformerTextEncoder", "TEXT_ENCODERS", "build_text_encoder", "check_prompts",
           "TEXT_KEYS", "text_encoder_config"]

TEXT_ENCODERS = Registry("text encoder")

# [model] config keys of a text-conditional run (beside the network's context_dim), with their types:
#   text_encoder: "" (none) | "transformer";  text_len: tokens per prompt, BOS included (0: the longest
#   caption + 1);  text_depth, text_heads: the encoder's blocks and heads;  text_tokenizer: byte | char
TEXT_KEYS: dict[str, type] = {"text_encoder": str, "text_len": int, "text_depth": int, "text_heads": int,
                              "text_tokenizer": str}


def check_prompts(prompts: Any, name: str = "prompt") -> list[str]:
    """A prompt (str) or a non-empty sequence of prompts as a list of str; TypeError/ValueError naming `name`."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, (list, tuple)) and prompts and all(isinstance(p, str) for p in prompts):
        return list(prompts)
    if isinstance(prompts, (list, tuple)):
        if not prompts:
            raise ValueError(f"{name}: expected a prompt or a non-empty list of prompts, found an empty list")
        bad = next(p for p in prompts if not isinstance(p, str))
        raise TypeError(f"{name}: expected strings, found an item of type {type(bad).__name__}")
    raise TypeError(f"{name}: expected a string or a list of strings, found {type(prompts).__name__}")


class TextEncoder(nn.Module):
    """The interface: `encode(prompts) -> Cond` (context (B, L, context_dim) float, context_mask (B, L) bool),
    `null(batch) -> Cond` (the unconditional condition; default the encoding of ""), `context_dim`.

    Subclasses implement `encode`; `config()` (JSON, rebuilds the encoder with its registered name) is
    needed only to save the encoder in a run's checkpoint."""

    context_dim: int

    def encode(self, prompts: Sequence[str]) -> Cond:
        raise NotImplementedError

    def null(self, batch: int) -> Cond:
        """The unconditional condition of `batch` rows: the encoding of the empty prompt."""
        return self.encode([""] * check_int("batch", batch))

    def forward(self, prompts: Sequence[str]) -> Cond:
        return self.encode(prompts)

    def config(self) -> dict[str, Any]:
        return {}


@TEXT_ENCODERS.register("transformer")
class TransformerTextEncoder(TextEncoder):
    """A small transformer encoder trained jointly with the score model (LDM's text-to-image model).

    Args:
        context_dim: D, the width of the encoder and of its output tokens (the network's context_dim).
        max_len: L, tokens per prompt with the BOS token; longer prompts are truncated (as CLIP's 77).
        depth, heads: transformer blocks and attention heads (D divisible by heads).
        tokenizer: "byte" (UTF-8 bytes: any prompt) or "char" (the characters of `alphabet` only).
        alphabet: the characters of a "char" tokenizer (the training captions' characters).
        mlp_ratio: feed-forward width / D.
    Token ids: 0 padding, 1 .. V-1 the characters or bytes (`CharTokenizer`), V the BOS token.
    """

    def __init__(self, context_dim: int = 64, max_len: int = 32, depth: int = 2, heads: int = 4,
                 tokenizer: str = "byte", alphabet: str = "", mlp_ratio: float = 4.0):
        super().__init__()
        self.context_dim = D = check_int("context_dim", context_dim)
        self.max_len = check_int("max_len", max_len)
        if self.max_len < 2:
            raise ValueError(f"max_len: expected at least 2 (the BOS token and one character), found {max_len}")
        heads = check_int("heads", heads)
        if D % heads:
            raise ValueError(f"heads: expected a divisor of context_dim={D}, found {heads}")
        self.tokenizer = CharTokenizer(alphabet, tokenizer)
        self.bos = self.tokenizer.vocab_size
        self._config = dict(context_dim=D, max_len=self.max_len, depth=check_int("depth", depth), heads=heads,
                            tokenizer=tokenizer, alphabet=self.tokenizer.alphabet,
                            mlp_ratio=check_positive("mlp_ratio", mlp_ratio))
        self.tokens = nn.Embedding(self.bos + 1, D)
        self.positions = nn.Parameter(torch.zeros(self.max_len, D))
        self.norms = nn.ModuleList(nn.ModuleList([nn.LayerNorm(D), nn.LayerNorm(D)]) for _ in range(depth))
        self.attns = nn.ModuleList(CrossAttention(D, heads) for _ in range(depth))
        self.ffs = nn.ModuleList(FeedForward(D, mlp_ratio, glu=False) for _ in range(depth))
        self.norm_out = nn.LayerNorm(D)
        # unit-scale embeddings (torch's nn.Embedding default), so each token's identity survives the first
        # block: at GPT-2's 0.02 the residual branches (LayerNorm-ed input, unit-scale weights) swamp the
        # embeddings, the token states of any two prompts start at cosine ~0.98, and Adam (steps ~lr per weight)
        # needs ~1/lr steps to grow them: a jointly trained encoder then carried no prompt for the first
        # thousand steps (issue 28's 500-step benchmark run read prompts at chance).
        nn.init.normal_(self.tokens.weight, std=1.0)
        nn.init.normal_(self.positions, std=1.0)

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._config.items() if k != "alphabet")

    def token_ids(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, L) long, mask (B, L) bool): BOS, the prompt's tokens (at most L - 1), padding."""
        prompts = check_prompts(prompts)
        device = self.tokens.weight.device
        ids = torch.full((len(prompts), self.max_len), EOS, dtype=torch.long)
        for i, p in enumerate(prompts):
            row = [self.bos] + self.tokenizer.encode(p, name="prompt")[: self.max_len - 1]
            ids[i, : len(row)] = torch.tensor(row)
        return ids.to(device), (ids != EOS).to(device)

    def encode(self, prompts: Sequence[str]) -> Cond:
        ids, mask = self.token_ids(prompts)
        h = self.tokens(ids) + self.positions                                   # (B, L, D)
        for (n1, n2), attn, ff in zip(self.norms, self.attns, self.ffs):
            h = h + attn(n1(h), None, mask)                                     # self-attention over the tokens
            h = h + ff(n2(h))
        return Cond(context=self.norm_out(h), context_mask=mask)


def build_text_encoder(name: str, **config: Any) -> TextEncoder:
    """The registered text encoder `name` built with `config` (KeyError listing the known names)."""
    return TEXT_ENCODERS[name](**config)


def text_encoder_config(model: dict[str, Any], texts: Sequence[str] | None) -> dict[str, Any] | None:
    """{"name", "config"} of the text encoder a run's [model] section asks for, sized to its captions `texts`
    (text_len 0: the longest caption + BOS; a char tokenizer's alphabet: their characters), or None (none)."""
    name = model.get("text_encoder", "")
    if not name:
        return None
    TEXT_ENCODERS[name]
    if model.get("context_dim") is None:
        raise ValueError("config model.context_dim: a text encoder needs the network's context width (e.g. 64), "
                         "found none")
    kind = model.get("text_tokenizer", "byte")
    if kind not in ("byte", "char"):
        raise ValueError(f"config model.text_tokenizer: expected byte or char, found {kind!r}")
    texts = list(texts or [])
    longest = max((len(t.encode("utf-8") if kind == "byte" else t) for t in texts), default=31)
    cfg = dict(context_dim=model["context_dim"], max_len=model.get("text_len") or longest + 1,
               depth=model.get("text_depth", 2), heads=model.get("text_heads", 4), tokenizer=kind)
    if kind == "char":
        cfg["alphabet"] = CharTokenizer.from_text(texts or [" "]).alphabet
    return {"name": name, "config": cfg}
