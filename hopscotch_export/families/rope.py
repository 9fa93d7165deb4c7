"""Rope scaling as a config states it, and the kinds ``deci`` carries or cannot express."""

from __future__ import annotations

from typing import Any

#: rope scaling kinds ``deci`` carries besides plain rope
ROPE_CARRIED = ("llama3", "linear")
#: rope deci cannot express: Phi-3's longrope (su, yarn), and a rotary dimension short of the head
LONG_ROPE = ("switches between two sets of per-dimension rope factors by context length, which deci's plain rope "
             "cannot express")  # fmt: skip
PARTIAL_ROPE = "rotates only part of each head, and deci rotates the whole head"


def rope_scaling_of(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """A config.json's rope scaling (``rope_scaling``, or transformers 5's
    ``rope_parameters``); None for plain rope."""
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    return rope if isinstance(rope, dict) and rope_kind(rope) != "default" else None


def rope_kind(rope: dict[str, Any] | None) -> str:
    """``llama3``, ``linear``, ``yarn``, ... (``default`` for plain rope)."""
    return str((rope or {}).get("rope_type", (rope or {}).get("type")) or "default").lower()
