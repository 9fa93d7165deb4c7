"""KV cache bytes from a GGUF's metadata: the one place that does this arithmetic.

``deci`` files give per-layer head counts: a skipped layer has no heads, a linear one no
KV heads, and neither holds K or V. llama.cpp allocates, per token position, each
attention layer's ``kv_heads x (key_length + value_length)`` values in the cache's types
(f16 by default).
"""

from __future__ import annotations

from typing import Any

import gguf


def kv_bytes_per_cell(meta: dict[str, Any], type_k: str = "f16", type_v: str = "f16") -> tuple[int, int]:
    """Bytes of K and V per token position over the layers that have attention, and their
    count. Raises ValueError/TypeError/KeyError on metadata that cannot describe a model."""
    arch = meta["general.architecture"]
    n_layers = int(meta[f"{arch}.block_count"])
    heads = meta[f"{arch}.attention.head_count"]
    kv_heads = meta.get(f"{arch}.attention.head_count_kv", heads)
    per_layer = [int(n) for n in kv_heads] if isinstance(kv_heads, list) else [int(kv_heads)] * n_layers
    n_head = int(max(heads) if isinstance(heads, list) else heads)  # a skipped layer 0 has none
    if len(per_layer) != n_layers or n_head <= 0 or min(per_layer, default=0) < 0:
        raise ValueError(f"{n_layers} layers, head counts {heads}, KV head counts {kv_heads}")
    head_k = int(meta.get(f"{arch}.attention.key_length") or int(meta[f"{arch}.embedding_length"]) // n_head)
    head_v = int(meta.get(f"{arch}.attention.value_length") or head_k)
    per_cell = sum(n * (head_k * type_bytes(type_k) + head_v * type_bytes(type_v)) for n in per_layer)
    return int(per_cell), sum(1 for n in per_layer if n)


def type_bytes(name: str) -> float:
    """Bytes per value of a GGML type (``f16``: 2, ``q8_0``: 34 / 32)."""
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]]
    return size / block
