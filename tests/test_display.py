"""One clean display: progress as plain lines off a terminal, the libraries' bars, logs and
warnings silenced, ours kept."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress

from hopscotch_export.progress import EVERY, GAP, PlainProgress, progress_bars
from hopscotch_export.quiet import quiet_libraries


class Clock:
    """A time source the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plain(in_bytes: bool = False) -> tuple[PlainProgress, Clock, io.StringIO]:
    clock, text = Clock(), io.StringIO()
    return PlainProgress(Console(file=text, width=60), in_bytes=in_bytes, width=10, get_time=clock), clock, text


def test_bars_on_a_terminal_plain_lines_elsewhere() -> None:
    assert isinstance(progress_bars(Console(file=io.StringIO())), PlainProgress)
    terminal = progress_bars(Console(file=io.StringIO(), force_terminal=True))
    assert isinstance(terminal, Progress) and not isinstance(terminal, PlainProgress)


def test_a_line_at_start_at_tenths_at_most_every_gap_and_at_the_end() -> None:
    bars, clock, text = plain()
    with bars:
        task = bars.add_task("step 2/4", total=48)
        for _ in range(48):  # a tenth every 1.2 s: a line each GAP seconds, not each tenth
            clock.now += 0.25
            bars.advance(task)
    lines = text.getvalue().splitlines()
    assert lines[0] == "step 2/4    0/48  00:00"
    assert lines[-1] == "step 2/4    48/48  00:12"
    assert len(lines) == 2 + int(12 // GAP)
    assert "\r" not in text.getvalue() and "\x1b" not in text.getvalue()


def test_a_task_without_total_prints_every_so_often_and_its_last_count_when_stopped() -> None:
    bars, clock, text = plain()
    with bars:
        task = bars.add_task("parity", total=None)
        for done in range(1, 26):  # 250 s, no total: no tenths, a line each EVERY seconds
            clock.now += 10
            bars.update(task, completed=done)
    lines = text.getvalue().splitlines()
    assert lines[0] == "parity      0  00:00"
    assert lines[1] == f"parity      {int(EVERY // 10)}  {int(EVERY) // 60:02d}:{int(EVERY) % 60:02d}"
    assert lines[-1] == "parity      25  04:10"  # stopped unfinished: where it got to
    assert len(lines) == 2 + int(250 // EVERY)


def test_bytes_and_a_changing_description_keep_the_task_label() -> None:
    bars, clock, text = plain(in_bytes=True)
    with bars:
        task = bars.add_task("converting", total=13_000_000)
        for name in ("token_embd.weight", "output.weight"):
            clock.now += 1
            bars.update(task, description=name, advance=6_500_000)
    assert text.getvalue().splitlines()[-1] == "converting  13.0 MB/13.0 MB  00:02"


def test_library_warnings_and_logs_are_silenced_ours_kept_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from transformers.utils import logging as transformers_logging

    with warnings.catch_warnings():
        quiet_libraries()
        warnings.warn_explicit("internal detail", UserWarning, "t.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit("renamed soon", FutureWarning, "h.py", 1, module="hopscotch_export.sources.hf")
        warnings.warn_explicit("scales lost precision; use q8_0", UserWarning, "q.py", 1, module="hopscotch_export.x")
    assert capsys.readouterr().err == "warning: scales lost precision; use q8_0\n"
    assert transformers_logging.get_verbosity() == logging.ERROR
    assert not transformers_logging.is_progress_bar_enabled()


def test_the_one_command_into_a_file_prints_lines_not_bars(tiny_llama: Path, text_file: Path, tmp_path: Path) -> None:
    """Search (transformers loads the model), a K-quant (llama.cpp's quantizer logs every
    tensor) and verify (llama.cpp runs) with the output going to a file, as in CI."""
    log = tmp_path / "run.log"
    args = [str(tiny_llama), "--skips", "1", "-o", str(tmp_path / "m.gguf"), "--data", str(text_file),
            "--samples", "4", "--heldout", "2", "--seq-len", "32", "--score-samples", "2", "--batch-size", "2",
            "--final-epochs", "1", "--device", "cpu", "--outtype", "q4_k_m", "--chunks", "1", "--no-speed"]  # fmt: skip
    with log.open("w") as f:
        run = subprocess.run([sys.executable, "-m", "hopscotch_export", *args], stdout=f, stderr=f,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
    text = log.read_text()
    assert run.returncode == 0, text
    assert "\r" not in text and "\x1b" not in text
    for noise in ("Loading weights", "it/s]", "llama_model_loader", "llama_model_quantize", "warnings.warn"):
        assert noise not in text
    counted = (("calibration sequences", "6"), ("step 1/1", r"\d+"), ("final training", r"\d+"),
               ("converting", r"[\d.]+ [kM]B"), ("llama.cpp quantizing to q4_k_m", r"\d+"))  # fmt: skip
    for task, total in counted:
        assert re.search(rf"^{re.escape(task)} +{total}/{total}  \d\d:\d\d$", text, re.M), (task, text)
    assert re.search(r"^perplexity and KL \(export, f16 KV\) +1/1  \d\d:\d\d$", text, re.M), text
