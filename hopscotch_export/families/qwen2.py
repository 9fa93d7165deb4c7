"""Qwen2 / Qwen2.5 (and DeepSeek-R1-Distill-Qwen): always biased q/k/v, and GGUF files
that store q/k rows in rotate-half order."""

from __future__ import annotations

from .base import Family
from .chat_formats import CHATML_FORMAT, DEEPSEEK_R1_FORMAT


class Qwen2(Family):
    hf_architectures = ("Qwen2ForCausalLM",)
    gguf_archs = ("qwen2",)
    model_type = "qwen2"
    # Qwen2.5; DeepSeek-R1-Distill-Qwen
    chat_formats = (DEEPSEEK_R1_FORMAT, CHATML_FORMAT)
    qkv_bias = True
    gguf_rope_neox = True
