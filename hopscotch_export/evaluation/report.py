"""eval's report: lm-eval's results for the model (and the reference), a table of each
task's metrics with their standard errors, the difference, and how often both files gave
the same answer; JSON in lm-eval's results layout."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..files import write_text_atomic

FORMAT = "hopscotch-eval/1"

#: keys of a task's results that are not metrics
_NOT_METRICS = {"name", "alias", "sample_len", "samples"}


@dataclass(frozen=True)
class Metric:
    """One task metric of one file: value and lm-eval's standard error (None where it has none)."""

    task: str
    name: str
    value: float
    stderr: float | None


def metrics(results: dict[str, Any]) -> list[Metric]:
    """Every metric in lm-eval's ``results`` section, task by task (``acc,none`` -> ``acc``;
    another filter than ``none`` stays in the name, as ``exact_match,strict-match``)."""
    out = []
    for task, values in results["results"].items():
        for key, value in values.items():
            if key in _NOT_METRICS or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, _, filt = key.partition(",")
            stderr = values.get(f"{metric}_stderr,{filt}")
            name = metric if filt in ("none", "") else f"{metric},{filt}"
            out.append(Metric(task, name, float(value), float(stderr) if isinstance(stderr, (int, float)) else None))
    return out


#: a task's main metric, the first it reports of these (papers print ARC and HellaSwag as
#: acc_norm, MMLU as acc, GSM8K as exact match), else the first metric lm-eval lists
MAIN_METRICS = ("acc_norm", "acc", "exact_match")


def main_metrics(results: dict[str, Any]) -> dict[str, Metric]:
    """Each task's main metric (:data:`MAIN_METRICS`). A group that reports its own figure
    (``mmlu``) stands for its subtasks, which are left out."""
    by_task: dict[str, list[Metric]] = {}
    for m in metrics(results):
        by_task.setdefault(m.task, []).append(m)
    covered = {s for g, subs in results.get("group_subtasks", {}).items() if g in by_task for s in subs}
    out = {}
    for task, found in by_task.items():
        if task in covered:
            continue
        named = {m.name.partition(",")[0]: m for m in reversed(found)}  # a metric's first filter wins
        out[task] = next((named[n] for n in MAIN_METRICS if n in named), found[0])
    return out


def _pick(resps: Any) -> Any:
    """What a document's (filtered) responses chose: the index of the likeliest choice, a
    continuation's greedy flag, or the generated text; None for perplexity tasks."""
    if isinstance(resps, str):
        return resps
    if isinstance(resps, (list, tuple)) and resps:
        if all(isinstance(r, (list, tuple)) and len(r) == 2 for r in resps):
            if len(resps) == 1:
                return bool(resps[0][1])
            return max(range(len(resps)), key=lambda i: resps[i][0])
        if all(isinstance(r, str) for r in resps):
            return tuple(resps)
    return None


def agreement(model: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """Per task, the fraction of documents on which both files gave the same answer."""
    out = {}
    for task, docs in model.get("samples", {}).items():
        ref = {d["doc_id"]: _pick(d["filtered_resps"]) for d in reference.get("samples", {}).get(task, [])}
        same = [_pick(d["filtered_resps"]) == ref[d["doc_id"]] for d in docs if ref.get(d["doc_id"]) is not None]
        if same:
            out[task] = sum(same) / len(same)
    return out


@dataclass(frozen=True)
class Runtime:
    """What scoring one file cost in llama.cpp: requests answered, tokens decoded (a
    context shared by several requests counts once), seconds spent answering by the wall
    clock and in CPU time of this process (on a shared machine the wall clock also counts
    other programs' turns)."""

    requests: int
    tokens: int
    seconds: float
    cpu_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "tokens_decoded": self.tokens, "seconds": self.seconds,
                "cpu_seconds": self.cpu_seconds, "seconds_per_100_requests": self.per_100(self.seconds),
                "cpu_seconds_per_100_requests": self.per_100(self.cpu_seconds)}  # fmt: skip

    def per_100(self, seconds: float) -> float | None:
        return 100 * seconds / self.requests if self.requests else None


@dataclass(frozen=True)
class EvalReport:
    """lm-eval's output for the model and, with ``--reference``, for the reference."""

    model: str
    reference: str | None
    results: dict[str, Any]
    reference_results: dict[str, Any] | None = None
    #: per file ("model", "reference")
    runtime: dict[str, Runtime] = field(default_factory=dict)

    def comparison(self) -> dict[str, Any]:
        """Per task: each metric's difference (model - reference) and the agreement."""
        if self.reference_results is None:
            return {}
        ref = {(m.task, m.name): m.value for m in metrics(self.reference_results)}
        agree = agreement(self.results, self.reference_results)
        out: dict[str, Any] = {}
        for m in metrics(self.results):
            entry = out.setdefault(m.task, {"difference": {}, "agreement": agree.get(m.task)})
            if (m.task, m.name) in ref:
                entry["difference"][m.name] = m.value - ref[(m.task, m.name)]
        return out

    def render(self, console: Console) -> None:
        title = f"lm-eval: {Path(self.model).name}" + (f" vs {Path(self.reference).name}" if self.reference else "")
        table = Table(title=title)
        shown = metrics(self.results)
        # names are never cut (the numbers are short)
        table.add_column("task", no_wrap=True, min_width=max((len(m.task) for m in shown), default=4))
        table.add_column("metric", no_wrap=True, min_width=max((len(m.name) for m in shown), default=6))
        for name in ["model", *(("reference", "diff.", "same") if self.reference else ())]:
            table.add_column(name, justify="right", no_wrap=True)
        ref = {(m.task, m.name): m for m in metrics(self.reference_results)} if self.reference_results else {}
        comparison = self.comparison()
        shown_task = None
        for m in shown:
            first = m.task != shown_task
            row = [m.task if first else "", m.name, _value(m)]
            if self.reference:
                r = ref.get((m.task, m.name))
                agree = comparison.get(m.task, {}).get("agreement")
                row += [
                    _value(r) if r else "",
                    ("+" if m.value >= r.value else "") + _number(m.value - r.value) if r else "",
                    f"{agree:.0%}" if agree is not None and first else "",
                ]
            table.add_row(*row)
            shown_task = m.task
        console.print(table)
        n = {t: v.get("effective", v) for t, v in self.results.get("n-samples", {}).items()}
        shots = self.results.get("n-shot", {})
        console.print(
            "documents: " + ", ".join(f"{t} {n[t]} ({shots.get(t, 0)}-shot)" for t in n)
            + "; ± is lm-eval's standard error; same: documents on which both files chose alike",
            highlight=False, soft_wrap=True,
        )  # fmt: skip
        for side, r in self.runtime.items():
            per_100 = f" ({r.per_100(r.seconds):.1f} s per 100)" if r.requests else ""
            console.print(
                f"{side}: {r.requests} requests, {r.tokens:,} tokens decoded in {r.seconds:.1f} s{per_100}, "
                f"CPU {r.cpu_seconds:.1f} s", highlight=False, soft_wrap=True,
            )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The model's results in lm-eval's layout (what ``lm-eval --output_path`` writes, without
        the per-document samples), with the reference's and the comparison under ``hopscotch``."""
        return {
            **without_samples(self.results),
            "hopscotch": {
                "format": FORMAT,
                "model": self.model,
                "reference": self.reference,
                "reference_results": without_samples(self.reference_results) if self.reference_results else None,
                "comparison": self.comparison(),
                "runtime": {side: r.to_json() for side, r in self.runtime.items()},
            },
        }

    def save(self, path: Path, force: bool = False) -> None:
        from lm_eval.utils import handle_non_serializable

        text = json.dumps(self.to_json(), indent=2, default=handle_non_serializable, ensure_ascii=False)
        write_text_atomic(path, text + "\n", force=force)


def _value(m: Metric) -> str:
    """The value and its standard error, where lm-eval gives one."""
    stderr = "" if m.stderr is None or math.isnan(m.stderr) else f"±{_number(m.stderr)}"
    return _number(m.value) + stderr


def _number(x: float) -> str:
    """Accuracies with three decimals, as papers print them; perplexities (large) with four
    significant digits."""
    return f"{x:.3f}" if abs(x) < 100 else f"{x:.4g}"


def without_samples(results: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in results.items() if k != "samples"}
