"""Tensor layout facts that both source kinds share: where a row sits in a file, how to
turn stored rows into float32, and llama.cpp's q/k rope row order.

Reading a range of rows (embedding rows for a few tokens, a chunk of the output head)
must not read the whole tensor: for an 8B model the head alone is 2 GB in float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

Q = GGMLQuantizationType


def rope_permutation(n_rows: int, n_head: int) -> np.ndarray:
    """Row order that turns rotate-half (NEOX) q/k rows into llama.cpp's NORM rope order.

    The same reshape as llama.cpp's converter: ``(n_head, 2, hd/2) -> swap -> flat``;
    ``norm = neox[order]``, so ``neox = norm[argsort(order)]`` undoes it.
    """
    return np.arange(n_rows).reshape(n_head, 2, n_rows // n_head // 2).swapaxes(1, 2).reshape(-1)


def row_bytes(qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> int:
    """Bytes of one row (axis 0) of a tensor of numpy-order ``shape`` stored as ``qtype``."""
    block, size = GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return n // block * size


def read_rows(
    path: Path, offset: int, shape: tuple[int, ...], qtype: GGMLQuantizationType, start: int, stop: int
) -> np.ndarray:
    """Rows ``start:stop`` (axis 0) of the tensor stored at ``offset`` in ``path``, as float32.

    Only those rows' bytes are read (a plain read, not a memory map, whose pages would stay
    resident). A 1-D tensor's rows are its elements.
    """
    block, _ = GGML_QUANT_SIZES[qtype]
    width = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if start == stop:
        return np.empty((0, *shape[1:]), dtype=np.float32)
    if width % block:  # a 1-D block-quantized tensor: rows are not whole blocks
        whole = read_rows(path, offset, (1, int(np.prod(shape))), qtype, 0, 1).reshape(shape)
        return whole[start:stop]
    size = row_bytes(qtype, shape)
    raw = np.fromfile(path, dtype=np.uint8, count=(stop - start) * size, offset=offset + start * size)
    return to_float32(raw.reshape(stop - start, size), qtype).reshape(stop - start, *shape[1:])


def to_float32(raw: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """Stored bytes (``uint8`` rows) to float32 values, one row per input row."""
    if qtype == Q.F32:
        return raw.view(np.float32)
    if qtype in (Q.F16, Q.BF16):
        import torch  # its conversions are vectorised; numpy's float16 ones are about 10x slower

        words = torch.from_numpy(raw.view(np.int16))
        return (words.view(torch.bfloat16) if qtype == Q.BF16 else words.view(torch.float16)).float().numpy()
    return np.asarray(dequantize(raw, qtype), dtype=np.float32)
