"""Tests for hopscotch_export.converters.quant_scale.

The reference is gguf-py's own dequantizer: scaling a tensor's rows in place must equal
dequantize(original) * factors row by row. Scale-field offsets are restated here from
llama.cpp's ggml-common.h (independently of the module's table), so a wrong offset in the
module fails both the dequantize comparison and the "only scale bytes changed" check.
"""

from __future__ import annotations

import warnings

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize, quantize

from hopscotch_export.converters import quant_scale
from hopscotch_export.converters.quant_scale import (
    SCALABLE_TYPES,
    ScalePrecisionWarning,
    UnsupportedQuantError,
    permute_rows,
    scale_rows,
)

Q = gguf.GGMLQuantizationType

# Byte offsets of the fp16 scale fields in one block, from ggml-common.h block structs.
FIELDS: dict[Q, tuple[int, ...]] = {
    Q.Q4_0: (0,),  # block_q4_0 { half d; uint8 qs[16]; }
    Q.Q4_1: (0, 2),  # block_q4_1 { half d; half m; uint8 qs[16]; }
    Q.Q5_0: (0,),  # block_q5_0 { half d; uint8 qh[4]; uint8 qs[16]; }
    Q.Q5_1: (0, 2),  # block_q5_1 { half d; half m; uint8 qh[4]; uint8 qs[16]; }
    Q.Q8_0: (0,),  # block_q8_0 { half d; int8 qs[32]; }
    Q.Q2_K: (80, 82),  # block_q2_K { uint8 scales[16]; uint8 qs[64]; half d; half dmin; }
    Q.Q3_K: (108,),  # block_q3_K { uint8 hmask[32]; uint8 qs[64]; uint8 scales[12]; half d; }
    Q.Q4_K: (0, 2),  # block_q4_K { half d; half dmin; uint8 scales[12]; uint8 qs[128]; }
    Q.Q5_K: (0, 2),  # block_q5_K { half d; half dmin; uint8 scales[12]; uint8 qh[32]; uint8 qs[128]; }
    Q.Q6_K: (208,),  # block_q6_K { uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d; }
    Q.IQ2_XXS: (0,),
    Q.IQ2_XS: (0,),
    Q.IQ2_S: (0,),
    Q.IQ3_XXS: (0,),
    Q.IQ3_S: (0,),
    Q.IQ1_S: (0,),
    Q.IQ4_NL: (0,),
    Q.IQ4_XS: (0,),
    Q.TQ1_0: (52,),  # block_tq1_0 { uint8 qs[48]; uint8 qh[4]; half d; }
    Q.TQ2_0: (64,),  # block_tq2_0 { uint8 qs[64]; half d; }
}
REQUIRED = {Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1,
            Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K}
QUANT_TYPES = sorted(FIELDS, key=int)
FLOAT_TYPES = [Q.F32, Q.F16, Q.BF16]
N_ROWS, N_COLS = 8, 512


def _field_mask(qtype: Q, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask over raw bytes: True on the bytes of the fp16 scale fields."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    block = np.zeros(type_size, dtype=bool)
    for off in FIELDS[qtype]:
        block[off:off + 2] = True
    return np.broadcast_to(block, (*shape[:-1], shape[-1] // type_size, type_size)).reshape(shape)


def _fields(raw: np.ndarray, qtype: Q) -> list[np.ndarray]:
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = raw.reshape(*raw.shape[:-1], raw.shape[-1] // type_size, type_size)
    return [np.ascontiguousarray(blocks[..., o:o + 2]).view("<f2")[..., 0] for o in FIELDS[qtype]]


def make_tensor(qtype: Q, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Raw data of a valid `qtype` tensor: gguf-py's quantizer where it has one, else random blocks."""
    x = rng.standard_normal(shape).astype(np.float32)
    if qtype == Q.F32:
        return x
    if qtype == Q.F16:
        return x.astype(np.float16)
    try:
        return quantize(x, qtype)
    except NotImplementedError:
        pass
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = shape[-1] // block_size
    raw = rng.integers(0, 256, size=(*shape[:-1], n_blocks, type_size), dtype=np.uint8)
    for off in FIELDS[qtype]:  # sane fp16 scales, 2e-3 .. 1e-1 (stay normal fp16 down to factor 0.05)
        d = np.exp(rng.uniform(np.log(2e-3), np.log(1e-1), size=raw.shape[:-1])).astype("<f2")
        raw[..., off:off + 2] = d[..., None].view(np.uint8)
    return raw.reshape(*shape[:-1], n_blocks * type_size)


def deq(raw: np.ndarray, qtype: Q) -> np.ndarray:
    return np.asarray(dequantize(raw, qtype), dtype=np.float64)


def rounding_bound(data: np.ndarray, qtype: Q, f: np.ndarray) -> np.ndarray:
    """Per-element bound on |scaled - exact| from one round-to-nearest of each scale field.

    A value is a sum of terms, each linear in one fp16 field (d*sc*q and -dmin*m); rounding a
    normal fp16 moves it by at most 2^-11 relative, so the error is at most 2^-11 * |f| times
    the sum of the terms' magnitudes. Each term is dequantized alone by zeroing the other
    fields. Float types round each element once (fp16 subnormals: 2^-25 absolute). A 2^-20
    slack covers gguf-py's float32 math.
    """
    if qtype in FLOAT_TYPES:
        unit = {Q.F32: 2.0 ** -24, Q.F16: 2.0 ** -11, Q.BF16: 2.0 ** -8 + 2.0 ** -23}[qtype]
        tiny = 2.0 ** -25 if qtype == Q.F16 else 1e-300  # half the spacing of fp16 subnormals
        return (unit + 2.0 ** -40) * np.abs(deq(data, qtype) * f[:, None]) + tiny
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    terms = np.zeros(data.shape[:-1] + (data.shape[-1] // type_size * gguf.GGML_QUANT_SIZES[qtype][0],))
    for keep in FIELDS[qtype]:
        alone = data.copy().reshape(*data.shape[:-1], -1, type_size)
        for off in FIELDS[qtype]:
            if off != keep:
                alone[..., off:off + 2] = 0
        terms += np.abs(deq(alone.reshape(data.shape), qtype))
    return (2.0 ** -11 + 2.0 ** -20) * np.abs(f[:, None]) * terms + 1e-300


def random_factors(n: int, rng: np.random.Generator) -> np.ndarray:
    mag = np.exp(rng.uniform(np.log(0.05), np.log(4.0), size=n))
    sign = np.where(rng.random(n) < 0.4, -1.0, 1.0)
    f = mag * sign
    f[0], f[1] = -1.0, 1.0  # exact sign flip and identity rows
    return f


def _scale_quiet(data, qtype, factors):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScalePrecisionWarning)
        return scale_rows(data, qtype, factors)


def test_supported_types_cover_the_required_set():
    assert REQUIRED <= SCALABLE_TYPES
    assert set(FIELDS) | set(FLOAT_TYPES) == set(SCALABLE_TYPES)


@pytest.mark.parametrize("qtype", QUANT_TYPES + FLOAT_TYPES, ids=lambda t: t.name)
def test_scale_rows_matches_dequantized_product(qtype):
    rng = np.random.default_rng(int(qtype))
    data = make_tensor(qtype, (N_ROWS, N_COLS), rng)
    before = data.copy()
    f = random_factors(N_ROWS, rng)

    out = _scale_quiet(data, qtype, f)

    assert out.dtype == data.dtype and out.shape == data.shape
    assert np.array_equal(data.view(np.uint8), before.view(np.uint8)), "input was modified"
    got, want = deq(out, qtype), deq(data, qtype) * f[:, None]
    err = np.abs(got - want)
    np.testing.assert_array_less(err, rounding_bound(data, qtype, f))
    # and the brief's coarser yardstick: 1e-3 of the row's largest value (bf16: 2^-8)
    row_max = np.abs(want).max(axis=1, keepdims=True)
    assert np.all(err <= (2.0 ** -8 if qtype == Q.BF16 else 1e-3) * row_max)
    np.testing.assert_array_equal(got[1], deq(data, qtype)[1])  # factor 1: bit-identical values
    np.testing.assert_array_equal(got[0], -deq(data, qtype)[0])  # factor -1: exact negation


@pytest.mark.parametrize("qtype", QUANT_TYPES + FLOAT_TYPES, ids=lambda t: t.name)
def test_power_of_two_factors_are_exact(qtype):
    """Powers of two scale fp16/bf16 fields exactly: the dequantized result must match bit for bit."""
    rng = np.random.default_rng(100 + int(qtype))
    data = make_tensor(qtype, (N_ROWS, N_COLS), rng)
    f = np.array([0.25, -0.25, 0.5, -0.5, 2.0, -2.0, 4.0, -1.0])
    out = _scale_quiet(data, qtype, f)
    np.testing.assert_array_equal(deq(out, qtype), deq(data, qtype) * f[:, None])


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
def test_only_scale_field_bytes_change(qtype):
    rng = np.random.default_rng(200 + int(qtype))
    data = make_tensor(qtype, (N_ROWS, N_COLS), rng)
    f = random_factors(N_ROWS, rng)
    out = _scale_quiet(data, qtype, f)

    mask = _field_mask(qtype, data.shape)
    changed = out != data
    assert not np.any(changed & ~mask), "quantized integer bytes were modified"
    assert np.any(changed & mask), "no scale field changed"
    for old, new in zip(_fields(data, qtype), _fields(out, qtype)):
        want = (old.astype(np.float64) * f[:, None]).astype(np.float16)
        np.testing.assert_array_equal(new.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("qtype", [Q.Q2_K, Q.Q4_K, Q.Q6_K, Q.Q8_0], ids=lambda t: t.name)
def test_a_wrong_field_offset_is_detected(qtype, monkeypatch):
    """Guard on the tests themselves: a module scaling the wrong bytes must not pass them."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    wrong = tuple((o + 16) % type_size for o in FIELDS[qtype])
    monkeypatch.setitem(quant_scale._SCALE_FIELDS, qtype, wrong)
    rng = np.random.default_rng(7)
    data = make_tensor(qtype, (N_ROWS, N_COLS), rng)
    f = np.full(N_ROWS, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = scale_rows(data, qtype, f)
    got, want = deq(out, qtype), deq(data, qtype) * f[:, None]
    assert not np.allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_1, Q.F16, Q.BF16], ids=lambda t: t.name)
def test_leading_axes_share_row_factors(qtype):
    rng = np.random.default_rng(300 + int(qtype))
    data = make_tensor(qtype, (3, 4, N_COLS), rng)  # e.g. experts x rows x cols
    f = random_factors(4, rng)
    out = _scale_quiet(data, qtype, f)
    for e in range(3):
        np.testing.assert_array_equal(out[e], _scale_quiet(data[e], qtype, f))


@pytest.mark.parametrize("qtype", [Q.Q6_K, Q.Q4_1, Q.F32, Q.BF16], ids=lambda t: t.name)
@pytest.mark.parametrize("scalar", [0.7, np.float32(-1.5), np.array(2.5)], ids=["float", "np32", "0d"])
def test_scalar_factor_equals_constant_vector(qtype, scalar):
    rng = np.random.default_rng(400)
    data = make_tensor(qtype, (N_ROWS, N_COLS), rng)
    out = scale_rows(data, qtype, scalar)
    np.testing.assert_array_equal(out, scale_rows(data, qtype, np.full(N_ROWS, float(scalar))))


def test_one_dimensional_tensor_is_one_row():
    bias = np.linspace(-1, 1, 64, dtype=np.float32)
    np.testing.assert_array_equal(scale_rows(bias, Q.F32, 2.0), bias * 2)
    np.testing.assert_array_equal(scale_rows(bias, Q.F32, [3.0]), bias * 3)
    with pytest.raises(ValueError, match="one entry per row"):
        scale_rows(bias, Q.F32, np.ones(64))


def test_zero_factor_zeroes_rows():
    rng = np.random.default_rng(1)
    data = make_tensor(Q.Q4_K, (N_ROWS, N_COLS), rng)
    f = np.ones(N_ROWS)
    f[3] = 0.0
    got = deq(scale_rows(data, Q.Q4_K, f), Q.Q4_K)
    assert np.all(got[3] == 0)
    np.testing.assert_array_equal(got[4], deq(data, Q.Q4_K)[4])


def test_raw_byte_and_word_inputs_for_float_types():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((N_ROWS, 64)).astype(np.float32)
    f = random_factors(N_ROWS, rng)
    f16 = x.astype(np.float16)
    via_bytes = scale_rows(f16.view(np.uint8), Q.F16, f)
    assert via_bytes.dtype == np.uint8 and via_bytes.shape == (N_ROWS, 128)
    np.testing.assert_array_equal(via_bytes.view(np.float16), scale_rows(f16, Q.F16, f))
    bf_bytes = quantize(x, Q.BF16)  # uint8 (rows, 2*cols), as GGUFReader exposes BF16
    via_words = scale_rows(bf_bytes.view(np.uint16), Q.BF16, f)
    assert via_words.dtype == np.uint16 and via_words.shape == (N_ROWS, 64)
    np.testing.assert_array_equal(via_words.view(np.uint8), scale_rows(bf_bytes, Q.BF16, f))


def test_works_on_gguf_reader_tensors(tmp_path):
    """End to end with the layouts GGUFReader really returns (read-only memmaps; BF16 as uint8)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N_ROWS, N_COLS)).astype(np.float32)
    tensors = {
        "f32": (x, Q.F32), "f16": (x.astype(np.float16), Q.F16),
        "bf16": (quantize(x, Q.BF16), Q.BF16), "q8": (quantize(x, Q.Q8_0), Q.Q8_0),
        "q4k": (make_tensor(Q.Q4_K, (N_ROWS, N_COLS), rng), Q.Q4_K),
    }
    path = tmp_path / "t.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for name, (arr, qt) in tensors.items():
        w.add_tensor(name, arr, raw_dtype=None if qt in (Q.F32, Q.F16) else qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = random_factors(N_ROWS, rng)
    for t in gguf.GGUFReader(str(path)).tensors:
        arr, qt = tensors[t.name]
        assert t.tensor_type == qt and not t.data.flags.writeable
        out = _scale_quiet(t.data, t.tensor_type, f)
        assert type(out) is np.ndarray and out.flags.writeable
        np.testing.assert_array_equal(out, _scale_quiet(arr, qt, f))


@pytest.mark.parametrize("qtype", [Q.IQ1_M, Q.MXFP4, Q.NVFP4, Q.Q8_K, Q.Q8_1, Q.I8, Q.F64],
                         ids=lambda t: t.name)
def test_unsupported_type_error(qtype):
    data = np.zeros((2, gguf.GGML_QUANT_SIZES[qtype][1] * 2), dtype=np.uint8)
    with pytest.raises(UnsupportedQuantError) as exc:
        scale_rows(data, qtype, 1.0)
    assert isinstance(exc.value, ValueError)
    msg = str(exc.value)
    assert qtype.name in msg and "--outtype q8_0" in msg
    assert qtype not in SCALABLE_TYPES


def test_unknown_type_id_is_unsupported():
    with pytest.raises(UnsupportedQuantError, match="--outtype q8_0"):
        scale_rows(np.zeros((1, 4), np.uint8), 999, 1.0)


@pytest.mark.parametrize("qtype,factor", [(Q.Q8_0, 1e7), (Q.Q4_K, -1e7), (Q.F16, 1e6), (Q.BF16, 1e39),
                                          (Q.F32, 1e38)], ids=lambda v: getattr(v, "name", str(v)))
def test_overflow_raises(qtype, factor):
    rng = np.random.default_rng(4)
    data = make_tensor(qtype, (N_ROWS, N_COLS), rng)
    if qtype == Q.F32:
        data = data * np.float32(1e2)
    f = np.ones(N_ROWS)
    f[5] = factor
    with pytest.raises(ValueError, match="overflow"):
        scale_rows(data, qtype, f)


@pytest.mark.parametrize("bad", [[1.0] * (N_ROWS - 1), [1.0] * (N_ROWS + 1), np.ones((N_ROWS, 1))],
                         ids=["short", "long", "2d"])
def test_wrong_length_factors(bad):
    data = make_tensor(Q.Q4_0, (N_ROWS, 64), np.random.default_rng(5))
    with pytest.raises(ValueError, match="one entry per row"):
        scale_rows(data, Q.Q4_0, bad)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_factors(bad):
    data = make_tensor(Q.Q6_K, (N_ROWS, 256), np.random.default_rng(6))
    f = np.ones(N_ROWS)
    f[2] = bad
    with pytest.raises(ValueError, match="finite"):
        scale_rows(data, Q.Q6_K, f)
    with pytest.raises(ValueError, match="finite"):
        scale_rows(data, Q.Q6_K, bad)


def test_malformed_quantized_data():
    with pytest.raises(ValueError, match="whole"):
        scale_rows(np.zeros((2, 35), np.uint8), Q.Q8_0, 1.0)
    with pytest.raises(ValueError, match="uint8"):
        scale_rows(np.zeros((2, 34), np.int16), Q.Q8_0, 1.0)


def test_tiny_factors_warn_about_subnormal_scales():
    data = make_tensor(Q.Q8_0, (N_ROWS, N_COLS), np.random.default_rng(8))
    with pytest.warns(ScalePrecisionWarning, match="fell below"):
        scale_rows(data, Q.Q8_0, 1e-4)


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K, Q.Q5_0, Q.Q8_0, Q.F16, Q.BF16, Q.F32],
                         ids=lambda t: t.name)
def test_permute_rows_round_trip(qtype):
    rng = np.random.default_rng(9)
    data = make_tensor(qtype, (N_ROWS, N_COLS), rng)
    order = rng.permutation(N_ROWS)
    perm = permute_rows(data, order)
    assert perm.dtype == data.dtype and perm.shape == data.shape
    np.testing.assert_array_equal(deq(perm, qtype), deq(data, qtype)[order])
    np.testing.assert_array_equal(permute_rows(perm, np.argsort(order)), data)
    assert not np.array_equal(perm, data)


def test_permute_rows_leading_axes_and_errors():
    data = np.arange(2 * 4 * 6, dtype=np.uint8).reshape(2, 4, 6)
    np.testing.assert_array_equal(permute_rows(data, np.array([3, 2, 1, 0])), data[:, ::-1, :])
    with pytest.raises(ValueError, match="permutation"):
        permute_rows(data, np.array([0, 0, 1, 2]))
    with pytest.raises(ValueError, match="one entry per row"):
        permute_rows(data, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="2 axes"):
        permute_rows(np.zeros(8, np.float32), np.arange(8))
