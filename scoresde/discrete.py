"""Masked (absorbing-state) discrete diffusion for token sequences: MDLM / LLaDA / BD3-LM / ReMDM.

Sahoo et al. (2024), "Simple and Effective Masked Diffusion Language Models", arXiv:2406.07524;
Nie et al. (2025), "Large Language Diffusion Models", arXiv:2502.09992. The public namespace
`scoresde.discrete`; the parts live in their layers:

- `scoresde.sde.masked`: the masking process, its schedules and the continuous-time NELBO;
- `scoresde.sde.block_masked`: block diffusion (BD3-LM, arXiv:2503.09573), the block NELBO;
- `scoresde.samplers.masked`: `mdlm` (ancestral, with caching), `llada` (entropy / confidence / margin /
  random orderings, order temperature, blocks) and `remdm` (ReMDM remasking, arXiv:2503.00307);
- `scoresde.samplers.block`: block-by-block sampling of block diffusion models (KV cache or recompute);
- `scoresde.models.token_model`: `MaskedLM` and the `AutoregressiveLM` baseline;
- `scoresde.data.tokenizer`, `.languages`, `.tokens`: character/byte tokenizers, the built-in languages
  with exact validity (`brackets`, `sums`), token data loading;
- `scoresde.evaluation.token_exact`: exact denoisers and likelihoods by enumeration;
- `scoresde.cli.tokens`: the CLI bodies. Training is the engine's task `masked`
  (`scoresde.training.tasks.masked`).
"""
from .sde.masked import (SCHEDULES, MaskingSchedule, LinearSchedule, CosineSchedule, MaskedProcess, get_schedule,
                         bits_per_token, perplexity)
from .sde.block_masked import BlockMaskedProcess
from .samplers.masked import DISCRETE_SAMPLERS, sample_mdlm, sample_llada, sample_remdm, list_discrete_samplers
from .samplers.block import RecomputeState, sample_blocks
from .data.tokenizer import CharTokenizer
from .data.languages import LANGUAGES, get_language
from .data.tokens import TokenData, load_tokens
from .models.token_model import MaskedLM, AutoregressiveLM, BlockCache

__all__ = ["SCHEDULES", "MaskingSchedule", "LinearSchedule", "CosineSchedule", "MaskedProcess", "get_schedule",
           "bits_per_token", "perplexity", "BlockMaskedProcess", "DISCRETE_SAMPLERS", "sample_mdlm", "sample_llada",
           "sample_remdm", "RecomputeState", "sample_blocks", "BlockCache",
           "list_discrete_samplers", "CharTokenizer", "LANGUAGES", "get_language", "TokenData", "load_tokens",
           "MaskedLM", "AutoregressiveLM"]
