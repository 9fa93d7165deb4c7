"""KV cache bytes from a GGUF's metadata: the one place that does this arithmetic.

``deci`` files give per-layer head counts: a skipped layer has no heads, a linear one no
KV heads, and neither holds K or V. llama.cpp allocates, per token position, each
attention layer's ``kv_heads x key_length`` K values and ``kv_heads x value_length`` V
values in the cache's types (f16 by default; ``q8_0`` stores 32 values in 34 bytes,
``q4_0`` in 18).

With flash attention off llama.cpp stores V transposed and, when the layers' V widths
differ, pads every layer's V to the widest (llama-kv-cache.cpp, TAG_V_CACHE_VARIABLE):
a removed block keeps a full V cache and only its K saving remains. That layout also needs
a V cache of f16 or f32.
"""

from __future__ import annotations

from typing import Any

import gguf

#: KV cache types ``verify --cache-type`` measures: llama.cpp's default and the two quantized
#: types users set with ``-ctk/-ctv`` (Ollama's ``OLLAMA_KV_CACHE_TYPE``).
CACHE_TYPES = ("f16", "q8_0", "q4_0")


def kv_bytes_per_cell(
    meta: dict[str, Any], type_k: str = "f16", type_v: str = "f16", *, flash_attn: bool = True
) -> tuple[int, int]:
    """Bytes of K and V per token position, and the number of layers whose cache takes any
    (with flash attention off every layer keeps a V cache). Raises ValueError/TypeError/
    KeyError on metadata that cannot describe a model."""
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
    k_widths = [n * head_k for n in per_layer]
    v_widths = [n * head_v for n in per_layer] if flash_attn else [max(per_layer) * head_v] * n_layers
    per_cell = sum(row_bytes(type_k, k) + row_bytes(type_v, v) for k, v in zip(k_widths, v_widths))
    return per_cell, sum(1 for k, v in zip(k_widths, v_widths) if k or v)


def row_bytes(name: str, values: int) -> int:
    """Bytes of ``values`` consecutive values of a GGML type (whole blocks, as ggml stores rows)."""
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]]
    if values % block:
        raise ValueError(f"a row of {values} values is not whole {name} blocks of {block}")
    return values // block * size


def type_bytes(name: str) -> float:
    """Bytes per value of a GGML type (``f16``: 2, ``q8_0``: 34 / 32)."""
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]]
    return size / block
