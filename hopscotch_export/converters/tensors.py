"""Per-tensor work: what is dropped, permuted, scaled, and in which type it is written.

Scales fold exactly (docs/design.md section 1): ``attn_output`` rows times ``w_att[l]`` and
``ffn_down`` rows times ``w_mlp[l]`` (rows are output channels, so a per-channel vector
scales rows too). Quantized source tensors kept in their type are scaled by their block
scale fields only (:mod:`.quant_scale`).

A skipped layer loses all its attention tensors. A linear layer (``deci``'s
``x + W · attn_norm(x)``) keeps ``attn_norm``, loses q/k/v and their biases and the
``attn_output`` bias (its graph reads none of them), and its ``attn_output`` is replaced,
in place, by the plan's map with the attention scale folded into its rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import gguf
import numpy as np
from gguf import GGMLQuantizationType

from ..families import ModelSpec
from ..plan import Plan
from ..sources import ModelSource, SourceTensor
from ..sources.layout import rope_permutation
from .outtypes import OutputChoice, map_type, nbytes, tensor_type
from .quant_scale import permute_rows, scale_rows

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

    @property
    def nbytes(self) -> int:
        return nbytes(self.qtype, self.shape)


def plan_tensors(
    source: ModelSource, plan: Plan | None, choice: OutputChoice, extra: dict[str, np.ndarray]
) -> tuple[list[OutTensor], list[str]]:
    """All output tensors in write order, and the names of the dropped ones (a linear
    layer's source ``attn_output.weight`` is replaced, not dropped: the name stays)."""
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
        qtype = tensor_type(choice, t.name, t.shape, t.qtype)
        kept.append(OutTensor(t.name, t.shape, qtype, _producer(t, qtype, source, plan, keep_raw=choice.direct is None)))
    return kept, dropped


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


def _producer(
    t: SourceTensor, qtype: GGMLQuantizationType, source: ModelSource, plan: Plan | None, keep_raw: bool
) -> Callable[[], np.ndarray]:
    """A closure that loads, permutes, scales and encodes one tensor."""
    order, factor = row_transform(t.name, source.spec, source.q_k_rope_neox, plan)
    raw_path = keep_raw and qtype == t.qtype

    def produce() -> np.ndarray:
        if raw_path:
            data = t.raw()
            if order is not None:
                data = permute_rows(data, order) if data.ndim > 1 else np.ascontiguousarray(data[order])
            if factor is not None:
                data = _scale_raw(data, t.qtype, factor)
            return data
        if order is None and len(t.shape) == 2:
            return _encode_by_rows(t, factor, qtype)
        x = t.float32()
        if order is not None:
            x = x[order]
        return encode(_scaled(x, factor), qtype)

    return produce


#: Elements converted at once (32 MB in float32): a matrix's float32 form is never whole in
#: memory (an 8B model's embedding is 2 GB in float32), only its encoded output.
CHUNK_ELEMENTS = 2**23


def _encode_by_rows(t: SourceTensor, factor: np.ndarray | None, qtype: GGMLQuantizationType) -> np.ndarray:
    """Read, scale and encode a matrix a block of rows at a time, into one output array."""
    step = max(1, CHUNK_ELEMENTS // t.shape[1])
    out: np.ndarray | None = None
    for start in range(0, t.shape[0], step):
        stop = min(start + step, t.shape[0])
        rows = factor[start:stop] if factor is not None and factor.size > 1 else factor
        part = encode(_scaled(t.rows(start, stop), rows), qtype)
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
    """(row order, row factor) for one tensor; None where nothing changes. The factor is
    the plan's branch scale times the family's constant for the tensor's kind."""
    m = _LAYER.match(name)
    kind = m.group(2) if m else name.partition(".")[0]
    order = None
    if m and kind in ("attn_q", "attn_k") and neox:
        heads = spec.n_heads if kind == "attn_q" else spec.n_kv_heads
        order = rope_permutation(spec.head_dim * heads, heads)
    f = np.asarray([spec.folded.get(kind, 1.0)])
    if m and plan is not None and kind == "attn_output":
        f = f * plan.attn_factor(int(m.group(1)))
    elif m and plan is not None and kind == "ffn_down":
        f = f * plan.mlp_factor(int(m.group(1)))
    return order, None if f.size == 1 and f[0] == 1.0 else f


def encode(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """float32 values to the stored form gguf-py's writer expects for ``qtype``."""
    if qtype == GGMLQuantizationType.F32:
        return x
    if qtype == GGMLQuantizationType.F16:
        import torch  # vectorised conversion; numpy's float16 cast is about 10x slower

        return torch.from_numpy(x).half().numpy()
    return gguf.quants.quantize(x, qtype)


def iter_produced(tensors: list[OutTensor]) -> Iterator[tuple[OutTensor, np.ndarray]]:
    """Produce tensors one at a time, so only one is in memory."""
    for t in tensors:
        yield t, t.produce()
