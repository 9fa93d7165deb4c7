"""``--skips auto --tasks``: every count of the quality curve scored on lm-eval tasks, each
figure what ``hopscotch-export eval`` gives that count's file; no count skipped, none
converted twice, the original scored once; the table, the JSON and the plot's task panel.

The task is local (a YAML over a JSONL the test writes), so nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from hopscotch_export.evaluation.report import Runtime, main_metrics
from hopscotch_export.plan import load_plan
from hopscotch_export.sources.gguf_file import scan_gguf
from models import make_planted_model
from test_cli import assert_one_line_error, run_cli

LAYERS = 5
#: the one command on the tiny model with verify, as small as it runs (test_curve.py's)
VERIFIED = ("--samples", "6", "--heldout", "2", "--seq-len", "32", "--score-samples", "2", "--batch-size", "2",
            "--final-epochs", "1", "--device", "cpu", "--outtype", "f32", "--ctx", "64", "--chunks", "2",
            "--no-speed", "--parity-windows", "1", "--threads", "1")  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_planted_model(tmp_path_factory.mktemp("curve_tasks") / "tiny", LAYERS, 3)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``colours``: test_eval.py's balanced four-way task."""
    pytest.importorskip("lm_eval", reason="the optional extra [eval]")
    from test_eval import _multiple_choice_yaml, _write_jsonl, colours

    d = tmp_path_factory.mktemp("curve_task_yaml")
    (d / "colours.yaml").write_text(_multiple_choice_yaml("colours", _write_jsonl(d / "colours.jsonl", colours(24))))
    return d


def _skipped_layers(path: Path) -> list[int]:
    heads = scan_gguf(path).metadata["deci.attention.head_count"]
    return [i for i, h in enumerate(heads) if h == 0]


def _png_width(path: Path) -> int:
    return struct.unpack(">I", path.read_bytes()[16:20])[0]


def test_skips_auto_scores_every_count_as_eval_scores_its_file(
    monkeypatch, capsys, tiny: Path, text_file: Path, task_dir: Path, tmp_path: Path
) -> None:
    """The gate measures 3 (fails) and 2 (passes, exported); the tasks score both where the
    gate converted them, convert 1, and score the original once. Every count's figure equals
    ``eval`` on the very file scored (copied aside here), which holds that count's plan."""
    import hopscotch_export.converters as converters
    from hopscotch_export.evaluation.run import TaskScorer

    kept = tmp_path / "scored"
    kept.mkdir()
    scored: list[str] = []
    real_score = TaskScorer.score

    def score(self, path: Path, label: str, ctx: int | None = None):  # type: ignore[no-untyped-def]
        scored.append(label)
        shutil.copy(path, kept / f"{label.replace(' ', '-')}.gguf")
        return real_score(self, path, label, ctx)

    converted: list[int | None] = []
    real_convert = converters.convert

    def convert(source, plan, out, **kw):  # type: ignore[no-untyped-def]
        converted.append(None if plan is None else len(plan.skip) + len(plan.linear))
        return real_convert(source, plan, out, **kw)

    monkeypatch.setattr(TaskScorer, "score", score)
    monkeypatch.setattr(converters, "convert", convert)  # the one command, the gate, the curve's tasks
    monkeypatch.setattr(sys.modules["hopscotch_export.converters.convert"], "convert", convert)  # the reference
    run = tmp_path / "run"
    run.mkdir()
    out = run / "m.gguf"
    scoring = ("--tasks", "colours", "--include-path", str(task_dir), "--limit", "8")
    code, printed, err = run_cli(
        monkeypatch, capsys, str(tiny), "--skips", "auto", "--max-kl", "4.4", "--max-skips", "3", "-o", str(out),
        "--data", str(text_file), *VERIFIED, *scoring,
    )  # fmt: skip
    assert code == 0, err
    curve = json.loads((run / "m.curve.json").read_text())
    tasks = curve["tasks"]
    assert [c["removed"] for c in tasks["counts"]] == [p["removed"] for p in curve["points"]] == [1, 2, 3]
    assert sorted(scored) == ["count 1", "count 2", "count 3", "original"]  # every file once
    assert sorted(k for k in converted if k is not None) == [1, 2, 3]  # 3 and 2 by the gate, 1 for the tasks
    assert [g["removed"] for g in curve["gate"]["counts"]] == [3, 2] and curve["chosen"] == 2
    assert "4 files scored on the tasks" in " ".join(err.split())
    assert tasks["settings"]["limit"] == 8 and tasks["settings"]["tasks"] == ["colours"]

    json_out = tmp_path / "eval.json"
    files = [("original", tasks["original"])] + [(f"count-{c['removed']}", c["scores"]) for c in tasks["counts"]]
    for label, entry in files:
        path = kept / f"{label}.gguf"
        if label != "original":
            k = int(label.split("-")[1])
            assert sorted(_skipped_layers(path)) == sorted(curve["points"][k - 1]["layers"]), label
        code, _, eval_err = run_cli(
            monkeypatch, capsys, "eval", str(path), *scoring, "--threads", "1", "--json", str(json_out), "--force",
        )  # fmt: skip
        assert code == 0, eval_err
        got = json.loads(json_out.read_text())["results"]["colours"]
        assert entry["colours"] == {"metric": "acc_norm", "value": got["acc_norm,none"],
                                    "stderr": got["acc_norm_stderr,none"]}, label  # fmt: skip
    assert _skipped_layers(kept / "original.gguf") == []

    # model.eval.json: the exported count beside the original, from the same scores
    report = json.loads((run / "m.eval.json").read_text())
    assert report["results"]["colours"]["acc_norm,none"] == tasks["counts"][1]["scores"]["colours"]["value"]
    reference = report["hopscotch"]["reference_results"]["results"]["colours"]
    assert reference["acc_norm,none"] == tasks["original"]["colours"]["value"]
    assert load_plan(run / "m.plan.json").provenance["curve"]["tasks"] == tasks
    assert "tasks: lm-eval on each count's file" in " ".join(err.split())  # the curve's table, redrawn
    assert _png_width(run / "m.curve.png") == round(5.4 * 4 * 110)  # four panels: the tasks' is drawn
    assert sorted(p.name for p in run.iterdir()) == [
        "m.Modelfile", "m.README.md", "m.curve.json", "m.curve.png", "m.eval.json", "m.gguf", "m.plan.json",
        "m.verify.json",
    ]  # no count plans nor candidate files left

    # other task settings on the reused plan: its plans per count are gone, so it says so in one line
    for done in ("m.gguf", "m.Modelfile", "m.README.md", "m.verify.json", "m.eval.json"):
        (run / done).unlink()
    code, _, err = run_cli(
        monkeypatch, capsys, str(tiny), "--skips", "auto", "--max-kl", "4.4", "--max-skips", "3", "-o", str(out),
        "--data", str(text_file), *VERIFIED, *scoring[:-1], "4",
    )  # fmt: skip
    assert_one_line_error(code, err, "plans per count", "which a finished run removes; pass --force")
    assert not out.exists()
    # the same settings: the curve's scores stand; only the exported file and the original are scored
    scored.clear()
    code, _, err = run_cli(
        monkeypatch, capsys, str(tiny), "--skips", "auto", "--max-kl", "4.4", "--max-skips", "3", "-o", str(out),
        "--data", str(text_file), *VERIFIED, *scoring,
    )  # fmt: skip
    assert code == 0, err
    assert scored == ["model", "reference"] and json.loads((run / "m.curve.json").read_text())["tasks"] == tasks
    assert json.loads((run / "m.eval.json").read_text())["results"]["colours"] == report["results"]["colours"]


def _results(value: float) -> dict:
    return {"results": {"colours": {"acc,none": value / 2, "acc_norm,none": value, "acc_norm_stderr,none": 0.1}},
            "samples": {"colours": []}}  # fmt: skip


def test_every_count_is_scored_and_none_converted_twice(monkeypatch, tmp_path: Path) -> None:
    """The gate scored 3 (the exported file); finish converts 1, 2 and 4 (above the choice:
    the gate never measures those), scores each once, and the JSON has every count."""
    import contextlib

    import hopscotch_export.converters as converters
    import hopscotch_export.curve_tasks as curve_tasks
    import hopscotch_export.converters.reference as reference
    from rich.console import Console

    class Scorer:
        def __init__(self, options, console):  # type: ignore[no-untyped-def]
            pass

        def context(self, path: Path) -> int:
            return 64

        def score(self, path: Path, label: str, ctx: int | None = None):  # type: ignore[no-untyped-def]
            labels.append(label)
            return _results(float(path.read_text())), Runtime(1, 1, 0.0, 0.0)

    @contextlib.contextmanager
    def original(spec, model, outtype, console, work_dir):  # type: ignore[no-untyped-def]
        path = tmp_path / "original.gguf"
        path.write_text("0.5")
        yield SimpleNamespace(path=path)

    def convert(source, plan, out, **kw):  # type: ignore[no-untyped-def]
        converted.append(plan)
        out.write_text(str(plan / 10))

    labels: list[str] = []
    converted: list[int] = []
    monkeypatch.setattr(curve_tasks, "TaskScorer", Scorer)
    monkeypatch.setattr(curve_tasks, "count_plan", lambda counts, k: k)
    monkeypatch.setattr(reference, "reference_gguf", original)
    monkeypatch.setattr(converters, "convert", convert)
    (tmp_path / "m.counts").mkdir()
    curve = {"points": [{"removed": k} for k in (1, 2, 3, 4)], "chosen": 3}
    options = curve_tasks.EvalOptions(("colours",))
    ct = curve_tasks.CurveTasks(
        None, "MODEL", curve, tmp_path / "m.counts", options,  # type: ignore[arg-type]
        outtype="f32", imatrix=None, name=None, work_dir=None, console=Console(file=io.StringIO()),
    )  # fmt: skip
    exported = tmp_path / "m.gguf"
    exported.write_text("0.3")
    ct.score(3, exported)
    entry = ct.finish(curve, exported)
    assert converted == [1, 2, 4] and labels == ["count 3", "original", "count 1", "count 2", "count 4"]
    assert [c["removed"] for c in entry["counts"]] == [1, 2, 3, 4]
    assert [c["scores"]["colours"]["value"] for c in entry["counts"]] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert entry["original"] == {"colours": {"metric": "acc_norm", "value": 0.5, "stderr": 0.1}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.counts", "m.gguf", "original.gguf"]  # temporaries gone
    report = ct.report(3, exported)
    assert "samples" in report.results and report.reference_results == _results(0.5)
    assert all("samples" not in ct.results[k][0] for k in (1, 2, 4))  # kept for the exported file only


def test_main_metric_prefers_acc_norm_and_a_group_stands_for_its_subtasks() -> None:
    results = {
        "results": {
            "arc": {"acc,none": 0.4, "acc_stderr,none": 0.01, "acc_norm,none": 0.45, "acc_norm_stderr,none": 0.02},
            "mmlu": {"acc,none": 0.3, "acc_stderr,none": 0.01},
            "mmlu_math": {"acc,none": 0.2, "acc_stderr,none": 0.03},
            "gsm8k": {"exact_match,strict-match": 0.1, "exact_match_stderr,strict-match": 0.01,
                      "exact_match,flexible-extract": 0.2, "exact_match_stderr,flexible-extract": 0.01},
            "wiki": {"word_perplexity,none": 30.0, "bits_per_byte,none": 1.1},
        },
        "group_subtasks": {"mmlu": ["mmlu_math"], "arc": []},
    }  # fmt: skip
    main = main_metrics(results)
    assert {t: (m.name, m.value) for t, m in main.items()} == {
        "arc": ("acc_norm", 0.45), "mmlu": ("acc", 0.3), "gsm8k": ("exact_match,strict-match", 0.1),
        "wiki": ("word_perplexity", 30.0),
    }  # fmt: skip


def test_table_and_plot_show_each_counts_task_score(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.figure
    from rich.console import Console

    from hopscotch_export.search.curve import curve_table
    from hopscotch_export.search.curve_plot import plot_curve

    points = [
        {"removed": k, "layers": list(range(1, k + 1)), "kinds": ["skip"] * k, "kl": 0.05 * k, "ppl": 5.0 + k,
         "ppl_increase_pct": 4.0 * k, "kv_saved_pct": 10.0 * k, "compute_saved_pct": 3.0 * k, "within_limits": True}
        for k in (1, 2)
    ]  # fmt: skip
    score = lambda v, s: {"arc": {"metric": "acc_norm", "value": v, "stderr": s},  # noqa: E731
                          "wiki": {"metric": "word_perplexity", "value": 30 + v, "stderr": None}}  # fmt: skip
    tasks = {"original": score(0.5, 0.02), "counts": [{"removed": 1, "scores": score(0.45, 0.02)},
                                                      {"removed": 2, "scores": score(0.4, 0.03)}]}  # fmt: skip
    curve = {"replace": "skip", "limits": {"max_kl": 0.15, "max_ppl_increase": None}, "points": points,
             "chosen": 2, "original": {"ppl": 5.0}, "tasks": tasks}  # fmt: skip
    console = Console(width=250, record=True, file=io.StringIO())
    console.print(curve_table(curve))
    text = console.export_text()
    header = [c.strip() for c in next(line for line in text.splitlines() if "removed" in line).split("┃")]
    rows = [line.split("│") for line in text.splitlines() if line.count("│") > 5]
    arc, wiki = header.index("arc acc_norm"), header.index("wiki word_perplexity")
    assert [r[arc].strip() for r in rows] == ["0.500±0.020", "0.450±0.020", "0.400±0.030"]
    assert [r[wiki].strip() for r in rows] == ["30.500", "30.450", "30.400"]

    drawn: list = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: drawn.append(fig))
    plot_curve(curve, tmp_path / "c.png")
    (panel,) = [ax for ax in drawn[0].axes if ax.get_title().startswith("tasks")]
    (arc,) = panel.containers  # perplexity is in the table only: it would flatten the accuracies
    assert arc.get_label() == "arc acc_norm"
    assert list(arc.lines[0].get_xdata()) == [0, 1, 2] and list(arc.lines[0].get_ydata()) == [0.5, 0.45, 0.4]
    assert any(list(line.get_ydata()) == [0.5, 0.5] for line in panel.get_lines())  # the original's line


def test_dry_run_says_how_many_files_the_tasks_score(monkeypatch, capsys, tiny: Path, tmp_path: Path) -> None:
    common = ("-o", str(tmp_path / "m.gguf"), "--device", "cpu", "--dry-run", "--tasks", "colours")
    code, printed, err = run_cli(monkeypatch, capsys, str(tiny), "--skips", "auto", "--max-kl", "1", "--max-skips", "3",
                                 *common)  # fmt: skip
    assert code == 0, err
    shown = " ".join(printed.split())
    assert "lm-eval tasks (colours): 4 files scored on the tasks: the original and each count of the curve" in shown
    assert "(up to 3), each converted once to a temporary file" in shown
    code, printed, err = run_cli(monkeypatch, capsys, str(tiny), "--skips", "2", *common)
    assert code == 0, err
    assert "lm-eval tasks (colours): 2 files scored on the tasks: the exported file and the original" in (
        " ".join(printed.split())
    )
    assert list(tmp_path.iterdir()) == []


def test_eval_options_without_tasks_are_refused(monkeypatch, capsys, tiny: Path, tmp_path: Path) -> None:
    code, _, err = run_cli(
        monkeypatch, capsys, str(tiny), "--skips", "1", "-o", str(tmp_path / "m.gguf"), "--limit", "5",
        "--num-fewshot", "2",
    )  # fmt: skip
    assert_one_line_error(code, err, "--limit, --num-fewshot set how --tasks are scored; add --tasks")
