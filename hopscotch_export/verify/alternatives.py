"""What a user already has, measured beside the export: llama.cpp's KV cache quantization.

A smaller KV cache is one flag away in llama.cpp (``-ctk q8_0 -ctv q8_0``) and Ollama
(``OLLAMA_KV_CACHE_TYPE``). So verify measures, on the same windows, the original with a
q8_0 and a q4_0 cache and the export with the cache types it was not verified with, and
says which row to take for memory and which for speed. Each row is a second llama.cpp
context on a model already loaded: no weights are loaded twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gguf

from ..errors import HopscotchError
from ..kv_cache import CACHE_TYPES
from .divergence import Divergence
from .llama_model import KvCacheInfo
from .perplexity import Perplexity
from .speed import Speed

#: Without ``--max-kl``, a row is as good as the export being verified when its mean KL is
#: at most this much above the export's (llama.cpp's q8_0 cache moves KL by about 1%).
KL_SLACK = 0.05

#: (model, cache type) measured besides the original with f16 (the reference) and the
#: export with ``--cache-type`` (the main row)
ALTERNATIVES = (("original", "q8_0"), ("original", "q4_0"), ("export", "f16"), ("export", "q8_0"))


def check_cache_type(cache_type: str, head_dim: int | None = None) -> None:
    """``--cache-type`` must name a type llama.cpp's KV cache takes and verify measures and,
    given the model's ``head_dim``, one llama.cpp can create for it: a quantized cache
    needs whole blocks per head (llama_init_from_model refuses the context otherwise).
    Checked before any model is scored, not after the reference's whole pass."""
    if cache_type not in CACHE_TYPES:
        raise HopscotchError(
            f"--cache-type {cache_type!r} is not a KV cache type verify measures: use {', '.join(CACHE_TYPES)}"
        )
    block = _block(cache_type)
    if head_dim is not None and head_dim % block:
        usable = ", ".join(t for t in CACHE_TYPES if head_dim % _block(t) == 0)
        raise HopscotchError(
            f"--cache-type {cache_type}: llama.cpp cannot create a {cache_type} KV cache for this model (K cache "
            f"type {cache_type} with block size {block} does not divide n_embd_head_k={head_dim}); use {usable}"
        )


def _block(cache_type: str) -> int:
    """Values per block of a GGML type (1 for f16)."""
    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[cache_type.upper()]][0]


def row_label(model: str, cache_type: str) -> str:
    """``original, q8_0 KV``: how a row is named in the table and the JSON report."""
    return f"{model}, {cache_type} KV"


def alternatives_for(cache_type: str) -> list[tuple[str, str]]:
    """The alternative rows when the export's main row uses ``cache_type``."""
    return [a for a in ALTERNATIVES if a != ("export", cache_type)]


@dataclass(frozen=True)
class Row:
    """One model with one KV cache type, measured on the held-out windows (and for speed)."""

    model: str  # "original" or "export"
    path: str
    kv_cache: KvCacheInfo
    perplexity: Perplexity
    #: from the original with an f16 cache; None for that row itself
    divergence: Divergence | None
    speed: Speed | None
    #: the row verify's comparison and gates are about
    main: bool = False

    @property
    def label(self) -> str:
        return row_label(self.model, self.kv_cache.type_k)

    @property
    def in_words(self) -> str:
        """``the original with a q8_0 KV cache``."""
        t = self.kv_cache.type_k
        return f"the {self.model} with {'an' if t.startswith('f') else 'a'} {t} KV cache"

    @property
    def mean_kl(self) -> float:
        return self.divergence.mean_kl if self.divergence else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "path": self.path,
            "cache_type": self.kv_cache.type_k,
            "main": self.main,
            "kv_bytes_per_token": self.kv_cache.bytes_per_token,
            "kv_bytes": self.kv_cache.bytes,
            "kv_bytes_flash_attention_off": self.kv_cache.flash_off_bytes,
            "mean_kl": self.mean_kl,
            "divergence": self.divergence.to_json() if self.divergence else None,
            "perplexity": self.perplexity.to_json(),
            "speed": self.speed.to_json() if self.speed else None,
        }


@dataclass(frozen=True)
class Recommendation:
    """Which row to take for memory and which for speed, among rows close enough in quality."""

    kl_tolerance: float
    #: where the tolerance comes from, in words
    tolerance_from: str
    memory: Row
    #: None when speed was not measured
    speed: Row | None

    def line(self, reference: Row) -> str:
        """The plain sentence under the table."""
        m = self.memory
        text = (
            f"For memory take {m.in_words} (KV x{m.kv_cache.bytes / reference.kv_cache.bytes:.3f}, "
            f"mean KL {m.mean_kl:.4f})"
        )
        if self.speed is not None and reference.speed is not None:
            s = self.speed
            text += (
                f"; for speed take {s.in_words} (generation x{s.speed.gen_tps / reference.speed.gen_tps:.2f}, "
                f"prompt x{s.speed.prompt_tps / reference.speed.prompt_tps:.2f})"
            )
        return (
            f"{text}. Rule: among rows with mean KL at most {self.kl_tolerance:.4g} ({self.tolerance_from}), "
            "the smallest KV cache for memory, the fastest generation (tokens/s) for speed."
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kl_tolerance": self.kl_tolerance,
            "tolerance_from": self.tolerance_from,
            "memory": self.memory.label,
            "speed": self.speed.label if self.speed else None,
        }


def recommend(rows: Sequence[Row], max_kl: float | None) -> Recommendation:
    """Rows whose mean KL is within ``--max-kl`` (else within ``KL_SLACK`` of the main row's):
    the smallest KV cache for memory, the fastest generation for speed (ties: lower KL)."""
    main = next(r for r in rows if r.main)
    if max_kl is not None:
        tolerance, source = max_kl, "--max-kl"
    else:
        tolerance, source = main.mean_kl * (1 + KL_SLACK), f"the verified export's + {KL_SLACK:.0%}"
    close = [r for r in rows if r.mean_kl <= tolerance] or [main]
    memory = min(close, key=lambda r: (r.kv_cache.bytes, r.mean_kl))
    timed = [r for r in close if r.speed is not None]
    speed = max(timed, key=lambda r: (r.speed.gen_tps, -r.mean_kl)) if timed else None  # type: ignore[union-attr]
    return Recommendation(tolerance, source, memory, speed)
