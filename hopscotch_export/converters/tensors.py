"""Per-tensor work: what is dropped, permuted, scaled, and in which type it is written.

Scales fold exactly (docs/design.md section 1): ``attn_output`` rows times ``w_att[l]`` and
``ffn_down`` rows times ``w_mlp[l]`` (rows are output channels, so a per-channel vector
scales rows too). Quantized source tensors kept in their type are scaled by their block
scale fields only (:mod:`.quant_scale`).

A skipped layer loses all its attention tensors. A linear layer (``deci``'s
``x + W · attn_norm(x)``) keeps ``attn_norm``, loses q/k/v and their biases and the
``attn_output`` bias (its graph reads none of them), and its ``attn_output`` is replaced,
in place, by the plan's map with the attention scale folded into its rows.

A layer that keeps only some KV groups keeps the rows of ``attn_q`` (its kept groups'
query heads), ``attn_k`` and ``attn_v`` (their KV heads) and of their biases, and the
matching input columns of ``attn_output``. Rows are whole blocks, so they are copied; the
NORM-order rope permutation of q/k stays within a head, so it is applied first and the
kept heads' rows taken from it. ``attn_output``'s columns are copied as whole blocks where
a head is whole blocks of its type (float types, 32-wide blocks), and requantized
otherwise (K-quants: :func:`.outtypes.cut_type` says to what).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import SourceError
from ..estimates import tensor_bytes
from ..families import ModelSpec
from ..plan import Plan
from ..sources import ModelSource, SourceTensor
from ..sources.layout import rope_permutation
from .outtypes import PYTHON_ENCODED, OutputChoice, bits_per_weight, cut_type, map_type, tensor_type
from .quant_scale import scale_rows, select_columns, select_rows
from .quantize import ggml_quantize

_LAYER = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_ATTENTION = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output"}


@dataclass
class OutTensor:
    """A tensor to write: its final name, numpy-order shape, type, and how to make it."""

    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    produce: Callable[[], np.ndarray]
    #: made from a plan's linear map rather than read from the source
    fitted: bool = False
    #: the source's shape, where the plan cuts rows or columns (None: the same)
    source_shape: tuple[int, ...] | None = None
    #: how a tensor that lost columns was re-encoded (``Q4_K -> Q5_0``); None when copied
    requantized: str | None = None
    #: the tensors stacked by rows into this one (``openelm``'s ``attn_qkv``)
    parts: tuple[OutTensor, ...] = ()

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.qtype, self.shape)


def plan_tensors(
    source: ModelSource, plan: Plan | None, choice: OutputChoice, extra: dict[str, np.ndarray], fuse: bool = True
) -> tuple[list[OutTensor], list[str]]:
    """All output tensors in write order, and the names of the dropped ones (a linear
    layer's source ``attn_output.weight`` is replaced, not dropped: the name stays).
    ``fuse``: stack q, k and v as the written architecture wants (``openelm``); without it
    they stay apart under the source family's names (how tests write a ``qwen3`` GGUF)."""
    kept: list[OutTensor] = []
    dropped: list[str] = []
    for name, arr in extra.items():
        kept.append(OutTensor(name, arr.shape, GGMLQuantizationType.F32, lambda arr=arr: arr))
    for t in source.tensors():
        fate = _fate(t.name, plan)
        if fate == "drop":
            dropped.append(t.name)
            continue
        if fate == "map" and plan is not None:
            kept.append(_map_tensor(t, plan, choice, source.spec))
            continue
        kept.append(_out_tensor(t, source, plan, choice))
    if fuse and source.spec.family.gguf_out == "openelm":
        kept = fuse_qkv(kept)
    return kept, dropped


_QKV = ("attn_q", "attn_k", "attn_v")


def fuse_qkv(tensors: list[OutTensor]) -> list[OutTensor]:
    """``openelm``'s ``attn_qkv`` in place of each layer's ``attn_q``, ``attn_k`` and ``attn_v``:
    their rows stacked in that order (each already cut to the kept heads), where the first
    of them stood. A layer lacking one of the three (a damaged file) is refused, naming it."""
    parts: dict[str, dict[str, OutTensor]] = {}
    for t in tensors:
        m = _LAYER.match(t.name)
        if m and m.group(2) in _QKV:
            parts.setdefault(f"blk.{m.group(1)}.attn_qkv.{m.group(3)}", {})[m.group(2)] = t
    for name, got in parts.items():
        _, layer, _, kind = name.split(".")
        missing = [f"blk.{layer}.{k}.{kind}" for k in _QKV if k not in got]
        if missing:
            have = ", ".join(t.name for t in got.values())
            raise SourceError(
                f"the model has {have} but no {' or '.join(missing)}, so its attention cannot be written "
                "(a damaged file?); convert the model again from its original weights"
            )
    out = []
    for t in tensors:
        m = _LAYER.match(t.name)
        if m is None or m.group(2) not in _QKV:
            out.append(t)
            continue
        name = f"blk.{m.group(1)}.attn_qkv.{m.group(3)}"
        got = parts.pop(name, None)  # at the layer's first part; None at the other two
        if got is not None:
            out.append(_stacked(name, [got[k] for k in _QKV]))
    return out


def _stacked(name: str, parts: list[OutTensor]) -> OutTensor:
    """One tensor of ``parts``' rows. Rows are whole blocks of every type, so parts of one
    type are copied; parts of several (a K-quant mix gives ``attn_v`` Q6_K beside Q4_K) are
    stored in the most precise of them, the others re-encoded from their values."""
    qtype = max((p.qtype for p in parts), key=bits_per_weight)

    def produce() -> np.ndarray:
        data = [p.produce() for p in parts]
        return np.concatenate([
            d if p.qtype == qtype else encode(np.asarray(gguf.quants.dequantize(d, p.qtype), np.float32), qtype)
            for p, d in zip(parts, data)
        ])  # fmt: skip

    shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
    moved = [f"{p.name.split('.')[2]} {p.qtype.name} -> {qtype.name}" for p in parts if p.qtype != qtype]
    return OutTensor(name, shape, qtype, produce, requantized=", ".join(moved) or None, parts=tuple(parts))


def _fate(name: str, plan: Plan | None) -> Literal["keep", "drop", "map"]:
    """What becomes of one source tensor under ``plan``."""
    m = _LAYER.match(name)
    if m is None or plan is None or m.group(2) not in _ATTENTION:
        return "keep"
    kind = plan.kind(int(m.group(1)))
    if kind == "skip":
        return "drop"
    if kind == "linear" and m.group(2) == "attn_output" and m.group(3) == "weight":
        return "map"
    if kind == "linear" and m.group(2) != "attn_norm":
        return "drop"
    return "keep"


def _map_tensor(t: SourceTensor, plan: Plan, choice: OutputChoice, spec: ModelSpec) -> OutTensor:
    """The linear layer's map in place of the source ``attn_output`` ``t``, attention scale
    (and the family's constant on ``attn_output``) folded."""
    layer, hidden = int(t.name.split(".")[1]), spec.hidden_size  # blk.<layer>.attn_output.weight
    qtype = map_type(choice, t.qtype, hidden)
    factor = (plan.attn_factor(layer) * spec.folded.get("attn_output", 1.0)).astype(np.float32)
    weight = plan.maps[layer]

    def produce() -> np.ndarray:
        x = weight * (factor[:, None] if factor.size > 1 else factor)
        return encode(np.ascontiguousarray(x, dtype=np.float32), qtype)

    return OutTensor(t.name, (hidden, hidden), qtype, produce, fitted=True)


def _out_tensor(t: SourceTensor, source: ModelSource, plan: Plan | None, choice: OutputChoice) -> OutTensor:
    """A kept source tensor: its rows (and ``attn_output``'s columns) under a group cut, its type."""
    spec = source.spec
    order, factor = row_transform(t.name, spec, source.q_k_rope_neox, plan)
    cols = kept_columns(t.name, spec, plan)
    shape = t.shape
    if order is not None:
        shape = (len(order), *shape[1:])
    if cols is not None:
        shape = (shape[0], len(cols))
    qtype = tensor_type(choice, t.name, shape, t.qtype)
    keep_raw = choice.direct is None and qtype == t.qtype
    note = None
    if cols is not None and keep_raw:
        qtype = cut_type(t.qtype, spec.head_dim, len(cols))
        keep_raw = spec.head_dim % GGML_QUANT_SIZES[t.qtype][0] == 0
        if not keep_raw:
            note = f"{t.qtype.name} -> {qtype.name}"
    produce = _producer(t, qtype, order, factor, cols, keep_raw)
    return OutTensor(t.name, shape, qtype, produce, source_shape=None if shape == t.shape else t.shape,
                     requantized=note)  # fmt: skip


def _producer(
    t: SourceTensor, qtype: GGMLQuantizationType, order: np.ndarray | None, factor: np.ndarray | None,
    cols: np.ndarray | None, raw_path: bool,
) -> Callable[[], np.ndarray]:
    """A closure that loads, reorders or selects rows (and columns), scales and encodes one tensor."""

    def produce() -> np.ndarray:
        if raw_path:
            data = t.raw()
            if order is not None:
                data = select_rows(data, order)
            if cols is not None:
                data = select_columns(data, t.qtype, cols)
            if factor is not None:
                data = _scale_raw(data, t.qtype, factor)
            return data
        if order is None and len(t.shape) == 2:
            return _encode_by_rows(t, factor, qtype, cols)
        x = t.float32()
        if order is not None:
            x = x[order]
        return encode(_scaled(x, factor), qtype)

    return produce


#: Elements converted at once (32 MB in float32): a matrix's float32 form is never whole in
#: memory (an 8B model's embedding is 2 GB in float32), only its encoded output.
CHUNK_ELEMENTS = 2**23


def _encode_by_rows(
    t: SourceTensor, factor: np.ndarray | None, qtype: GGMLQuantizationType, cols: np.ndarray | None = None
) -> np.ndarray:
    """Read, scale and encode a matrix a block of rows at a time (only ``cols`` of each
    row, when given), into one output array."""
    step = max(1, CHUNK_ELEMENTS // t.shape[1])
    out: np.ndarray | None = None
    for start in range(0, t.shape[0], step):
        stop = min(start + step, t.shape[0])
        rows = factor[start:stop] if factor is not None and factor.size > 1 else factor
        x = t.rows(start, stop)
        part = encode(_scaled(x if cols is None else x[:, cols], rows), qtype)
        if out is None:
            out = np.empty((t.shape[0], *part.shape[1:]), dtype=part.dtype)
        out[start:stop] = part
    assert out is not None
    return out


def _scaled(x: np.ndarray, factor: np.ndarray | None) -> np.ndarray:
    """``x`` (float32) with ``factor`` folded into its rows: one per row, or one for all."""
    if factor is not None:
        x = x * (factor[:, None] if x.ndim == 2 and factor.size > 1 else factor).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def _scale_raw(data: np.ndarray, qtype: GGMLQuantizationType, factor: np.ndarray) -> np.ndarray:
    """Scale stored data: 1-D biases element-wise, matrices by rows (block scale fields)."""
    if data.ndim == 1 and qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        return (data * factor.astype(data.dtype)).astype(data.dtype)
    f = factor if factor.size > 1 else float(factor[0])
    return scale_rows(data, qtype, f)


def row_transform(
    name: str, spec: ModelSpec, neox: bool, plan: Plan | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(rows, row factor) for one tensor; None where nothing changes. The rows are the
    output's rows in source order: the q/k rope permutation, and only the kept heads' rows
    of a layer that cuts KV groups. The factor is the plan's branch scale times the
    family's constant for the tensor's kind."""
    m = _LAYER.match(name)
    kind = m.group(2) if m else name.partition(".")[0]
    order = None
    if m and kind in ("attn_q", "attn_k") and neox and not spec.family.out_rope_neox:
        heads = spec.n_heads if kind == "attn_q" else spec.n_kv_heads
        order = rope_permutation(spec.head_dim * heads, heads)
    if m and kind in ("attn_q", "attn_k", "attn_v"):
        kept = _kept_channels(spec, plan, int(m.group(1)), kind)
        if kept is not None:  # the permutation stays within a head: take the kept heads' rows of it
            order = kept if order is None else order[kept]
    f = np.asarray([spec.folded.get(kind, 1.0)])
    if m and plan is not None and kind == "attn_output":
        f = f * plan.attn_factor(int(m.group(1)))
    elif m and plan is not None and kind == "ffn_down":
        f = f * plan.mlp_factor(int(m.group(1)))
    return order, None if f.size == 1 and f[0] == 1.0 else f


def kept_columns(name: str, spec: ModelSpec, plan: Plan | None) -> np.ndarray | None:
    """The input columns ``attn_output.weight`` keeps under a KV-group cut (those of the kept
    query heads); None when it keeps all of them."""
    m = _LAYER.match(name)
    if m is None or m.group(2) != "attn_output" or m.group(3) != "weight":
        return None
    return _kept_channels(spec, plan, int(m.group(1)), "attn_q")


def _kept_channels(spec: ModelSpec, plan: Plan | None, layer: int, kind: str) -> np.ndarray | None:
    """Channels (head-major) of the heads that ``layer`` keeps: query heads for ``attn_q``,
    KV heads for ``attn_k``/``attn_v``; None when the layer cuts no KV groups. Query head
    ``h`` belongs to group ``h // (n_heads / n_kv_heads)``."""
    groups = plan.kept_groups(layer) if plan is not None else None
    if not groups:
        return None
    per_group = spec.n_heads // spec.n_kv_heads if kind == "attn_q" else 1
    heads = np.asarray([g * per_group + j for g in groups for j in range(per_group)])
    return (heads[:, None] * spec.head_dim + np.arange(spec.head_dim)).ravel()


def encode(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """float32 values to the stored form gguf-py's writer expects for ``qtype``."""
    if qtype == GGMLQuantizationType.F32:
        return x
    if qtype == GGMLQuantizationType.F16:
        import torch  # vectorised conversion; numpy's float16 cast is about 10x slower

        return torch.from_numpy(x).half().numpy()
    if qtype in PYTHON_ENCODED:
        return gguf.quants.quantize(x, qtype)
    return ggml_quantize(x.reshape(-1, x.shape[-1]), qtype).reshape(*x.shape[:-1], -1)


def iter_produced(tensors: list[OutTensor]) -> Iterator[tuple[OutTensor, np.ndarray]]:
    """Produce tensors one at a time, so only one is in memory."""
    for t in tensors:
        yield t, t.produce()
