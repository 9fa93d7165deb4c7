"""SIGTERM stops a run as Ctrl-C does: the search keeps the plan of its last finished step
(resumed, it ends at the uninterrupted plan), convert and verify leave nothing behind.

Each killed run is a real CLI process; a patch makes it stall at a chosen point and say
so (a marker file), so the signal lands there on a machine of any speed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hopscotch_export.converters import convert
from hopscotch_export.sources import open_source

BUDGET = ["--samples", "6", "--heldout", "2", "--seq-len", "32", "--score-samples", "2", "--batch-size", "2",
          "--shortlist", "2", "--final-epochs", "2", "--device", "cpu"]  # fmt: skip

#: Runs the CLI with ``PATCH`` applied; ``stall()`` touches the marker and waits for the signal.
#: SIGINT as in an interactive shell (a non-interactive one may start children ignoring it).
RUNNER = """
import pathlib, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
mark = pathlib.Path(sys.argv[1])
def stall():
    mark.touch()
    time.sleep(600)
{patch}
from hopscotch_export.cli import main
sys.argv = ["hopscotch-export", *sys.argv[2:]]
main()
"""

#: The second greedy step stalls after its first unit of work.
STALL_IN_STEP_2 = """
from hopscotch_export.search.greedy import Selector
real_step, calls = Selector.step, []
def step(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        advance = self.progress.advance
        def advance_then_stall():
            advance()
            stall()
        self.progress.advance = advance_then_stall
    return real_step(self, *args, **kwargs)
Selector.step = step
"""

#: Any GGUF being written stalls after its first tensor's data.
STALL_IN_WRITE = """
import gguf
real_write = gguf.GGUFWriter.write_tensor_data
def write(self, *args, **kwargs):
    real_write(self, *args, **kwargs)
    stall()
gguf.GGUFWriter.write_tensor_data = write
"""


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1")  # the same arithmetic in every run


def cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hopscotch_export", *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        text=True, env=env(),
    )  # fmt: skip


def killed(tmp_path: Path, patch: str, signum: int, *args: str) -> tuple[int, str]:
    """Run the CLI with ``patch``, send ``signum`` once it stalls; (exit status, output)."""
    mark, log = tmp_path / "stalled", tmp_path / "killed.log"
    with log.open("w") as f:
        run = subprocess.Popen(
            [sys.executable, "-c", RUNNER.format(patch=patch), str(mark), *args], stdout=f, stderr=f, env=env()
        )
        try:
            deadline = time.monotonic() + 300
            while not mark.exists():
                assert run.poll() is None, f"ended before stalling:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"did not stall:\n{log.read_text()}"
                time.sleep(0.05)
            run.send_signal(signum)
            code = run.wait(timeout=60)
        finally:
            run.kill()
    mark.unlink()
    return code, log.read_text()


def last_line(output: str) -> str:
    return [line for line in output.splitlines() if line.strip()][-1]


def test_sigterm_mid_step_keeps_the_partial_plan_and_resume_ends_at_the_uninterrupted_plan(
    tiny_llama: Path, text_file: Path, tmp_path: Path
) -> None:
    search = ["search", str(tiny_llama), "--skips", "2", "--data", str(text_file), *BUDGET]
    out, whole = tmp_path / "cut.json", tmp_path / "uninterrupted" / "plan.json"
    whole.parent.mkdir()
    uninterrupted = cli(*search, "-o", str(whole))  # meanwhile
    code, output = killed(tmp_path, STALL_IN_STEP_2, signal.SIGTERM, *search, "-o", str(out))
    assert code == 143, output
    saved = f"the plan after 1 step(s) is in {out}, continue with --resume {out}"
    assert last_line(output) == f"error: interrupted; {saved}"
    assert "Traceback" not in output
    partial = json.loads(out.read_text())
    assert not partial["complete"] and len(partial["provenance"]["search"]["steps"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.json", "killed.log", "uninterrupted"]  # no .tmp

    resumed = cli(*search, "-o", str(out), "--resume", str(out))
    for run in (resumed, uninterrupted):
        _, errors = run.communicate(timeout=600)
        assert run.returncode == 0, errors
    a, b = json.loads(out.read_text()), json.loads(whole.read_text())
    assert a["complete"] and a["provenance"]["search"]["order"] == b["provenance"]["search"]["order"]
    assert a["skip"] == b["skip"]
    for branch in ("attn", "mlp"):
        assert a["scales"][branch] == pytest.approx(b["scales"][branch], abs=1e-6)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_convert_leaves_nothing(tiny_llama: Path, tmp_path: Path, signum: int, code: int) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    status, output = killed(tmp_path, STALL_IN_WRITE, signum, "convert", str(tiny_llama), "-o", str(folder / "m.gguf"))
    assert status == code, output
    assert last_line(output) == "interrupted" and "Traceback" not in output
    assert list(folder.iterdir()) == []


def test_sigterm_while_verify_converts_the_reference_leaves_nothing(tiny_llama: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    convert(open_source(tiny_llama), None, model, outtype="f16")
    report = tmp_path / "report.json"
    args = ["verify", str(model), "--reference", str(tiny_llama), "--no-speed", "--json", str(report)]
    status, output = killed(tmp_path, STALL_IN_WRITE, signal.SIGTERM, *args)
    assert status == 143, output
    assert "converting the reference" in output  # it stalled there, in the reference's GGUF
    assert last_line(output) == "interrupted" and "Traceback" not in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.log", "m.gguf"]
