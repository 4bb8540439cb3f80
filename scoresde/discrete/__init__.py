"""Masked (absorbing-state) discrete diffusion for token sequences: MDLM / LLaDA.

Sahoo et al. (2024), "Simple and Effective Masked Diffusion Language Models", arXiv:2406.07524;
Nie et al. (2025), "Large Language Diffusion Models", arXiv:2502.09992. The continuous core
(`scoresde.sde`, the score samplers) is untouched. Modules:

- `process`: the masking process, its schedules and the continuous-time NELBO (training loss, bound);
- `samplers`: `mdlm` (ancestral, with caching) and `llada` (confidence / random remasking, blocks);
- `model`: `MaskedLM` and the `AutoregressiveLM` baseline (sample, nelbo / nll, decode);
- `tokenizer`, `languages`, `data`: character/byte tokenizers, the built-in languages with exact
  validity (`brackets`, `sums`), loading of languages, text files and `.npy` token arrays;
- `exact`: exact denoisers and likelihoods by enumeration (tests, benchmarks);
- `report`, `commands`: sample statistics and the text figure; the CLI bodies.

Training is the engine's: tasks `masked` and `autoregressive` (`scoresde.tasks.masked`).
"""
from .process import (SCHEDULES, MaskingSchedule, LinearSchedule, CosineSchedule, MaskedProcess, get_schedule,
                      bits_per_token, perplexity)
from .samplers import DISCRETE_SAMPLERS, sample_mdlm, sample_llada, list_discrete_samplers
from .tokenizer import CharTokenizer
from .languages import LANGUAGES, get_language
from .data import TokenData, load_tokens
from .model import MaskedLM, AutoregressiveLM

__all__ = ["SCHEDULES", "MaskingSchedule", "LinearSchedule", "CosineSchedule", "MaskedProcess", "get_schedule",
           "bits_per_token", "perplexity", "DISCRETE_SAMPLERS", "sample_mdlm", "sample_llada",
           "list_discrete_samplers", "CharTokenizer", "LANGUAGES", "get_language", "TokenData", "load_tokens",
           "MaskedLM", "AutoregressiveLM"]
