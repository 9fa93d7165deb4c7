"""Scale or reorder rows of GGUF tensors without requantizing them.

Hopscotch's learned branch scales fold into the rows of ``attn_output.weight`` and
``ffn_down.weight`` (docs/design.md section 1). A user's file is usually already quantized
(Q4_K_M and friends). Dequantizing, scaling and requantizing would round every weight a
second time and could change the file's type mix; instead we use the fact that every
block format we support stores its block scale(s) as plain fp16 fields that multiply
all of the block's values linearly (docs/design.md section 3):

* ``value = d * q``                      Q8_0, Q4_0, Q5_0, IQ*, TQ*
* ``value = d * q + m``                  Q4_1, Q5_1
* ``value = d * sc * q - dmin * m``      Q2_K, Q4_K, Q5_K
* ``value = d * sc * q``                 Q3_K, Q6_K

Multiplying ``d`` (and ``m`` / ``dmin`` where present) by the same factor, negative
included, multiplies every value of the block by that factor; the packed integers stay
bit-identical. The only new error is one fp16 rounding of each scale field.

Rows are whole blocks in every GGUF type (a row's length ``ne[0]`` is a multiple of the
block size), so reordering rows (the q/k rope permutation) is an exact byte shuffle.

Data layout is the one :class:`gguf.GGUFReader` exposes in ``ReaderTensor.data``:
quantized types and BF16 as ``uint8`` shaped ``(..., n_rows, bytes_per_row)``; F32 and
F16 as typed ``float32`` / ``float16`` arrays shaped ``(..., n_rows, n_cols)``. All
multi-byte fields are little-endian, as GGUF files are (big-endian GGUF is not handled).
"""

from __future__ import annotations

import warnings

import gguf
import numpy as np

from hopscotch_export.errors import HopscotchError

__all__ = [
    "SCALABLE_TYPES",
    "ScalePrecisionWarning",
    "UnsupportedQuantError",
    "permute_rows",
    "scale_rows",
    "select_columns",
    "select_rows",
]

_Q = gguf.GGMLQuantizationType

# Byte offsets, within one block, of the fp16 fields that scale the whole block linearly.
# Taken from llama.cpp's ggml-common.h block structs, cross-checked with gguf-py's
# dequantize_blocks (gguf/quants.py); tests/test_quant_scale.py verifies each one against
# gguf.quants.dequantize.
_SCALE_FIELDS: dict[gguf.GGMLQuantizationType, tuple[int, ...]] = {
    _Q.Q4_0: (0,),  # d, qs[16]
    _Q.Q4_1: (0, 2),  # d, m, qs[16]
    _Q.Q5_0: (0,),  # d, qh[4], qs[16]
    _Q.Q5_1: (0, 2),  # d, m, qh[4], qs[16]
    _Q.Q8_0: (0,),  # d, qs[32]
    _Q.Q2_K: (80, 82),  # scales[16], qs[64], d, dmin
    _Q.Q3_K: (108,),  # hmask[32], qs[64], scales[12], d
    _Q.Q4_K: (0, 2),  # d, dmin, scales[12], qs[128]
    _Q.Q5_K: (0, 2),  # d, dmin, scales[12], qh[32], qs[128]
    _Q.Q6_K: (208,),  # ql[128], qh[64], scales[16] (int8), d
    # i-quants with one leading fp16 super-block scale; every value is d * f(ints).
    _Q.IQ2_XXS: (0,),
    _Q.IQ2_XS: (0,),
    _Q.IQ2_S: (0,),
    _Q.IQ3_XXS: (0,),
    _Q.IQ3_S: (0,),
    _Q.IQ1_S: (0,),
    _Q.IQ4_NL: (0,),
    _Q.IQ4_XS: (0,),
    # ternary types: value = d * {-1, 0, 1}
    _Q.TQ1_0: (52,),  # qs[48], qh[4], d
    _Q.TQ2_0: (64,),  # qs[64], d
}
# Deliberately absent: IQ1_M (its fp16 scale is split across the high nibbles of four
# uint16 words), MXFP4 (a power-of-two e8m0 exponent, cannot take an arbitrary factor),
# NVFP4 (ue4m3 sub-block scales), Q8_1 / Q8_K (activation-only formats), integer types.

for _qt, _offs in _SCALE_FIELDS.items():  # layout sanity, checked once at import
    _bs, _ts = gguf.GGML_QUANT_SIZES[_qt]
    assert _ts % 2 == 0 and all(o % 2 == 0 and o + 2 <= _ts for o in _offs), _qt.name

_FLOAT_TYPES: frozenset[gguf.GGMLQuantizationType] = frozenset({_Q.F32, _Q.F16, _Q.BF16})

SCALABLE_TYPES: frozenset[gguf.GGMLQuantizationType] = _FLOAT_TYPES | frozenset(_SCALE_FIELDS)
"""Types :func:`scale_rows` can scale: F32/F16/BF16 and block types whose scales are plain fp16."""

_FP16_MIN_NORMAL = float(np.finfo(np.float16).tiny)  # 6.1e-5; below it fp16 loses mantissa bits


class UnsupportedQuantError(HopscotchError, ValueError):
    """The tensor's type has no plain fp16 block scale, so it cannot be scaled in place.

    A user hits this with an exotic source file; the fix is to export from a type we
    can scale (or from the original weights), hence the suggestion in the message.
    """

    def __init__(self, qtype: gguf.GGMLQuantizationType | int, detail: str = "") -> None:
        try:
            name = gguf.GGMLQuantizationType(qtype).name
        except ValueError:
            name = f"type id {int(qtype)}"
        self.qtype = qtype
        msg = (
            f"cannot fold scales into a {name} tensor without requantizing it"
            f"{': ' + detail if detail else ''}; "
            f"supported types are {', '.join(sorted(t.name for t in SCALABLE_TYPES))}. "
            "Re-export with `--outtype q8_0` (or `--outtype f16`) instead."
        )
        super().__init__(msg)


class ScalePrecisionWarning(UserWarning):
    """Scaling pushed some fp16 block scales into fp16's subnormal range, where they keep fewer bits."""


def _as_qtype(qtype: gguf.GGMLQuantizationType | int) -> gguf.GGMLQuantizationType:
    try:
        return gguf.GGMLQuantizationType(qtype)
    except ValueError:
        raise UnsupportedQuantError(qtype, "unknown GGML type id") from None


def _row_factors(factors: np.ndarray | float, n_rows: int) -> np.ndarray:
    """Validate factors and return them as float64 shaped (n_rows, 1) for broadcasting over a row."""
    f = np.asarray(factors, dtype=np.float64)
    if f.ndim == 0:
        f = np.full(n_rows, float(f))
    elif f.ndim != 1 or f.shape[0] != n_rows:
        raise ValueError(
            f"factors must be a scalar or have one entry per row ({n_rows} rows, axis -2 of the "
            f"data), got shape {f.shape}"
        )
    if not np.all(np.isfinite(f)):
        bad = np.flatnonzero(~np.isfinite(f))
        raise ValueError(f"factors must be finite; rows {bad[:8].tolist()} are {f[bad[:8]].tolist()}")
    return f.reshape(n_rows, 1)


def _check_overflow(old: np.ndarray, new: np.ndarray, what: str, max_value: float) -> None:
    """Refuse results that became inf/nan from finite inputs: a silently broken model is worse."""
    broke = ~np.isfinite(new) & np.isfinite(old)
    if np.any(broke):
        n = int(np.count_nonzero(broke))
        raise ValueError(
            f"scaling overflows {n} {what} (their range ends at {max_value:.6g}); "
            "use smaller factors or export to a wider type (e.g. `--outtype f32`)"
        )


def _bf16_to_f64(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32).astype(np.float64)


def _f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 bits, nearest-even, as ggml_compute_fp32_to_bf16 does."""
    n = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = (n & 0x7FFFFFFF) > 0x7F800000
    rounded = (n + (0x7FFF + ((n >> 16) & 1))) >> 16
    quiet = ((n & 0xFFFF0000) | (64 << 16)) >> 16
    return np.where(nan, quiet, rounded).astype(np.uint16)


def _scale_float(data: np.ndarray, qtype: gguf.GGMLQuantizationType, f: np.ndarray) -> np.ndarray:
    """Elementwise scaling for F32/F16/BF16, returned in the same dtype and shape as given."""
    if qtype == _Q.BF16:
        if data.dtype == np.uint8 or data.dtype.itemsize == 2 and data.dtype.kind in "uiV":
            # uint8 bytes (GGUFReader), uint16/int16 words, or ml_dtypes bfloat16
            vals = np.ascontiguousarray(data).view("<u2")
        else:
            raise ValueError(f"BF16 data must be raw uint8 or 16-bit words, got dtype {data.dtype}")
        old = _bf16_to_f64(vals)
        new = old * f
        with np.errstate(over="ignore"):
            new32 = new.astype(np.float32)
        out_bits = _f32_to_bf16(new32)
        _check_overflow(old, _bf16_to_f64(out_bits), "BF16 values", 3.3895e38)
        return out_bits.view(data.dtype).reshape(data.shape)

    ftype = np.dtype("<f4") if qtype == _Q.F32 else np.dtype("<f2")
    if data.dtype == np.uint8:
        vals = np.ascontiguousarray(data).view(ftype)
    elif data.dtype.kind == "f" and data.dtype.itemsize == ftype.itemsize:
        vals = data
    else:
        raise ValueError(f"{qtype.name} data must be {ftype} or raw uint8, got dtype {data.dtype}")
    old = vals.astype(np.float64)
    with np.errstate(over="ignore"):
        new = (old * f).astype(ftype)
    _check_overflow(old, new, f"{qtype.name} values", float(np.finfo(ftype).max))
    if data.dtype == np.uint8:
        return new.view(np.uint8).reshape(data.shape)
    return new.astype(data.dtype, copy=False)


def scale_rows(
    data: np.ndarray, qtype: gguf.GGMLQuantizationType, factors: np.ndarray | float
) -> np.ndarray:
    """Return a copy of ``data`` with row ``i`` multiplied by ``factors[i]`` (or all rows by a scalar).

    ``data`` is a GGUF tensor's raw data as :class:`gguf.GGUFReader` exposes it: for
    quantized types and BF16 a ``uint8`` array shaped ``(..., n_rows, bytes_per_row)``;
    for F32/F16 the typed array (raw ``uint8`` bytes are accepted too; BF16 may also come
    as ``uint16`` words). The result has the same dtype and shape, so it can be written
    back the way it was read. Rows are axis -2 (``ne[1]``, a weight's output channels);
    leading axes (e.g. experts) share the factors. A 1-D tensor is a single row.

    Quantized types: only the fp16 block scale fields change (``d``, plus ``m``/``dmin``
    where the format has them), so the packed integers and the file's type mix stay
    exactly as they were; the only new error is one fp16 rounding per field. Float types
    are scaled elementwise with one rounding to their own precision.

    Raises :class:`UnsupportedQuantError` for types outside :data:`SCALABLE_TYPES`, and
    ValueError for non-finite or wrongly sized factors, malformed data, or a result that
    would overflow (become inf) in the stored type. Warns with
    :class:`ScalePrecisionWarning` when scaling down pushes block scales from normal fp16
    into the subnormal range (those blocks keep fewer significant bits).
    """
    qtype = _as_qtype(qtype)
    if qtype not in SCALABLE_TYPES:
        raise UnsupportedQuantError(qtype, "its block scale is not a plain fp16 field")
    data = np.asarray(data)
    if data.ndim == 0:
        raise ValueError("data must have at least one axis (a row)")
    squeeze = data.ndim == 1
    if squeeze:
        data = data[None, :]
    f = _row_factors(factors, data.shape[-2])

    if qtype in _FLOAT_TYPES:
        out = _scale_float(data, qtype, f)
        return out[0] if squeeze else out

    if data.dtype != np.uint8:
        raise ValueError(f"{qtype.name} data must be raw uint8 bytes, got dtype {data.dtype}")
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if data.shape[-1] % type_size:
        raise ValueError(
            f"{qtype.name} rows must be whole {type_size}-byte blocks, "
            f"got {data.shape[-1]} bytes per row"
        )
    # a plain, writable ndarray even when data is GGUFReader's read-only memmap
    out = np.array(data, dtype=np.uint8, order="C", copy=True)
    # (..., n_rows, n_blocks, words_per_block) view of the copy as little-endian fp16 words.
    words = out.view("<f2").reshape(*out.shape[:-1], out.shape[-1] // type_size, type_size // 2)
    newly_subnormal = 0
    n_fields = 0
    for off in _SCALE_FIELDS[qtype]:
        old16 = words[..., off // 2]  # strided view: one fp16 field per block
        old = old16.astype(np.float64)
        with np.errstate(over="ignore"):
            # f is (n_rows, 1): one factor for all of a row's blocks; a single rounding to fp16
            new16 = (old * f).astype(np.float16)
        fp16_max = float(np.finfo(np.float16).max)
        _check_overflow(old, new16, f"{qtype.name} fp16 block scales", fp16_max)
        newly_subnormal += int(np.count_nonzero(
            (np.abs(old) >= _FP16_MIN_NORMAL) & (np.abs(new16) < _FP16_MIN_NORMAL) & (f != 0)))
        n_fields += old.size
        words[..., off // 2] = new16
    if newly_subnormal:
        warnings.warn(
            f"{newly_subnormal} of {n_fields} {qtype.name} fp16 block scales fell below fp16's normal "
            f"range ({_FP16_MIN_NORMAL:.3g}) after scaling and lost precision; factors this small are "
            "better served by `--outtype q8_0` or `--outtype f16`",
            ScalePrecisionWarning,
            stacklevel=2,
        )
    return out[0] if squeeze else out


def permute_rows(data: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Reorder rows (axis -2) of raw tensor data.

    Quantized rows are whole blocks in every GGUF type, so this is exact (no requantization).

    Returns a copy whose row ``i`` is ``data``'s row ``order[i]`` (``out = data[..., order, :]``),
    for any tensor type and any leading axes. ``order`` must be a permutation of
    ``range(n_rows)``: a repeated or missing row would silently corrupt a weight.
    """
    data = np.asarray(data)
    if data.ndim < 2:
        raise ValueError(
            f"permute_rows needs at least 2 axes (rows are axis -2), got shape {data.shape}; "
            "index a 1-D tensor (e.g. a bias) directly"
        )
    n_rows = data.shape[-2]
    idx = np.asarray(order)
    if idx.ndim != 1 or idx.shape[0] != n_rows or idx.dtype.kind not in "iu":
        raise ValueError(
            f"order must be 1-D integers with one entry per row ({n_rows}), got {idx.dtype} {idx.shape}"
        )
    if not np.array_equal(np.sort(idx), np.arange(n_rows)):
        raise ValueError("order must be a permutation of range(n_rows): every row exactly once")
    return select_rows(data, idx)


def select_rows(data: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (axis -2; axis 0 of a 1-D tensor), in that order, of raw tensor data:
    the q/k/v rows of the KV groups a layer keeps (whole blocks, so exact). Each row at
    most once: a repeated row would silently corrupt a weight."""
    data = np.asarray(data)
    idx = np.asarray(rows)
    axis = -2 if data.ndim > 1 else 0
    n = data.shape[axis]
    if idx.ndim != 1 or idx.dtype.kind not in "iu" or len(np.unique(idx)) != len(idx) or (idx.size and not (
        0 <= idx.min() and idx.max() < n
    )):
        raise ValueError(f"rows must be distinct integers in 0..{n - 1}, got {idx[:8].tolist()}")
    return np.ascontiguousarray(np.take(data, idx, axis=axis))


def select_columns(data: np.ndarray, qtype: gguf.GGMLQuantizationType, columns: np.ndarray) -> np.ndarray:
    """Columns ``columns`` (axis -1, in elements) of raw 2-D tensor data, copied without
    requantizing: the ``attn_output`` inputs of the query heads a layer keeps.

    Quantized data (``uint8`` rows of blocks) keeps whole blocks only, so ``columns`` must
    be runs of whole, aligned blocks of ``qtype``; ValueError otherwise (requantize then).
    """
    qtype = _as_qtype(qtype)
    data = np.asarray(data)
    cols = np.asarray(columns, dtype=np.int64)
    if data.dtype != np.uint8:  # F32 / F16 as typed values
        return np.ascontiguousarray(data[..., cols])
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = cols.reshape(-1, block) if cols.size % block == 0 else None
    if blocks is None or not (blocks[:, 0] % block == 0).all() or not (
        blocks == blocks[:, :1] + np.arange(block)
    ).all():
        raise ValueError(f"columns are not whole {block}-wide {qtype.name} blocks; requantize the tensor instead")
    byte_idx = ((blocks[:, 0] // block)[:, None] * size + np.arange(size)).ravel()
    return np.ascontiguousarray(data[..., byte_idx])
