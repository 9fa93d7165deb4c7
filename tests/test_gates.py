"""The one command's fidelity gate: the exported file must compute what the search
evaluated (llama.cpp against torch under the plan), whatever limits the user set."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from hopscotch_export import converters
from models import make_planted_model
from test_cli import run_cli
from test_search import interrupted_at_second_step

ARGS = [
    "--skips", "1", "--protect", "3", "--samples", "6", "--heldout", "2", "--seq-len", "32", "--score-samples", "2",
    "--batch-size", "2", "--final-epochs", "1", "--device", "cpu", "--outtype", "f32", "--ctx", "64", "--chunks", "2",
    "--no-speed", "--threads", "1", "--parity-windows", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_planted_model(tmp_path_factory.mktemp("gates") / "tiny", 5, 3)


def test_one_command_passes_a_faithful_file_and_fails_a_faulty_one(
    monkeypatch, capsys, tiny: Path, text_file: Path, tmp_path: Path
) -> None:
    code, _, err = run_cli(monkeypatch, capsys, str(tiny), "-o", str(tmp_path / "ok.gguf"), "--data", str(text_file), *ARGS)
    assert code == 0, err
    report = json.loads((tmp_path / "ok.verify.json").read_text())
    assert report["passed"] is True and report["limits"][0]["name"].startswith("parity with torch")
    assert report["parity"]["floor"] is not None

    real = converters.convert

    def faulty(source, plan, *args, **kwargs):  # a converter that forgets to drop the skipped block
        return real(source, dataclasses.replace(plan, skip=()), *args, **kwargs)

    monkeypatch.setattr(converters, "convert", faulty)
    code, _, err = run_cli(monkeypatch, capsys, str(tiny), "-o", str(tmp_path / "bad.gguf"), "--data", str(text_file), *ARGS)
    assert code == 1
    assert "failed: parity with torch under the plan" in err and "bad.verify.json" in err
    gate = json.loads((tmp_path / "bad.verify.json").read_text())["limits"][0]
    assert gate["passed"] is False and gate["value"] > 10 * gate["limit"]


def test_one_command_interrupted_in_its_search_says_to_rerun_it(
    monkeypatch, capsys, tiny: Path, text_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m.gguf"
    args = [str(tiny), "-o", str(out), "--data", str(text_file), *ARGS]
    args[args.index("--skips") + 1] = "2"
    with interrupted_at_second_step(monkeypatch):
        code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and "the plan after 1 step(s) is in" in err and "run the same command again to continue" in err
    assert not out.exists() and (tmp_path / "m.plan.json").is_file()
