"""Temporary files (a converted reference, a K-quant's f16 intermediate) go to the chosen
folder, are checked for free space first, and are gone afterwards however the run ends."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import hopscotch_export.estimates as estimates
from hopscotch_export.cli import app
from hopscotch_export.converters.convert import choose_outtype, convert
from hopscotch_export.converters.needs import convert_needs
from hopscotch_export.errors import HopscotchError
from hopscotch_export.plan import Plan
from hopscotch_export.sources import open_source
from hopscotch_export.verify import VerifyOptions, run_verify
from hopscotch_export.verify.needs import verify_needs
from hopscotch_export.converters.reference import reference_gguf
from test_places import SLOW_WRITES


#: the module, not the function ``converters.convert`` that its package re-exports
convert_module = importlib.import_module("hopscotch_export.converters.convert")


class Boom(Exception):
    """Raised by a patched step to fail a run midway."""


@pytest.fixture()
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    return out, work


@pytest.fixture()
def seen_intermediates(monkeypatch) -> list[Path]:
    """Paths llama.cpp's quantizer was given as input (the f16 intermediates)."""
    seen: list[Path] = []
    real = convert_module.llama_quantize

    def spy(src: Path, dst: Path, ftype, **kw) -> None:
        assert src.is_file() and src.stat().st_size > 0
        seen.append(src)
        real(src, dst, ftype, **kw)

    monkeypatch.setattr(convert_module, "llama_quantize", spy)
    return seen


def test_kquant_intermediate_in_work_dir_then_removed(tiny_llama, dirs, seen_intermediates):
    out, work = dirs
    convert(open_source(tiny_llama), None, out / "m.gguf", outtype="q4_k_m", work_dir=work)
    assert [p.parent for p in seen_intermediates] == [work]
    assert list(work.iterdir()) == [] and [p.name for p in out.iterdir()] == ["m.gguf"]


def test_kquant_intermediate_beside_output_by_default(tiny_llama, dirs, seen_intermediates):
    out, _ = dirs
    convert(open_source(tiny_llama), None, out / "m.gguf", outtype="q4_k_m")
    assert [p.parent for p in seen_intermediates] == [out]
    assert [p.name for p in out.iterdir()] == ["m.gguf"]


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_failed_kquant_leaves_nothing(tiny_llama, dirs, monkeypatch, error):
    out, work = dirs

    def fail(src: Path, dst: Path, ftype, **kw) -> None:
        assert src.parent == work and src.is_file()
        raise error()

    monkeypatch.setattr(convert_module, "llama_quantize", fail)
    with pytest.raises(error):
        convert(open_source(tiny_llama), None, out / "m.gguf", outtype="q4_k_m", work_dir=work)
    assert list(work.iterdir()) == [] and list(out.iterdir()) == []


def test_reference_converted_in_work_dir_then_removed(tiny_llama, dirs):
    out, work = dirs
    model = out / "model.gguf"
    convert(open_source(tiny_llama), None, model, outtype="f32")
    with reference_gguf(str(tiny_llama), model, work_dir=work) as ref:
        assert ref.converted_to == "f32" and ref.path.is_file() and ref.path.parent.parent == work
    assert list(work.iterdir()) == []
    with reference_gguf(str(tiny_llama), model) as ref:  # default: beside the model
        assert ref.path.parent.parent == out
    assert list(out.iterdir()) == [model]


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_reference_removed_when_verification_fails(tiny_llama, dirs, error):
    out, work = dirs
    model = out / "model.gguf"
    convert(open_source(tiny_llama), None, model, outtype="f32")
    with pytest.raises(error), reference_gguf(str(tiny_llama), model, work_dir=work):
        raise error()
    assert list(work.iterdir()) == []


def test_reference_removed_when_its_conversion_fails(tiny_llama, dirs, monkeypatch):
    out, work = dirs
    model = out / "model.gguf"
    convert(open_source(tiny_llama), None, model, outtype="f32")

    def produce_then_fail(tensors):
        yield tensors[0], tensors[0].produce()
        raise Boom()

    monkeypatch.setattr(convert_module, "iter_produced", produce_then_fail)
    with pytest.raises(Boom), reference_gguf(str(tiny_llama), model, work_dir=work):
        pass
    assert list(work.iterdir()) == [] and list(out.iterdir()) == [model]


def test_reference_left_by_a_killed_verify_is_removed_by_the_next(tiny_llama, dirs):
    """SIGKILL runs no cleanup: the converted reference stays, in a folder named after its
    process and host, and the next verify in that folder removes it (a live one's stays)."""
    out, work = dirs
    model = out / "model.gguf"
    convert(open_source(tiny_llama), None, model, outtype="f32")
    script = SLOW_WRITES + (
        "from hopscotch_export.converters.reference import reference_gguf\n"
        "with reference_gguf(sys.argv[1], Path(sys.argv[2]), work_dir=Path(sys.argv[3])):\n    pass\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tiny_llama), str(model), str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline, left = time.monotonic() + 120, []
    while time.monotonic() < deadline and proc.poll() is None and not left:
        left = [p for p in work.rglob("*") if p.is_file() and p.stat().st_size > 4096]
        time.sleep(0.05)
    assert left, proc.stderr.read().decode() if proc.poll() is not None else "no reference was being written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (stale,) = work.iterdir()
    host = socket.gethostname()
    assert stale.is_dir() and stale.name.startswith(f".hopscotch-verify-reference.{proc.pid}@{host}.")
    live = work / f".hopscotch-verify-reference.{os.getppid()}@{host}.x.tmp"  # a verify still running
    live.mkdir()
    with reference_gguf(str(tiny_llama), model, work_dir=work) as ref:
        assert ref.path.is_file() and not stale.exists()
    assert list(work.iterdir()) == [live]


def test_run_verify_uses_work_dir(tiny_llama, dirs, monkeypatch):
    out, work = dirs
    model = out / "model.gguf"
    convert(open_source(tiny_llama), Plan.identity(open_source(tiny_llama).model_ref(), skip=(2,)), model, outtype="f32")
    written: list[Path] = []
    real = convert_module.convert

    def spy(source, plan, path, **kw):
        written.append(Path(path))
        return real(source, plan, path, **kw)

    monkeypatch.setattr(convert_module, "convert", spy)
    run_verify(model, str(tiny_llama), VerifyOptions(ctx=32, chunks=2, speed=False, threads=1, work_dir=work))
    assert [p.parent.parent for p in written] == [work]
    assert list(work.iterdir()) == [] and list(out.iterdir()) == [model]
    with pytest.raises(HopscotchError, match="--work-dir"):
        run_verify(model, str(tiny_llama), VerifyOptions(work_dir=work / "missing"))


def shrink(monkeypatch, where_prefix: str, free: int = 1000) -> None:
    """Pretend only ``free`` bytes are available at places starting with ``where_prefix``."""
    real = estimates.available
    monkeypatch.setattr(estimates, "available", lambda where: free if where.startswith(where_prefix) else real(where))


@pytest.mark.parametrize("outtype,where", [("f16", "disk:"), ("q4_k_m", "disk:"), ("f16", "ram")])
def test_too_little_space_refuses_before_writing(tiny_llama, dirs, monkeypatch, outtype, where):
    out, work = dirs
    shrink(monkeypatch, where)
    with pytest.raises(HopscotchError) as e:
        convert(open_source(tiny_llama), None, out / "m.gguf", outtype=outtype, work_dir=work)
    message = str(e.value)
    assert "\n" not in message and "needs" in message and ("free disk" in message) == (where == "disk:")
    assert list(out.iterdir()) == [] and list(work.iterdir()) == []


def test_reference_refuses_before_writing(tiny_llama, dirs, monkeypatch):
    out, work = dirs
    model = out / "model.gguf"
    convert(open_source(tiny_llama), None, model, outtype="f32")
    shrink(monkeypatch, f"disk:{work.resolve()}")
    with pytest.raises(HopscotchError, match=f"free disk in {work.resolve()}"):
        with reference_gguf(str(tiny_llama), model, work_dir=work):
            pass
    assert list(work.iterdir()) == []


def test_verify_refuses_before_converting_the_reference(tiny_llama, dirs, monkeypatch):
    out, work = dirs
    model = out / "model.gguf"
    convert(open_source(tiny_llama), None, model, outtype="f32")
    needs = verify_needs(model, str(tiny_llama), VerifyOptions(work_dir=work))
    assert [n.where for n in needs] == ["ram", f"disk:{work.resolve()}", "ram"]  # verify; conversion disk, memory
    shrink(monkeypatch, f"disk:{work.resolve()}")
    with pytest.raises(HopscotchError, match="free disk"):
        run_verify(model, str(tiny_llama), VerifyOptions(work_dir=work))
    assert list(work.iterdir()) == []


def test_cli_convert_work_dir_and_refusal(tiny_llama, dirs, monkeypatch, seen_intermediates):
    out, work = dirs
    runner = CliRunner()
    ok = runner.invoke(app, ["convert", str(tiny_llama), "-o", str(out / "m.gguf"), "--outtype", "q4_0",
                             "--work-dir", str(work)])
    assert ok.exit_code == 0, ok.output
    assert [p.parent for p in seen_intermediates] == [work] and list(work.iterdir()) == []
    missing = runner.invoke(app, ["convert", str(tiny_llama), "-o", str(out / "n.gguf"), "--work-dir", str(work / "x")])
    assert isinstance(missing.exception, HopscotchError) and "--work-dir" in str(missing.exception)
    shrink(monkeypatch, "disk:")
    full = runner.invoke(app, ["convert", str(tiny_llama), "-o", str(out / "n.gguf")])
    assert isinstance(full.exception, HopscotchError) and "free disk" in str(full.exception)
    assert [p.name for p in out.iterdir()] == ["m.gguf"]


def test_disk_estimate_bounds_the_written_file(tiny_llama, tmp_path):
    source = open_source(tiny_llama)
    for outtype in ("f32", "q8_0", "q4_k_m"):
        out = tmp_path / f"{outtype}.gguf"
        needs = convert_needs(source, choose_outtype(source, outtype), out)
        convert(source, None, out, outtype=outtype)
        (disk,) = [n for n in needs if n.where.startswith("disk:")]
        size = out.stat().st_size
        parts = list(disk.parts.values())
        assert parts[0] >= size, outtype  # the output itself
        assert parts[0] < size + 8 * 2**20  # metadata allowance, not a wild guess
        assert len(parts) == (2 if outtype == "q4_k_m" else 1)  # + the f16 intermediate, same folder
