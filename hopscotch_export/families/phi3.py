"""Phi-3 and Phi-4 (``Phi3ForCausalLM``; GGUF ``phi3``): Llama with fused projections.

q, k and v are one ``qkv_proj`` matrix (rows stacked in that order) and gate and up one
``gate_up_proj`` (gate first); ``phi3`` GGUF files keep them fused (``attn_qkv``, and an
``ffn_up`` twice as tall) with q/k rows in rotate-half order, as transformers has them.
``deci`` has one tensor each, so they are split by rows. The long-context variants'
``longrope`` scaling and Phi-4-mini's partial rotary embedding are refused: ``deci`` has
plain rope (and Llama 3's scaling) over the whole head.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Any

from ..errors import SourceError
from .base import Family, ModelSpec, supported_line
from .chat_formats import ChatFormat
from .rope import LONG_ROPE, PARTIAL_ROPE, rope_kind

#: fused tensor (Hugging Face and GGUF names) -> its parts in row order
_FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn_qkv": ("attn_q", "attn_k", "attn_v"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "ffn_up": ("ffn_gate", "ffn_up"),
}
_LAYER_TENSOR = re.compile(r"^(model\.layers\.\d+\.|blk\.\d+\.)(.+)\.(weight|bias)$")
_VARIANTS = "use a variant without it (Phi-3-mini-4k-instruct, Phi-3-medium-4k-instruct, phi-4)"

#: Phi-3 (``<|user|>`` ... ``<|end|>``) and Phi-4 (ChatML with ``<|im_sep|>`` after the role)
PHI3 = """{{- range .Messages }}<|{{ .Role }}|>
{{ .Content }}<|end|>
{{ end }}<|assistant|>
"""
PHI4 = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}<|im_sep|>{{ .Content }}<|im_end|>{{ end }}"
    "<|im_start|>assistant<|im_sep|>"
)
PHI4_FORMAT = ChatFormat(1, "<|im_sep|>", PHI4, ("<|im_start|>", "<|im_sep|>", "<|im_end|>"))
PHI3_FORMAT = ChatFormat(2, "<|end|>", PHI3, ("<|end|>", "<|user|>", "<|assistant|>"))


class Phi3(Family):
    hf_architectures = ("Phi3ForCausalLM",)
    gguf_archs = ("phi3",)
    model_type = "phi3"
    chat_formats = (PHI4_FORMAT, PHI3_FORMAT)
    gguf_rope_neox = True

    @classmethod
    def check_rope(cls, rope: dict[str, Any] | None, where: str) -> None:
        """Phi-3's only scaling is longrope (``su``, ``yarn`` in older configs)."""
        kind = rope_kind(rope)
        if kind != "default":
            raise SourceError(f"{where}: rope scaling {kind!r} {LONG_ROPE}; {_VARIANTS}. {supported_line()}")

    @classmethod
    def check_config(cls, cfg: dict[str, Any], where: str) -> None:
        super().check_config(cfg, where)
        rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
        partial = float(cfg.get("partial_rotary_factor") or rope.get("partial_rotary_factor") or 1.0)
        if partial != 1.0:
            why = f"partial_rotary_factor={partial} {PARTIAL_ROPE}"
            raise SourceError(f"{where}: {why}; {_VARIANTS}. {supported_line()}")

    @classmethod
    def split(cls, name: str, spec: ModelSpec) -> list[tuple[str, int, int]] | None:
        m = _LAYER_TENSOR.match(name)
        parts = _FUSED.get(m.group(2)) if m else None
        if m is None or parts is None:
            return None
        q, kv = spec.n_heads * spec.head_dim, spec.n_kv_heads * spec.head_dim
        rows = (q, kv, kv) if len(parts) == 3 else (spec.intermediate_size,) * 2
        return [(f"{m.group(1)}{p}.{m.group(3)}", end - n, end) for p, n, end in zip(parts, rows, accumulate(rows))]
