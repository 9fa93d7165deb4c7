"""What a conversion needs before it writes a byte: disk for the output (and for the f16
intermediate of a llama.cpp-quantized type), memory for the largest tensor.

A full disk found after an hour of writing leaves the user with nothing; the sizes are
known from the tensor shapes and output types alone, so the check is exact for the types
we write directly and an upper bound for llama.cpp's quantizer (which picks its own mix).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..plan import Plan
from ..resources import PROCESS_BASE, Need, source_overhead
from ..sources import ModelSource
from .metadata import rope_freqs
from .outtypes import OutputChoice, nbytes
from .tensors import CHUNK_ELEMENTS, OutTensor, plan_tensors, row_transform

Q = GGMLQuantizationType

#: GGUF header beyond the tensor data: fixed part and per-tensor info (name, shape, offset,
#: alignment padding); tokenizer arrays are counted per vocabulary entry (token string,
#: score, type, and a merge) with room to spare.
_HEADER_BYTES, _PER_TENSOR_BYTES, _PER_TOKEN_BYTES = 2**20, 256, 96


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
    header = _HEADER_BYTES + _PER_TENSOR_BYTES * len(tensors) + _PER_TOKEN_BYTES * source.spec.vocab_size
    disk: dict[Path, dict[str, int]] = {}
    out = Path(out)
    if choice.quantizer is None:
        disk[out.parent.resolve()] = {out.name: header + sum(t.nbytes for t in tensors)}
    else:
        final = header + sum(_quantized_bound(t) for t in tensors)
        disk[out.parent.resolve()] = {f"{out.name} ({choice.name}, at most)": final}
        mid = Path(work_dir or out.parent).resolve()
        disk.setdefault(mid, {})["f16 intermediate"] = header + sum(t.nbytes for t in tensors)
    needs = [
        Need(f"disk:{folder}", "conversion output", parts, fix="free disk space or pass --work-dir / -o elsewhere")
        for folder, parts in disk.items()
    ]
    return [*needs, _memory(source, plan, choice, tensors)]


def _quantized_bound(t: OutTensor) -> int:
    """Most bytes llama.cpp's quantizer may give one tensor: its K mixes go up to Q6_K
    (output, some attn_v / ffn_down), and rows that are not whole K blocks fall back to
    Q8_0 or F16; 1-D tensors stay F32."""
    if len(t.shape) == 1:
        return nbytes(Q.F32, t.shape)
    for qtype in (Q.Q6_K, Q.Q8_0):
        if t.shape[-1] % GGML_QUANT_SIZES[qtype][0] == 0:
            return nbytes(qtype, t.shape)
    return nbytes(Q.F16, t.shape)


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
            peaks[t.name] = max(peaks[t.name], 10 * int(np.prod(t.shape)))
    name = max(peaks, key=lambda k: peaks[k])
    parts = {"process": PROCESS_BASE, **source_overhead(source.kind, source.spec.vocab_size), f"tensor {name}": peaks[name]}
    if plan is not None and plan.linear:
        parts["linear maps of the plan"] = sum(plan.maps[i].nbytes for i in plan.linear)
    return Need("ram", "conversion (one tensor at a time)", parts)


def _tensor_peak(t: OutTensor, stored: GGMLQuantizationType, source: ModelSource, plan: Plan | None,
                 choice: OutputChoice) -> int:
    """Bytes held at once while :func:`.tensors.plan_tensors`' producer makes ``t``.

    Raw path (a GGUF's type kept): the stored bytes, a reordered or scaled copy, and float64
    temporaries when a float tensor is scaled. Float path: the read form while it becomes
    float32, then float32 plus a transformed copy or the encoder's output and temporaries
    (measured: f16 = the output, bf16 and q8_0 = twice the output); a matrix whose rows
    keep their order goes by blocks of rows, so only its encoded output is whole. A linear layer's map
    (already in memory with the plan) becomes a scaled float32 copy, then is encoded.
    """
    n = int(np.prod(t.shape))
    encoder = {Q.F32: 0, Q.F16: t.nbytes}.get(t.qtype, 2 * t.nbytes)
    if t.fitted:
        return 4 * n + encoder
    read = nbytes(stored, t.source_shape or t.shape)
    order, factor = row_transform(t.name, source.spec, source.q_k_rope_neox, plan)
    changed = order is not None or factor is not None
    if t.requantized:  # float32 rows of the source read, their kept columns, and the encoder's output
        return t.nbytes + 4 * min(n, CHUNK_ELEMENTS) * 2 + read
    if choice.direct is None and t.qtype == stored:
        floats = 16 * n if factor is not None and stored in (Q.F32, Q.F16, Q.BF16) else 0
        return read + (read if changed else 0) + floats
    if order is None and len(t.shape) == 2:  # by blocks of rows (tensors.CHUNK_ELEMENTS): the output whole
        block = min(n, CHUNK_ELEMENTS)
        return t.nbytes + 4 * block + max(block * read // n, 4 * block if changed else 0, encoder * block // n)
    return 4 * n + max(read, 4 * n if changed else 0, encoder)
