"""Qwen3 (``Qwen3ForCausalLM``; GGUF ``qwen3``) with tied embeddings, written as llama.cpp's ``openelm``.

Qwen3 normalises each query and key head (RMSNorm of ``head_dim``, before rope), which
``deci`` has no tensors for. ``openelm`` has them (``attn_q_norm``, ``attn_k_norm``) and
the per-layer head counts that let a layer keep only some KV groups; it fuses q, k and v
into one ``attn_qkv`` (q rows, then k, then v) and ropes rotate-half pairs as Hugging Face
does, so q/k rows go in unpermuted (docs/design.md section 5). Two limits follow from
llama.cpp: ``openelm`` has no ``output.weight`` (the head is always ``token_embd``), so
only tied models fit (0.6B, 1.7B, 4B; 8B and larger are refused); and a layer with no
heads fails to load, so no block is ever removed whole: the search removes KV groups and
every layer keeps at least one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gguf

from ..errors import PlanError, SourceError
from .base import Family, ModelSpec, supported_line
from .chat_formats import CHATML_FORMAT
from .rope import rope_kind

if TYPE_CHECKING:
    from ..plan import Plan

#: why the search and the converter keep a KV group in every layer
NO_BLOCKS = "Qwen3 is written as llama.cpp's openelm, where every layer keeps at least one KV group"


class Qwen3(Family):
    hf_architectures = ("Qwen3ForCausalLM",)
    gguf_archs = ("qwen3",)
    model_type = "qwen3"
    chat_formats = (CHATML_FORMAT,)
    gguf_rope_neox = True
    gguf_out = "openelm"
    out_rope_neox = True
    removes_blocks = False
    keeps_blocks_why = NO_BLOCKS
    tensor_names = gguf.MODEL_ARCH.QWEN3

    @classmethod
    def check_rope(cls, rope: dict[str, Any] | None, where: str) -> None:
        """``openelm`` reads no rope scaling tensor; released Qwen3 models use plain rope."""
        kind = rope_kind(rope)
        if kind != "default":
            raise SourceError(
                f"{where}: rope scaling {kind!r} on a Qwen3 is not supported yet (openelm is written with plain "
                f"rope); use the model without it. {supported_line()}"
            )

    @classmethod
    def check_spec(cls, spec: ModelSpec, where: str) -> None:
        if not spec.tie_embeddings:
            raise SourceError(
                f"{where}: a Qwen3 with untied embeddings (its own lm_head: Qwen3-8B and larger); it is written as "
                "llama.cpp's openelm, whose head is always the token embedding, so it cannot hold it. Tied Qwen3 "
                f"models (0.6B, 1.7B, 4B) work. {supported_line()}"
            )
        if spec.attention_bias:
            raise SourceError(f"{where}: a Qwen3 with q/k/v biases, which openelm has no tensors for. {supported_line()}")

    @classmethod
    def check_plan(cls, plan: Plan, where: str) -> None:
        removed = [*plan.skip, *plan.linear]
        if removed:
            raise PlanError(
                f"{where} removes the whole attention block of layers {sorted(removed)}; {NO_BLOCKS}: search it "
                "again with --unit group"
            )
