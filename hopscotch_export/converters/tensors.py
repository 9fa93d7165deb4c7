"""Per-tensor work: what is dropped, permuted, scaled, and in which type it is written.

Scales fold exactly (DESIGN.md section 1): ``attn_output`` rows times ``w_att[l]`` and
``ffn_down`` rows times ``w_mlp[l]`` (rows are output channels, so a per-channel vector
scales rows too). Quantized source tensors kept in their type are scaled by their block
scale fields only (:mod:`.quant_scale`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gguf
import numpy as np
from gguf import GGMLQuantizationType

from ..families import ModelSpec
from ..plan import Plan
from ..sources import ModelSource, SourceTensor
from ..sources.layout import rope_permutation
from .outtypes import OutputChoice, nbytes, tensor_type
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

    @property
    def nbytes(self) -> int:
        return nbytes(self.qtype, self.shape)


def plan_tensors(
    source: ModelSource, plan: Plan | None, choice: OutputChoice, extra: dict[str, np.ndarray]
) -> tuple[list[OutTensor], list[str]]:
    """All output tensors in write order, and the names of the dropped ones."""
    skip = set(plan.skip) if plan else set()
    kept: list[OutTensor] = []
    dropped: list[str] = []
    for name, arr in extra.items():
        kept.append(OutTensor(name, arr.shape, GGMLQuantizationType.F32, lambda arr=arr: arr))
    for t in source.tensors():
        m = _LAYER.match(t.name)
        if m and int(m.group(1)) in skip and m.group(2) in _ATTENTION:
            dropped.append(t.name)
            continue
        qtype = tensor_type(choice, t.name, t.shape, t.qtype)
        kept.append(OutTensor(t.name, t.shape, qtype, _producer(t, qtype, source, plan, keep_raw=choice.direct is None)))
    return kept, dropped


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
        x = t.float32()
        if order is not None:
            x = x[order]
        if factor is not None:
            x = x * (factor[:, None] if x.ndim == 2 and factor.size > 1 else factor).astype(np.float32)
        return encode(np.ascontiguousarray(x, dtype=np.float32), qtype)

    return produce


def _scale_raw(data: np.ndarray, qtype: GGMLQuantizationType, factor: np.ndarray) -> np.ndarray:
    """Scale stored data: 1-D biases element-wise, matrices by rows (block scale fields)."""
    if data.ndim == 1 and qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        return (data * factor.astype(data.dtype)).astype(data.dtype)
    f = factor if factor.size > 1 else float(factor[0])
    return scale_rows(data, qtype, f)


def row_transform(
    name: str, spec: ModelSpec, neox: bool, plan: Plan | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(row order, row factor) for one tensor; None where nothing changes."""
    m = _LAYER.match(name)
    if not m:
        return None, None
    layer, kind = int(m.group(1)), m.group(2)
    if kind in ("attn_q", "attn_k") and neox:
        heads = spec.n_heads if kind == "attn_q" else spec.n_kv_heads
        return rope_permutation(spec.head_dim * heads, heads), None
    if plan is None:
        return None, None
    if kind == "attn_output":
        f = plan.attn_factor(layer)
    elif kind == "ffn_down":
        f = plan.mlp_factor(layer)
    else:
        return None, None
    if f.size == 1 and f[0] == 1.0:
        return None, None
    return None, f


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
