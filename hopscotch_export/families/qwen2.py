"""Qwen2 / Qwen2.5 (and DeepSeek-R1-Distill-Qwen): always biased q/k/v, and GGUF files
that store q/k rows in rotate-half order."""

from __future__ import annotations

from . import register
from .base import Family


@register
class Qwen2(Family):
    hf_architectures = ("Qwen2ForCausalLM",)
    gguf_archs = ("qwen2",)
    model_type = "qwen2"
    qkv_bias = True
    gguf_rope_neox = True
