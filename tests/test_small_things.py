"""The small things llama.cpp users expect: threads (torch's, and the quantizer's from the
CPU affinity), counted progress for calibration data and quantization, every quantizer
type with ``--imatrix`` for those that need one, and verify's GPU default."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
import torch
from rich.console import Console
from test_cli import assert_one_line_error, run_cli

from hopscotch_export.converters import convert
from hopscotch_export.converters.outtypes import IMATRIX_ONLY, LLAMA_QUANTIZER
from hopscotch_export.converters.quantize import llama_quantize
from hopscotch_export.errors import HopscotchError
from hopscotch_export.search.options import SearchOptions
from hopscotch_export.search.workspace import prepare
from hopscotch_export.sources import open_source
from hopscotch_export.sources.gguf_file import read_gguf
from hopscotch_export.verify import llama_model as verify_runner


def _log() -> tuple[Console, io.StringIO]:
    """A console that is no terminal: progress comes as plain lines with counts."""
    text = io.StringIO()
    return Console(file=text, width=200), text


@pytest.fixture(scope="module")
def f16_256(tmp_path_factory) -> Path:
    """An f16 GGUF whose rows are whole 256-wide blocks, so no type falls back to another."""
    from models import make_tiny_model

    root = tmp_path_factory.mktemp("f16_256")
    hf = make_tiny_model(root / "hf", layers=2, hidden=256, heads=4, kv_heads=2, intermediate=512)
    out = root / "m.f16.gguf"
    convert(open_source(hf), None, out, outtype="f16", console=_log()[0])
    return out


def test_quantizer_threads_follow_the_cpu_affinity(monkeypatch, tmp_path):
    import llama_cpp

    used = []
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    monkeypatch.setattr(llama_cpp, "llama_model_quantize", lambda src, dst, params: used.append(params.nthread) or 0)
    llama_quantize(tmp_path / "a.gguf", tmp_path / "b.gguf", LLAMA_QUANTIZER["q4_0"])
    assert used == [1]


def test_every_quantizer_type_with_or_without_an_importance_matrix(f16_256, tmp_path):
    for name, ftype in LLAMA_QUANTIZER.items():
        llama_quantize(f16_256, tmp_path / f"{name}.gguf", ftype, threads=1)
        assert (tmp_path / f"{name}.gguf").stat().st_size > 0
    for name, ftype in IMATRIX_ONLY.items():  # llama.cpp refuses them without one: they need --imatrix
        with pytest.raises(HopscotchError):
            llama_quantize(f16_256, tmp_path / f"{name}.gguf", ftype, threads=1)


def test_quantization_progress_counts_tensors(tiny_llama, tmp_path):
    console, text = _log()
    summary = convert(open_source(tiny_llama), None, tmp_path / "m.gguf", outtype="iq4_xs", console=console)
    n = summary.tensors_written
    assert re.search(rf"llama.cpp quantizing to iq4_xs +{n}/{n}", text.getvalue()), text.getvalue()


def test_imatrix_types(monkeypatch, capsys, tiny_llama, tmp_path):
    out = tmp_path / "m.gguf"
    code, _, err = run_cli(monkeypatch, capsys, "convert", str(tiny_llama), "-o", str(out), "--outtype", "iq2_xs")
    assert_one_line_error(code, err, "--imatrix FILE")
    imatrix = tmp_path / "imatrix.gguf"
    imatrix.write_bytes(b"as llama-imatrix writes it")
    code, _, err = run_cli(monkeypatch, capsys, "convert", str(tiny_llama), "-o", str(out), "--outtype", "iq2_xs",
                           "--imatrix", str(imatrix))  # fmt: skip
    assert code == 0, err
    assert f"llama-quantize --imatrix {imatrix} {out} {tmp_path / 'm-IQ2_XS.gguf'} IQ2_XS" in err
    assert read_gguf(out).fields["general.file_type"].contents() == 1  # f16, for llama-quantize to finish
    code, _, err = run_cli(monkeypatch, capsys, "convert", str(tiny_llama), "-o", str(tmp_path / "q.gguf"),
                           "--outtype", "q8_0", "--imatrix", str(imatrix))  # fmt: skip
    assert_one_line_error(code, err, "drop --imatrix")


def test_calibration_progress_and_search_threads(tiny_llama, monkeypatch, tmp_path):
    threads: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    console, text = _log()
    options = SearchOptions(skips=1, samples=2, heldout=1, seq_len=64, max_new_tokens=32, device="cpu", threads=1)
    prepare(open_source(tiny_llama), options, console, data_file=tmp_path / "data.jsonl", save_data=True, force=False)
    assert threads == [1]
    assert re.search(r"calibration sequences +3/3", text.getvalue()), text.getvalue()


def test_gpu_layers_default_follows_gpu_offload(monkeypatch):
    monkeypatch.setattr(verify_runner, "gpu_offload_available", lambda: True)
    assert verify_runner.gpu_layers_for(None) == (-1, "all layers on the GPU (default: this llama.cpp has GPU offload)")
    assert verify_runner.gpu_layers_for(0)[0] == 0
    monkeypatch.setattr(verify_runner, "gpu_offload_available", lambda: False)
    layers, placement = verify_runner.gpu_layers_for(None)
    assert layers == 0 and placement.startswith("CPU only (default")
