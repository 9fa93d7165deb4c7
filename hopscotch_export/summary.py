"""``inspect``: what a plan or a GGUF holds, for people deciding whether to ship it.

Each layer's attention is one of ``keep``, ``skip`` or ``linear`` (a fitted map in place
of attention: in a GGUF, head_count > 0 with head_count_kv 0, as llama.cpp's ``deci``
reads it). A layer that keeps only some of its KV groups is a ``keep`` layer; ``kv_groups``
says which it keeps (``keep 2/3 KV groups``), from its head counts and, in our files, the
``hopscotch.kv_groups`` key.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from .errors import HopscotchError
from .kv_cache import kv_bytes_per_cell
from .plan import load_plan
from .sources.gguf_file import scan_gguf


def gguf_tensor_types(path: Path | str) -> dict[str, str]:
    """Tensor name -> GGML type name."""
    return {name: info[0].name for name, info in scan_gguf(Path(path)).tensors.items()}


def _per_layer(value: Any, n: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, list) else [int(value)] * n


def layer_kind(heads: int, kv_heads: int) -> str:
    """A GGUF layer's attention kind from its head counts."""
    if heads == 0:
        return "skip"
    return "keep" if kv_heads else "linear"


def gguf_summary(path: Path | str) -> dict[str, Any]:
    """Architecture, attention layers, tensor types, size and KV cache bytes per token."""
    path = Path(path)
    header = scan_gguf(path)  # the checked header alone: gguf-py's reader decodes the whole vocabulary
    get = header.metadata.get
    arch = get("general.architecture")
    try:  # a value of the wrong type or an impossible one (no heads) is the file's fault
        n = int(get(f"{arch}.block_count", 0))
        if not 0 <= n <= len(header.tensors):  # each block has tensors; a damaged count is not a list size
            raise ValueError(f"block_count {n}")
        heads = _per_layer(get(f"{arch}.attention.head_count", 0), n)
        kv_heads = _per_layer(get(f"{arch}.attention.head_count_kv", heads), n)
        kv_per_token = kv_bytes_per_cell(header.metadata)[0] if n else 0
    except (TypeError, ValueError, KeyError, ZeroDivisionError, OverflowError) as e:
        raise HopscotchError(
            f"{path} has malformed {arch}.* attention metadata ({type(e).__name__}: {str(e)[:60]}); "
            "re-download or re-convert it"
        ) from None
    types = Counter(info[0].name for info in header.tensors.values())
    kinds = [layer_kind(h, kv) for h, kv in zip(heads, kv_heads)]
    groups = _gguf_groups(get("hopscotch.kv_groups"), heads, kv_heads)
    return {
        "file": str(path),
        "architecture": arch,
        "name": get("general.name"),
        "layers": n,
        "layer_kinds": kinds,
        "attention_layers": [i for i, k in enumerate(kinds) if k == "keep"],
        "skipped_attention": [i for i, k in enumerate(kinds) if k == "skip"],
        "linear_attention": [i for i, k in enumerate(kinds) if k == "linear"],
        **({"kv_groups": groups} if groups else {}),
        "tensor_types": dict(types.most_common()),
        "tensors": len(header.tensors),
        "size_bytes": path.stat().st_size,
        "kv_cache_bytes_per_token": kv_per_token,
        "source_fingerprint": get("hopscotch.source_fingerprint"),
    }


def kept_line(kept: int, total: int, groups: Any = None) -> str:
    """``keep 2/3 KV groups (0, 2)``: what a partly cut layer keeps."""
    which = f" ({', '.join(map(str, groups))})" if groups else ""
    return f"keep {kept}/{total} KV groups{which}"


def _gguf_groups(recorded: Any, heads: list[int], kv_heads: list[int]) -> dict[str, str]:
    """Layer -> what it keeps, for layers with fewer KV heads than the file's widest (layer
    0 is never cut); the groups kept as ``hopscotch.kv_groups`` records them, if it does."""
    try:
        named = json.loads(recorded) if isinstance(recorded, str) else {}
    except ValueError:
        named = {}
    widest = max(kv_heads, default=0)
    return {
        str(i): f"{kept_line(kv, widest, named.get(str(i)) if isinstance(named, dict) else None)}, {h} heads"
        for i, (h, kv) in enumerate(zip(heads, kv_heads))
        if 0 < kv < widest
    }


def plan_summary(path: Path | str) -> dict[str, Any]:
    """What a plan skips and how far its scales are from 1."""
    plan = load_plan(path)

    def spread(scales: tuple[Any, ...], layers: list[int]) -> list[float]:
        flat = [v for i in layers for v in (scales[i] if isinstance(scales[i], list) else [scales[i]])]
        return [min(flat), max(flat)] if flat else []

    return {
        "file": str(path),
        "architecture": plan.model.architecture,
        "layers": plan.model.n_layers,
        "fingerprint": plan.model.fingerprint,
        "complete": plan.complete,
        "layer_kinds": [plan.kind(i) for i in range(plan.model.n_layers)],
        "skipped_attention": list(plan.skip),
        "linear_attention": list(plan.linear),
        **({"kv_groups": {str(i): kept_line(len(g), plan.model.n_kv_heads or 0, g) for i, g in plan.kv_groups.items()},
            "kv_saving": plan.kv_saving()} if plan.kv_groups else {}),
        "granularity": plan.granularity,
        "attn_scale_range": spread(plan.attn, plan.kept_attention),
        "mlp_scale_range": spread(plan.mlp, list(range(plan.model.n_layers))),
        "attn_scales": list(plan.attn) if plan.granularity == "layer" else "per channel",
        "mlp_scales": list(plan.mlp) if plan.granularity == "layer" else "per channel",
    }


def summarize(path: Path | str) -> dict[str, Any]:
    """Dispatch on the file's content: GGUF magic, else a JSON plan."""
    path = Path(path)
    if not path.is_file():
        raise HopscotchError(f"{path} not found; pass a plan .json or a .gguf file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return gguf_summary(path)
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or past the parser's limits
        raise HopscotchError(f"{path} is neither a GGUF file nor a JSON plan") from None
    return plan_summary(path)
