"""Frozen CLIP text encoders (Radford et al. 2021, arXiv:2103.00020) from local Hugging Face folders, as the
Stable Diffusion pipelines encode prompts (Rombach et al. 2022, arXiv:2112.10752; SDXL, Podell et al. 2023,
arXiv:2307.01952):

- `CLIPTextEncoder`: one tokenizer and `CLIPTextModel`; prompts padded (and truncated) to the tokenizer's
  `model_max_length` (77), the context is the last hidden state after the final layer norm,
  `text_encoder(ids)[0]` (SD 1.x: CLIP ViT-L/14, context 768; SD 2.x: OpenCLIP ViT-H, 1024). Usable as the
  frozen text encoder of a text-conditional model trained here (`CLIPTextEncoder.from_pretrained(dir)`).
- `SDXLTextEncoder`: SDXL's two encoders; the context is both encoders' penultimate hidden states
  (`hidden_states[-2]`, no final norm) concatenated (768 + 1280), `pooled` the projected pooled output of
  the second (`text_embeds`), `micro` the six size numbers (`time_ids`): original size, crop top-left,
  target size; the unconditional condition is zeros when `force_zeros_for_empty_prompt` (SDXL base).

transformers is an optional extra (`pip install transformers`, or scoresde[sd]), imported when a folder
is opened. Nothing is downloaded; weights are read from safetensors only, after the network was built on
the meta device and compared with the file's header (`scoresde.models.prebuild`).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import nn

from scoresde._common.limits import check_sizes
from scoresde.models.conditioning import Cond
from scoresde.models.prebuild import check_transformers_model, read_diffusers_config
from scoresde.models.text import TextEncoder


__all__ = ["TextEncoder", "CLIPTextEncoder", "SDXLTextEncoder", "load_clip_tokenizer", "load_clip_text_model"]

TOKENIZER_FILE_BYTES = 64 << 20     # CLIP's tokenizer.json is ~2 MiB, vocab.json ~1 MiB, merges.txt ~0.5 MiB


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError("CLIP text encoders need the transformers package, which scoresde does not install: "
                          "pip install transformers (or scoresde[sd])") from e
    return transformers


def _prompts(prompts: Any) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts: expected a string or a non-empty sequence of strings, found "
                        f"{type(prompts).__name__ if not isinstance(prompts, (list, tuple)) else [type(p).__name__ for p in prompts]}")
    return list(prompts)


def _check_batch(batch: Any) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected an int >= 1, found {batch!r}")
    return batch


def load_clip_tokenizer(path: str, what: str = "tokenizer") -> Any:
    """A `CLIPTokenizer` from a local folder (tokenizer.json, or vocab.json + merges.txt, with
    tokenizer_config.json), each file's size bounded and the config's sizes checked before it is read."""
    if not os.path.isdir(path):
        raise ValueError(f"{what}: expected a tokenizer folder, found {path!r} (not a directory)")
    for name in os.listdir(path):
        f = os.path.join(path, name)
        if os.path.isfile(f) and os.path.getsize(f) > TOKENIZER_FILE_BYTES:
            raise ValueError(f"{what}: {f!r} is larger than {TOKENIZER_FILE_BYTES >> 20} MiB: not a CLIP tokenizer file")
    if not any(os.path.isfile(os.path.join(path, n)) for n in ("tokenizer.json", "vocab.json")):
        raise ValueError(f"{what}: {path!r} holds no tokenizer.json or vocab.json + merges.txt")
    cfg = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(cfg):
        read_diffusers_config(cfg, what)               # bounded sizes (model_max_length)
    tok = _transformers().CLIPTokenizer.from_pretrained(path, local_files_only=True)
    check_sizes({"model_max_length": tok.model_max_length}, f"{what}: {path!r}: ")
    return tok


def load_clip_text_model(path: str, projection: bool = False, what: str = "text_encoder") -> nn.Module:
    """A frozen `CLIPTextModel` (`CLIPTextModelWithProjection` with `projection`) from a local folder
    (config.json and model.safetensors): built on the meta device and compared with the weights first."""
    tf = _transformers()
    cls = tf.CLIPTextModelWithProjection if projection else tf.CLIPTextModel
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{what}: expected a {cls.__name__} folder with config.json, found none in {path!r}")
    check_transformers_model(tf.CLIPTextConfig, cls, path, what)
    try:
        net = cls.from_pretrained(path, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"{what}: transformers could not read {path!r} ({str(e).splitlines()[0]})") from None
    return net.float().eval().requires_grad_(False)


def _tokens(tokenizer: Any, prompts: list[str], device: Any) -> torch.Tensor:
    """(B, model_max_length) ids, padded to and truncated at the tokenizer's length, as the pipelines do."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    return ids.input_ids.to(device), ids.attention_mask.to(device)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


class CLIPTextEncoder(TextEncoder):
    """A frozen CLIP text encoder (SD 1.x / 2.x): `encode(prompts)` -> Cond(context=(B, 77, D)), the last
    hidden state after the final layer norm, every position attended (as the pipelines: no mask); `null`
    the encoding of the empty prompt "".

    Args:
        tokenizer: a `CLIPTokenizer` (model_max_length = the sequence length, 77 for CLIP).
        text_encoder: a `CLIPTextModel`; frozen (eval, no gradients).
    """

    def __init__(self, tokenizer: Any, text_encoder: nn.Module):
        super().__init__()
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.context_dim = int(text_encoder.config.hidden_size)
        self.max_length = int(tokenizer.model_max_length)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None) -> CLIPTextEncoder:
        """From a local folder: a `CLIPTextModel` save_pretrained folder holding its tokenizer files too, a
        folder with tokenizer/ and text_encoder/ sub-folders (a Stable Diffusion pipeline), or the model
        folder with the tokenizer's given by `tokenizer`. Nothing is downloaded."""
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise ValueError(f"path: expected a local CLIPTextModel folder, found {path!r} (not a directory)")
        model_dir = os.path.join(path, "text_encoder") if os.path.isdir(os.path.join(path, "text_encoder")) else path
        if tokenizer is None:
            tokenizer = os.path.join(path, "tokenizer") if os.path.isdir(os.path.join(path, "tokenizer")) else path
        return cls(load_clip_tokenizer(os.fspath(tokenizer)), load_clip_text_model(model_dir))

    def _use_mask(self) -> bool:
        return bool(getattr(self.text_encoder.config, "use_attention_mask", False))

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Cond:
        ids, mask = _tokens(self.tokenizer, _prompts(prompts), _device(self.text_encoder))
        # text_encoder(ids)[0]: the last hidden state after final_layer_norm (pipeline_stable_diffusion.encode_prompt)
        out = self.text_encoder(ids, attention_mask=mask if self._use_mask() else None)
        return Cond(context=out[0])

    def null(self, batch: int) -> Cond:
        return self.encode([""]).expand(_check_batch(batch))

    def extra_repr(self) -> str:
        return f"context_dim={self.context_dim}, max_length={self.max_length}"


class SDXLTextEncoder(TextEncoder):
    """SDXL's two frozen CLIP encoders: Cond(context=(B, 77, D1 + D2), pooled=(B, P), micro=(B, 6)).

    Args:
        tokenizers, text_encoders: [CLIPTokenizer, CLIPTokenizer], [CLIPTextModel, CLIPTextModelWithProjection]
            (the second's projected pooled output is `pooled`).
        image_size: (H, W) of the decoded images: the default original and target size.
        force_zeros_for_empty_prompt: `null` is zeros (context and pooled) instead of the encoding of "".
        original_size, target_size: (H, W), default `image_size`; crop: the crop's top-left (0, 0).
    The size fields are attributes: set them to condition on other sizes (they apply to every prompt, the
    negative one too, as diffusers' defaults do).
    """

    def __init__(self, tokenizers: Sequence[Any], text_encoders: Sequence[nn.Module], *, image_size: Sequence[int],
                 force_zeros_for_empty_prompt: bool = True, original_size: Sequence[int] | None = None,
                 target_size: Sequence[int] | None = None, crop: Sequence[int] = (0, 0)):
        super().__init__()
        if len(tokenizers) != 2 or len(text_encoders) != 2:
            raise ValueError(f"text_encoders: expected two tokenizers and two encoders (SDXL), found "
                             f"{len(tokenizers)} and {len(text_encoders)}")
        self.tokenizers = list(tokenizers)
        self.text_encoders = nn.ModuleList([e.eval().requires_grad_(False) for e in text_encoders])
        self.context_dim = sum(int(e.config.hidden_size) for e in text_encoders)
        self.pooled_dim = int(text_encoders[1].config.projection_dim)
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)
        self.image_size = _size("image_size", image_size)
        self.original_size = None if original_size is None else _size("original_size", original_size)
        self.target_size = None if target_size is None else _size("target_size", target_size)
        self.crop = _size("crop", crop, minimum=0)

    def time_ids(self) -> list[float]:
        """original size + crop top-left + target size (SDXL's `_get_add_time_ids`)."""
        return [float(v) for v in (*(self.original_size or self.image_size), *self.crop,
                                   *(self.target_size or self.image_size))]

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Cond:
        prompts = _prompts(prompts)
        states, pooled = [], None
        for tok, enc in zip(self.tokenizers, self.text_encoders):
            ids, _ = _tokens(tok, prompts, _device(enc))
            out = enc(ids, output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:          # CLIPTextModelWithProjection: text_embeds (B, P)
                pooled = out[0]
            states.append(out.hidden_states[-2])             # penultimate layer, no final norm
        context = torch.cat(states, dim=-1)
        if pooled is None:
            raise ValueError("text_encoders: expected the second to be a CLIPTextModelWithProjection (its pooled "
                             "projection is SDXL's text_embeds), found no 2-D output")
        micro = torch.tensor([self.time_ids()], dtype=context.dtype, device=context.device).expand(len(prompts), -1)
        return Cond(context=context, pooled=pooled, micro=micro)

    def null(self, batch: int) -> Cond:
        batch = _check_batch(batch)
        if not self.force_zeros_for_empty_prompt:
            return self.encode([""]).expand(batch)
        # zero unconditional embeddings (the SDXL base pipeline: force_zeros_for_empty_prompt, no negative prompt)
        dev = _device(self.text_encoders[0])
        L = int(self.tokenizers[0].model_max_length)
        micro = torch.tensor([self.time_ids()], device=dev)
        return Cond(context=torch.zeros(1, L, self.context_dim, device=dev),
                    pooled=torch.zeros(1, self.pooled_dim, device=dev), micro=micro).expand(batch)

    def extra_repr(self) -> str:
        return (f"context_dim={self.context_dim}, pooled_dim={self.pooled_dim}, time_ids={self.time_ids()}, "
                f"force_zeros_for_empty_prompt={self.force_zeros_for_empty_prompt}")


def _size(name: str, v: Any, minimum: int = 1) -> tuple[int, int]:
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= minimum for s in v)):
        raise ValueError(f"{name}: expected (H, W), two ints >= {minimum}, found {v!r}")
    return (int(v[0]), int(v[1]))
