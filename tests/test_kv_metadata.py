"""The KV cache size comes from the GGUF's own metadata; llama.cpp's log line only cross-checks it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hopscotch_export.converters.convert import convert
from hopscotch_export.plan import Plan
from hopscotch_export.sources import open_source
from hopscotch_export.verify import llama_model
from hopscotch_export.sources.gguf_file import scan_gguf
from hopscotch_export.kv_cache import kv_bytes_per_cell
from hopscotch_export.llama_lib import LlamaLog
from hopscotch_export.verify.llama_model import LlamaSession
from test_linear_layers import linear_plan


@pytest.fixture(scope="module")
def deci(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama (6 layers, 2 KV heads of 16) with layer 2 skipped and layers 1, 4 linear."""
    out = tmp_path_factory.mktemp("kv") / "m.gguf"
    convert(open_source(tiny_llama), linear_plan(open_source(tiny_llama), skip=(2,), linear=(1, 4)), out, outtype="f32")
    return out


def test_metadata_size_equals_what_llama_cpp_logs(deci: Path) -> None:
    per_cell, layers = kv_bytes_per_cell(scan_gguf(deci).metadata, "f16", "f16")
    assert (per_cell, layers) == (3 * 2 * 2 * 16 * 2, 3)  # 3 attention layers x K,V x 2 heads x 16 x f16
    with LlamaSession(deci, n_ctx=256, n_threads=1) as s:
        kv = s.kv_cache
    assert kv.llama_mib is not None and kv.warning is None  # the log line was found and agrees
    assert kv.bytes == per_cell * kv.cells == per_cell * 256
    assert kv.bytes / 2**20 == pytest.approx(kv.llama_mib, abs=0.006)
    assert (kv.type_k, kv.type_v, kv.layers) == ("f16", "f16", 3)


def test_without_the_log_line_the_metadata_value_is_used(deci: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with LlamaSession(deci, n_ctx=256, n_threads=1) as s:
        logged = s.kv_cache
    monkeypatch.setattr(LlamaLog, "since", lambda self, mark: ["llama_kv_cache: a reworded message"])
    with LlamaSession(deci, n_ctx=256, n_threads=1) as s:
        kv = s.kv_cache
        assert s.decode([1, 2, 3], 0, [False, False, True]).shape == (1, s.n_vocab)  # verification goes on
    assert kv.llama_mib is None and kv.warning is None
    assert (kv.bytes, kv.cells, kv.layers) == (logged.bytes, logged.cells, logged.layers)


def test_a_disagreeing_log_line_is_a_warning_not_a_crash(deci: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    line = "llama_kv_cache: size =   99.00 MiB (   256 cells,   6 layers,  1/1 seqs), K (f16): 49.50 MiB"
    monkeypatch.setattr(LlamaLog, "since", lambda self, mark: [line])
    with LlamaSession(deci, n_ctx=256, n_threads=1) as s:
        kv = s.kv_cache
    assert kv.bytes == 3 * 2 * 2 * 16 * 2 * 256 and kv.llama_mib == 99.0
    assert kv.warning is not None and "99.00 MiB" in kv.warning and kv.to_json()["warning"] == kv.warning


def test_quantized_and_flash_off_arithmetic(deci: Path) -> None:
    """q8_0 stores 32 values in 34 bytes, q4_0 in 18; with flash attention off every layer's V
    is padded to the widest (2 heads x 16), the skipped and linear layers' too."""
    meta = scan_gguf(deci).metadata
    width = 2 * 16  # values of K (and of V) per token in an attention layer
    assert kv_bytes_per_cell(meta, "q8_0", "q8_0") == (3 * 2 * width // 32 * 34, 3)
    assert kv_bytes_per_cell(meta, "q4_0", "q4_0") == (3 * 2 * width // 32 * 18, 3)
    assert kv_bytes_per_cell(meta, flash_attn=False) == (3 * width * 2 + 6 * width * 2, 6)


def test_flash_off_padding_is_what_llama_cpp_allocates(deci: Path) -> None:
    """The modelled padding against llama.cpp's own log line, with flash attention off."""
    with LlamaSession(deci, n_ctx=256, n_threads=1, flash_attn=False) as s:
        kv = s.kv_cache
    assert kv.llama_mib is not None and kv.warning is None
    assert kv.bytes == kv.flash_off_bytes == 256 * (3 * 2 * 16 * 2 + 6 * 2 * 16 * 2)
    with LlamaSession(deci, n_ctx=256, n_threads=1) as s:
        assert s.kv_cache.flash_off_bytes == kv.bytes and s.kv_cache.bytes * 3 == kv.bytes * 2


def test_quantized_cache_matches_llama_cpp_on_a_cut_smollm2(smollm2: Path, tmp_path: Path) -> None:
    """SmolLM2's heads (64) hold whole q8_0/q4_0 blocks; a context sharing the loaded weights
    reports its own cache, and llama.cpp's figure agrees with the metadata's."""
    src = open_source(smollm2)
    cut = tmp_path / "cut.gguf"
    convert(src, Plan.identity(src.model_ref(), skip=(3, 9)), cut, outtype="source")
    with LlamaSession(cut, n_ctx=256, n_threads=1) as s:
        for cache_type, per_value in (("q8_0", 34 / 32), ("q4_0", 18 / 32)):
            with LlamaSession(cut, n_ctx=256, n_threads=1, cache_type=cache_type, share=s) as q:
                kv = q.kv_cache
                assert q.decode([1, 2, 3], 0, [False, False, True]).shape == (1, s.n_vocab)
            assert kv.llama_mib is not None and kv.warning is None and kv.type_v == cache_type
            assert kv.bytes == 256 * 28 * 2 * 3 * 64 * per_value  # 28 of 30 layers, K and V, 3 KV heads of 64
            assert kv.flash_off_bytes is None  # a quantized V cache needs flash attention
        assert s.decode([1, 2, 3], 0, [False, False, True]).shape == (1, s.n_vocab)  # its weights still there
