"""Architectures ``deci`` cannot hold, each with the reason a user is told."""

from __future__ import annotations

_PER_HEAD_NORMS = "per-head q/k norms, which deci has no tensors for"
_GEMMA = "scaled embeddings, GeGLU, extra post-norms and logit soft-capping, which deci does not compute"
_MOE = "a mixture of experts; deci has one MLP per layer"

#: Hugging Face class or GGUF architecture name -> why it is refused
REFUSED: dict[str, str] = {
    **dict.fromkeys(("Qwen3ForCausalLM", "qwen3", "Olmo2ForCausalLM", "olmo2", "Qwen3MoeForCausalLM", "qwen3moe"),
                    _PER_HEAD_NORMS),
    **dict.fromkeys(("GemmaForCausalLM", "gemma", "Gemma2ForCausalLM", "gemma2", "Gemma3ForCausalLM",
                     "Gemma3ForConditionalGeneration", "gemma3"), _GEMMA),
    **dict.fromkeys(("MixtralForCausalLM", "Qwen2MoeForCausalLM", "qwen2moe", "PhimoeForCausalLM", "phimoe",
                     "DeepseekV2ForCausalLM", "deepseek2", "DeepseekV3ForCausalLM", "OlmoeForCausalLM", "olmoe",
                     "GraniteMoeForCausalLM", "granitemoe"), _MOE),
}  # fmt: skip
