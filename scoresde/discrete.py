"""Masked (absorbing-state) discrete diffusion for token sequences: MDLM / LLaDA.

Sahoo et al. (2024), "Simple and Effective Masked Diffusion Language Models", arXiv:2406.07524;
Nie et al. (2025), "Large Language Diffusion Models", arXiv:2502.09992. The public namespace
`scoresde.discrete`; the parts live in their layers:

- `scoresde.sde.masked`: the masking process, its schedules and the continuous-time NELBO;
- `scoresde.samplers.masked`: `mdlm` (ancestral, with caching) and `llada` (confidence / random
  remasking, blocks);
- `scoresde.models.token_model`: `MaskedLM` and the `AutoregressiveLM` baseline;
- `scoresde.data.tokenizer`, `.languages`, `.tokens`: character/byte tokenizers, the built-in languages
  with exact validity (`brackets`, `sums`), token data loading;
- `scoresde.evaluation.token_exact`: exact denoisers and likelihoods by enumeration;
- `scoresde.cli.tokens`: the CLI bodies. Training is the engine's task `masked`
  (`scoresde.training.tasks.masked`).
"""
from .sde.masked import (SCHEDULES, MaskingSchedule, LinearSchedule, CosineSchedule, MaskedProcess, get_schedule,
                         bits_per_token, perplexity)
from .samplers.masked import DISCRETE_SAMPLERS, sample_mdlm, sample_llada, list_discrete_samplers
from .data.tokenizer import CharTokenizer
from .data.languages import LANGUAGES, get_language
from .data.tokens import TokenData, load_tokens
from .models.token_model import MaskedLM, AutoregressiveLM

__all__ = ["SCHEDULES", "MaskingSchedule", "LinearSchedule", "CosineSchedule", "MaskedProcess", "get_schedule",
           "bits_per_token", "perplexity", "DISCRETE_SAMPLERS", "sample_mdlm", "sample_llada",
           "list_discrete_samplers", "CharTokenizer", "LANGUAGES", "get_language", "TokenData", "load_tokens",
           "MaskedLM", "AutoregressiveLM"]
