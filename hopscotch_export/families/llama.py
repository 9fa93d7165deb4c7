"""Llama (2, 3, 3.1, 3.2, SmolLM, DeepSeek-R1-Distill-Llama, ...) and Mistral.

Both are the base :class:`Family` exactly. Mistral's GGUF files say ``llama``; its first
release slides attention over 4096 tokens, which limits the exported file's context
(``Family.context_length``).
"""

from __future__ import annotations

from . import register
from .base import Family


@register
class Llama(Family):
    hf_architectures = ("LlamaForCausalLM",)
    gguf_archs = ("llama",)
    model_type = "llama"


@register
class Mistral(Family):
    hf_architectures = ("MistralForCausalLM",)
    model_type = "mistral"
