"""Architectures of no family here, which ``deci`` (and ``openelm``, for Qwen3) cannot hold, each with the reason
a user is told."""

from __future__ import annotations

_PER_HEAD_NORMS = "per-head q/k norms, which deci has no tensors for"
_GEMMA = "scaled embeddings, GeGLU, extra post-norms and logit soft-capping, which deci does not compute"
_MOE = "a mixture of experts; deci has one MLP per layer"
_QWEN3_MOE = "a mixture of experts; deci, and openelm that holds dense Qwen3, have one MLP per layer"
_GRANITE4 = "Granite 4's hybrid layout (Mamba-2 layers, a shared MLP beside experts), which deci does not compute"

#: Hugging Face class or GGUF architecture name -> why it is refused
REFUSED: dict[str, str] = {
    **dict.fromkeys(("Olmo2ForCausalLM", "olmo2"), _PER_HEAD_NORMS),
    **dict.fromkeys(("GemmaForCausalLM", "gemma", "Gemma2ForCausalLM", "gemma2", "Gemma3ForCausalLM",
                     "Gemma3ForConditionalGeneration", "gemma3"), _GEMMA),
    **dict.fromkeys(("Qwen3MoeForCausalLM", "qwen3moe"), _QWEN3_MOE),
    **dict.fromkeys(("MixtralForCausalLM", "Qwen2MoeForCausalLM", "qwen2moe", "PhimoeForCausalLM", "phimoe",
                     "DeepseekV2ForCausalLM", "deepseek2", "DeepseekV3ForCausalLM", "OlmoeForCausalLM", "olmoe",
                     "GraniteMoeForCausalLM", "granitemoe", "GraniteMoeSharedForCausalLM"), _MOE),
    **dict.fromkeys(("GraniteMoeHybridForCausalLM", "granitehybrid"), _GRANITE4),
}  # fmt: skip
