"""Llama (2, 3, 3.1, 3.2, SmolLM, DeepSeek-R1-Distill-Llama, ...) and Mistral.

Both are the base :class:`Family` exactly. Mistral's GGUF files say ``llama``; its first
release slides attention over 4096 tokens, which limits the exported file's context
(``Family.context_length``).
"""

from __future__ import annotations

from .base import Family
from .chat_formats import CHATML_FORMAT, DEEPSEEK_R1_FORMAT, LLAMA3_FORMAT


class Llama(Family):
    hf_architectures = ("LlamaForCausalLM",)
    gguf_archs = ("llama",)
    model_type = "llama"
    # Llama 3; DeepSeek-R1-Distill-Llama; SmolLM2 speaks ChatML
    chat_formats = (DEEPSEEK_R1_FORMAT, CHATML_FORMAT, LLAMA3_FORMAT)


class Mistral(Family):
    hf_architectures = ("MistralForCausalLM",)
    model_type = "mistral"
