"""Every place a user may write to: a missing, file-shaped, read-only or full folder, an
output that is a folder, a run killed mid-write, two runs on one output, a partial plan.
Each refusal is one line naming the problem and the fix; nothing is left behind."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gguf import GGUFWriter
from test_cli import assert_one_line_error, run_cli

from hopscotch_export import files
from hopscotch_export.converters import convert
from hopscotch_export.errors import HopscotchError
from hopscotch_export.files import atomic_output, write_text_atomic
from hopscotch_export.plan import Plan
from hopscotch_export.sources import open_source


def convert_cli(monkeypatch, capsys, model: Path, out: Path, *extra: str) -> tuple[int, str]:
    code, _, err = run_cli(monkeypatch, capsys, "convert", str(model), "-o", str(out), *extra)
    return code, err


def test_output_folder_missing(monkeypatch, capsys, tiny_llama, tmp_path):
    code, err = convert_cli(monkeypatch, capsys, tiny_llama, tmp_path / "no" / "such" / "m.gguf")
    assert_one_line_error(code, err, "does not exist", "mkdir -p")
    assert list(tmp_path.iterdir()) == []


def test_output_folder_is_a_file(monkeypatch, capsys, tiny_llama, tmp_path):
    (tmp_path / "f").write_text("mine")
    for out in (tmp_path / "f" / "m.gguf", tmp_path / "f" / "deeper" / "m.gguf"):
        code, err = convert_cli(monkeypatch, capsys, tiny_llama, out)
        assert_one_line_error(code, err, f"{tmp_path / 'f'} is a file, not a folder", "another -o")
    assert [p.name for p in tmp_path.iterdir()] == ["f"] and (tmp_path / "f").read_text() == "mine"


def test_output_is_a_folder(monkeypatch, capsys, tiny_llama, tmp_path):
    (tmp_path / "m.gguf").mkdir()
    code, err = convert_cli(monkeypatch, capsys, tiny_llama, tmp_path / "m.gguf", "--force")
    assert_one_line_error(code, err, "is a folder", "file path")
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"] and list((tmp_path / "m.gguf").iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the simulated test covers it")
def test_output_folder_read_only(monkeypatch, capsys, tiny_llama, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, err = convert_cli(monkeypatch, capsys, tiny_llama, folder / "m.gguf")
    finally:
        folder.chmod(0o755)
    assert_one_line_error(code, err, "not writable", "another -o")
    assert list(folder.iterdir()) == []


def test_output_folder_read_only_simulated(monkeypatch, capsys, tiny_llama, tmp_path):
    """As root (CI containers) a mode of 0555 does not stop writes: the refusal is
    checked by pretending access(2) denies it, then by a temporary file that cannot be made."""
    real = os.access
    monkeypatch.setattr(files.os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
    code, err = convert_cli(monkeypatch, capsys, tiny_llama, tmp_path / "m.gguf")
    assert_one_line_error(code, err, f"folder {tmp_path} is not writable", "another -o")
    monkeypatch.setattr(files.os, "access", real)

    def denied(**kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(files.tempfile, "mkstemp", denied)
    code, err = convert_cli(monkeypatch, capsys, tiny_llama, tmp_path / "m.gguf")
    assert_one_line_error(code, err, f"cannot create a file in {tmp_path} (Permission denied)", "another -o")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("outtype,what", [("f16", "m.gguf"), ("q4_0", "the f16 intermediate")])
def test_disk_full_mid_write(monkeypatch, capsys, tiny_llama, tmp_path, outtype, what):
    """ENOSPC after some tensors: one line, and neither the output nor a temporary file remains."""
    calls = {"n": 0}
    real = GGUFWriter.write_tensor_data

    def filling(self, tensor, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, tensor, *args, **kwargs)

    monkeypatch.setattr(GGUFWriter, "write_tensor_data", filling)
    code, err = convert_cli(monkeypatch, capsys, tiny_llama, tmp_path / "m.gguf", "--outtype", outtype)
    assert_one_line_error(code, err, f"ran out of room while writing {what}", "No space left on device", "free space")
    assert calls["n"] == 3 and list(tmp_path.iterdir()) == []


def test_other_write_errors_keep_their_traceback(tmp_path):
    """Only a lack of room is the user's to fix; another OSError is a bug and stays one."""
    with pytest.raises(OSError, match="I/O"):
        with atomic_output(tmp_path / "x.txt") as tmp:
            raise OSError(errno.EIO, "I/O error", str(tmp))
    assert list(tmp_path.iterdir()) == []


def test_output_appearing_meanwhile_is_kept(tmp_path):
    """Two runs on one output: each writes its own temporary file; without --force the
    second to finish refuses instead of replacing the first's result; with it, the last wins."""
    out = tmp_path / "plan.json"
    with pytest.raises(HopscotchError) as e:
        with atomic_output(out) as tmp:
            tmp.write_text("second")
            out.write_text("first")  # the other run finished meanwhile
    assert "\n" not in str(e.value) and "appeared while this run was writing it" in str(e.value)
    assert "--force" in str(e.value)
    assert out.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["plan.json"]
    with atomic_output(out, force=True) as tmp:
        tmp.write_text("second")
        out.write_text("first")
    assert out.read_text() == "second" and [p.name for p in tmp_path.iterdir()] == ["plan.json"]


def test_output_gets_plain_permissions(tmp_path):
    out = tmp_path / "m.txt"
    write_text_atomic(out, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    """A run killed mid-write leaves a temporary file; the next run for that output removes
    it if its process is gone, and leaves a live one's alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = files.socket.gethostname()
    stale = tmp_path / f".m.gguf.{dead.pid}@{host}.abc123.tmp"
    stale_mid = tmp_path / f".m.gguf.{dead.pid}@{host}.xyz_9.f16.tmp"
    live = tmp_path / f".m.gguf.{os.getppid()}@{host}.def456.tmp"
    other_host = tmp_path / f".m.gguf.{dead.pid}@not-{host}.ghi789.tmp"
    other_output = tmp_path / f".n.gguf.{dead.pid}@{host}.jkl012.tmp"
    for p in (stale, stale_mid, live, other_host, other_output):
        p.write_text("partial")
    write_text_atomic(tmp_path / "m.gguf", "done")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(p.name for p in (live, other_host, other_output)) + ["m.gguf"]


#: the start of a script whose GGUF writes last long enough to be killed in
SLOW_WRITES = """
import sys, time
from pathlib import Path
from gguf import GGUFWriter

real = GGUFWriter.write_tensor_data
def slow(self, tensor, *args, **kwargs):
    real(self, tensor, *args, **kwargs)
    self.fout[0].flush()
    time.sleep(0.5)
GGUFWriter.write_tensor_data = slow
"""

_SLOW_CONVERT = SLOW_WRITES + """
from hopscotch_export.converters import convert
from hopscotch_export.sources import open_source
convert(open_source(sys.argv[1]), None, Path(sys.argv[2]), outtype="f32")
"""


def test_convert_killed_mid_write_leaves_nothing_under_the_output_name(tiny_llama, tmp_path):
    out = tmp_path / "m.gguf"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CONVERT, str(tiny_llama), str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    temps: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") and p.stat().st_size > 4096]
        if temps:
            break
        time.sleep(0.05)
    assert temps, proc.stderr.read().decode() if proc.poll() is not None else "no temporary file appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == [temps[0].name]
    convert(open_source(tiny_llama), None, out, outtype="f32")  # the next run does not trip on it
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


@pytest.fixture()
def partial_plan(tiny_llama, tmp_path) -> Path:
    """What an interrupted search saves: complete false, 1 of 2 blocks chosen."""
    plan = Plan.identity(open_source(tiny_llama).model_ref(), skip=(3,))
    path = tmp_path / "p.json"
    plan.with_fields(complete=False, provenance={"options": {"skips": 2}}).save(path)
    return path


def test_partial_plan_refused_unless_allowed(monkeypatch, capsys, tiny_llama, tmp_path, partial_plan):
    out = tmp_path / "m.gguf"
    code, err = convert_cli(monkeypatch, capsys, tiny_llama, out, "--plan", str(partial_plan))
    assert_one_line_error(
        code, err, f"{partial_plan} is partial", "after choosing 1 of 2 blocks", f"--resume {partial_plan}",
        "--allow-incomplete",
    )  # fmt: skip
    assert not out.exists()
    code, err = convert_cli(monkeypatch, capsys, tiny_llama, out, "--plan", str(partial_plan), "--allow-incomplete")
    assert code == 0, err
    assert out.is_file()


def test_partial_plan_in_memory_named_generically(tiny_llama, tmp_path):
    plan = Plan.identity(open_source(tiny_llama).model_ref(), skip=(3,)).with_fields(complete=False)
    with pytest.raises(HopscotchError, match=r"^the plan is partial .* after choosing 1 block\(s\); .*--resume PLAN"):
        convert(open_source(tiny_llama), plan, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []
