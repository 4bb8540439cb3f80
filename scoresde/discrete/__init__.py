"""Masked (absorbing-state) discrete diffusion for token sequences: MDLM / LLaDA.

Sahoo et al. (2024), "Simple and Effective Masked Diffusion Language Models", arXiv:2406.07524;
Nie et al. (2025), "Large Language Diffusion Models", arXiv:2502.09992. The continuous core
(`scoresde.sde`, the score samplers) is untouched; this package holds the process and its bound
(`process`), samplers (`samplers`), exact references by enumeration (`exact`).
"""
from .process import (SCHEDULES, MaskingSchedule, LinearSchedule, CosineSchedule, MaskedProcess, get_schedule,
                      bits_per_token, perplexity)
from .samplers import DISCRETE_SAMPLERS, sample_mdlm, sample_llada, list_discrete_samplers

__all__ = ["SCHEDULES", "MaskingSchedule", "LinearSchedule", "CosineSchedule", "MaskedProcess", "get_schedule",
           "bits_per_token", "perplexity", "DISCRETE_SAMPLERS", "sample_mdlm", "sample_llada",
           "list_discrete_samplers"]
