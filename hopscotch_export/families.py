"""Supported model families and the per-model facts every stage needs.

One small registered entry per family (llama.cpp's converter keeps one class per family;
we keep a dataclass): adding a family is adding an entry to :data:`FAMILIES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import SourceError


@dataclass(frozen=True)
class Family:
    """What differs between supported families."""

    hf_architecture: str
    gguf_arch: str
    #: q/k/v biases are always present (Qwen2) rather than set by ``attention_bias``.
    qkv_bias: bool
    #: GGUF files of this family store q/k rows in rotate-half (NEOX) order, so the
    #: converter must permute them for ``deci``'s NORM rope; ``llama`` GGUFs already did.
    gguf_rope_neox: bool


FAMILIES: dict[str, Family] = {
    f.hf_architecture: f
    for f in (
        Family("LlamaForCausalLM", "llama", qkv_bias=False, gguf_rope_neox=False),
        Family("Qwen2ForCausalLM", "qwen2", qkv_bias=True, gguf_rope_neox=True),
    )
}


def family_for(architecture: str) -> Family:
    """Look up by Hugging Face class name or by GGUF ``general.architecture``."""
    for f in FAMILIES.values():
        if architecture in (f.hf_architecture, f.gguf_arch):
            return f
    supported = ", ".join(f"{f.hf_architecture} ({f.gguf_arch})" for f in FAMILIES.values())
    raise SourceError(f"unsupported architecture {architecture!r}; supported: {supported}")


@dataclass(frozen=True)
class ModelSpec:
    """Hyper-parameters of a source model, as both torch and llama.cpp need them."""

    family: Family
    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_eps: float
    rope_theta: float
    context_length: int
    tie_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False
    #: Hugging Face ``rope_scaling`` dict (Llama 3 style), or None.
    rope_scaling: dict[str, Any] | None = None

    @property
    def architecture(self) -> str:
        return self.family.hf_architecture

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ModelSpec:
        """Read a Hugging Face ``config.json`` dict."""
        archs = cfg.get("architectures") or [cfg.get("model_type", "unknown")]
        family = family_for(archs[0])
        try:
            n_heads = cfg["num_attention_heads"]
            hidden = cfg["hidden_size"]
            rope_scaling = cfg.get("rope_scaling")
            rope_theta = cfg.get("rope_theta")
            if rope_theta is None:  # transformers 5 moves it into rope_parameters
                params = cfg.get("rope_parameters") or {}
                rope_theta = params.get("rope_theta", 10000.0)
                if params.get("rope_type", "default") != "default":
                    rope_scaling = params
            return cls(
                family=family,
                n_layers=cfg["num_hidden_layers"],
                hidden_size=hidden,
                intermediate_size=cfg["intermediate_size"],
                n_heads=n_heads,
                n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
                head_dim=cfg.get("head_dim") or hidden // n_heads,
                vocab_size=cfg["vocab_size"],
                rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope_theta),
                context_length=int(cfg.get("max_position_embeddings", 2048)),
                tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                attention_bias=family.qkv_bias or bool(cfg.get("attention_bias", False)),
                mlp_bias=bool(cfg.get("mlp_bias", False)),
                rope_scaling=rope_scaling if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) not in (None, "default") else None,
            )
        except KeyError as e:
            raise SourceError(f"config.json lacks {e}; add it or re-download the complete model folder") from None
