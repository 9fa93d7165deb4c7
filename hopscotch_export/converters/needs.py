"""What a conversion needs before it writes a byte: disk for the output (and for the f16
intermediate of a llama.cpp-quantized type), memory for the largest tensor.

A full disk found after an hour of writing leaves the user with nothing; the sizes are
known from the tensor shapes and output types alone, so the check is exact for the types
we write directly and an upper bound for llama.cpp's quantizer (which picks its own mix).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from ..estimates import (
    PROCESS_BASE,
    Need,
    gguf_header_bytes,
    quantized_bound,
    quantizer_peak,
    source_overhead,
    tensor_peak,
)
from ..plan import Plan
from ..sources import ModelSource
from .metadata import rope_freqs
from .outtypes import OutputChoice
from .tensors import CHUNK_ELEMENTS, OutTensor, plan_tensors, row_transform


def extra_tensors(source: ModelSource) -> dict[str, np.ndarray]:
    """Tensors the GGUF has and the source does not: ``rope_freqs`` for Llama 3 rope scaling."""
    freqs = rope_freqs(source.spec)
    return {} if freqs is None else {"rope_freqs.weight": freqs}


def convert_needs(
    source: ModelSource, choice: OutputChoice, out: Path, work_dir: Path | None = None, plan: Plan | None = None
) -> list[Need]:
    """Disk beside ``out`` (and in ``work_dir`` for the f16 intermediate, default beside
    ``out``) and memory for writing ``source`` as ``choice``.

    Without ``plan`` nothing is dropped, so the disk figure is an upper bound for any plan.
    """
    tensors, _ = plan_tensors(source, plan, choice, extra_tensors(source))
    header = gguf_header_bytes(len(tensors), source.spec.vocab_size)
    disk: dict[Path, dict[str, int]] = {}
    out = Path(out)
    if choice.quantizer is None:
        disk[out.parent.resolve()] = {out.name: header + sum(t.nbytes for t in tensors)}
    else:
        final = header + sum(quantized_bound(t.shape) for t in tensors)
        disk[out.parent.resolve()] = {f"{out.name} ({choice.name}, at most)": final}
        mid = Path(work_dir or out.parent).resolve()
        disk.setdefault(mid, {})["f16 intermediate"] = header + sum(t.nbytes for t in tensors)
    needs = [
        Need(f"disk:{folder}", "conversion output", parts, fix="free disk space or pass --work-dir / -o elsewhere")
        for folder, parts in disk.items()
    ]
    return [*needs, _memory(source, plan, choice, tensors)]


def _memory(source: ModelSource, plan: Plan | None, choice: OutputChoice, tensors: list[OutTensor]) -> Need:
    """Tensors are produced one at a time, so memory is the process plus the costliest single
    tensor (:func:`_tensor_peak`); with llama.cpp's quantizer, also its own per-tensor buffers;
    and the plan's linear maps, held (float32) from the plan's load to the end."""
    stored = {t.name: t.qtype for t in source.tensors()}

    def peak(t: OutTensor) -> int:
        if t.parts:  # openelm's attn_qkv: its parts made one after another, then stacked
            return sum(peak(p) + p.nbytes for p in t.parts) + t.nbytes
        return _tensor_peak(t, stored.get(t.name, t.qtype), source, plan, choice)

    peaks = {t.name: peak(t) for t in tensors}
    if choice.quantizer is not None:  # reads f16, converts to float32, writes into a work buffer
        for t in tensors:
            peaks[t.name] = max(peaks[t.name], quantizer_peak(t.shape))
    name = max(peaks, key=lambda k: peaks[k])
    parts = {"process": PROCESS_BASE, **source_overhead(source.kind, source.spec.vocab_size), f"tensor {name}": peaks[name]}
    if plan is not None and plan.linear:
        parts["linear maps of the plan"] = sum(plan.maps[i].nbytes for i in plan.linear)
    return Need("ram", "conversion (one tensor at a time)", parts)


def _tensor_peak(t: OutTensor, stored: GGMLQuantizationType, source: ModelSource, plan: Plan | None,
                 choice: OutputChoice) -> int:
    """Bytes held at once while :func:`.tensors.plan_tensors`' producer makes ``t``
    (:func:`..estimates.tensor_peak`): whether its rows are reordered or scaled, and whether
    it keeps a GGUF's type (raw path) or goes through float32."""
    order, factor = row_transform(t.name, source.spec, source.q_k_rope_neox, plan)
    return tensor_peak(
        t.shape, t.qtype, stored, read_shape=t.source_shape or t.shape, chunk=CHUNK_ELEMENTS, fitted=t.fitted,
        requantized=t.requantized, raw=choice.direct is None and t.qtype == stored, reordered=order is not None,
        scaled=factor is not None,
    )  # fmt: skip
