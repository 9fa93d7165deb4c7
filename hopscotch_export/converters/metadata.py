"""GGUF metadata for the ``deci`` architecture (docs/design.md section 2), and for
``openelm`` (Qwen3, section 5), which reads the same keys.

``deci`` reads per-layer head counts, so a layer with head_count 0 has no attention
tensors, and one with head_count n_head and head_count_kv 0 is a "linear attention" layer
(``x + attn_output · attn_norm(x)``, no KV cache; llama.cpp's ``src/models/deci.cpp``,
the ``n_head > 0 && n_head_kv == 0`` branch). Key length, value length and rope dimension
are written explicitly (llama.cpp and Ollama need them), and layer 0 always keeps its
attention (llama.cpp reads the head size there).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGUFValueType, GGUFWriter

from ..families import ModelSpec
from ..families.rope import rope_kind
from ..plan import Plan
from ..sources import GgufFileSource, ModelSource

#: Keys the writer or this module sets itself; never copied from a GGUF source.
_NOT_COPIED_PREFIXES = ("GGUF.", "general.architecture", "general.file_type", "split.")


def write_hparams(
    writer: GGUFWriter,
    spec: ModelSpec,
    skip: tuple[int, ...],
    linear: tuple[int, ...] = (),
    kv_groups: Mapping[int, tuple[int, ...]] | None = None,
) -> None:
    """Hyper-parameters; skipped layers get head_count 0 and head_count_kv 0, linear
    layers head_count n_head and head_count_kv 0, a layer keeping ``k`` KV groups
    ``k * n_head / n_head_kv`` and ``k``."""
    kv_groups = kv_groups or {}
    per_group = spec.n_heads // spec.n_kv_heads
    heads = [0 if i in skip else len(kv_groups[i]) * per_group if i in kv_groups else spec.n_heads
             for i in range(spec.n_layers)]  # fmt: skip
    kv_heads = [0 if i in skip or i in linear else len(kv_groups.get(i, ())) or spec.n_kv_heads
                for i in range(spec.n_layers)]  # fmt: skip
    writer.add_block_count(spec.n_layers)
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(spec.hidden_size)
    writer.add_feed_forward_length(spec.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(spec.head_dim)
    writer.add_value_length(spec.head_dim)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_rope_freq_base(spec.rope_theta)
    writer.add_layer_norm_rms_eps(spec.rms_eps)
    writer.add_vocab_size(spec.vocab_size)
    _add_rope_scaling(writer, spec)


def write_provenance(writer: GGUFWriter, plan: Plan | None, source: ModelSource) -> None:
    """``hopscotch.*`` keys so ``inspect`` can say what was done; llama.cpp ignores them."""
    writer.add_string("hopscotch.source_fingerprint", source.fingerprint())
    if plan is not None:
        writer.add_array("hopscotch.skip", [int(i) for i in plan.skip])
        if plan.linear:  # absent otherwise, so a plan without linear layers gives the same file as before
            writer.add_array("hopscotch.linear", sorted(int(i) for i in plan.linear))
        if plan.kv_groups:  # absent otherwise, so a plan cutting no groups gives the same file as before
            groups = {str(i): list(g) for i, g in plan.kv_groups.items()}
            writer.add_string("hopscotch.kv_groups", json.dumps(groups, separators=(",", ":")))
        writer.add_string("hopscotch.granularity", plan.granularity)


def copy_gguf_metadata(writer: GGUFWriter, source: GgufFileSource) -> None:
    """Copy every key of a GGUF source (tokenizer verbatim), renaming ``llama.``/``qwen2.``
    keys to ``deci.`` (``qwen3.`` to ``openelm.``); hyper-parameters written by
    :func:`write_hparams` win."""
    prefix = source.arch + "."
    for key, field in source.reader.fields.items():
        if key.startswith(_NOT_COPIED_PREFIXES) or not field.types:
            continue
        if key.startswith(prefix):
            key = writer.arch + "." + key[len(prefix):]
        if any(key in kv for kv in writer.kv_data):
            continue
        main = field.types[0]
        sub = field.types[-1] if main == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), main, sub_type=sub)


def write_general(writer: GGUFWriter, source: ModelSource, name: str | None) -> None:
    """``general.name``: ``name`` when given; else a GGUF source's own (if it has one), a
    Hugging Face source's folder name. Written after the vocabulary, which it is checked
    against: a name llama.cpp takes for Phi-3's needs tokens that Phi-3's vocabulary has."""
    kv = writer.kv_data[0]
    own = kv.pop(gguf.Keys.General.NAME, None)  # a GGUF source's, copied with its other keys
    if name is None and own is not None:
        name = own.value
    elif name is None and not isinstance(source, GgufFileSource):
        name = Path(source.path).name
    if name is None:
        return  # a GGUF source without one
    tokens = kv.get(gguf.Keys.Tokenizer.LIST)
    writer.add_name(_not_phi3(name, set(tokens.value) if tokens is not None else set()))


#: llama.cpp's vocabulary loader sets Phi-3 token attributes when the lowercased
#: ``general.name`` contains "phi3" or "phi-3", looking these tokens up by text; a
#: vocabulary without one of them (a GPT-2 style BPE one: Phi-4, SmolLM2) fails to load
_PHI3_NAME = re.compile(r"(phi)-?(3)", re.IGNORECASE)
_PHI3_TOKENS = ("</s>", "<unk>", "<s>", "<|endoftext|>")


def _not_phi3(name: str, tokens: set[str]) -> str:
    """``name``, with "phi3" / "phi-3" written "phi 3" when llama.cpp's Phi-3 rules could not
    find their tokens in ``tokens``."""
    if all(t in tokens for t in _PHI3_TOKENS):
        return name
    return _PHI3_NAME.sub(r"\1 \2", name)


def rope_freqs(spec: ModelSpec) -> np.ndarray | None:
    """Llama 3 rope scaling as a ``rope_freqs`` tensor, with llama.cpp's converter formula."""
    rs = spec.rope_scaling
    if rs is None or rope_kind(rs) != "llama3":
        return None
    dim = spec.head_dim
    freqs = 1.0 / (spec.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = float(rs.get("factor", 8.0))
    low = float(rs.get("low_freq_factor", 1.0))
    high = float(rs.get("high_freq_factor", 4.0))
    old_ctx = float(rs.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _add_rope_scaling(writer: GGUFWriter, spec: ModelSpec) -> None:
    """Linear scaling as its keys (llama3's is the ``rope_freqs`` tensor). The family refused
    any other kind when the source was opened, before the search; asked again here, it
    gives the same line."""
    rs: dict[str, Any] | None = spec.rope_scaling
    spec.family.check_rope(rs, "the model")
    if rs is not None and rope_kind(rs) == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rs["factor"]))
