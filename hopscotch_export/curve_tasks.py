"""``--skips auto --tasks``: every count of the quality curve scored on lm-eval tasks.

The curve's held-out KL says how far each count moves the model; papers compare task
accuracy. So the one command converts the plan of every count (the search keeps them in
``model.counts/``), one temporary file at a time, and scores it with eval's own scorer and
options: a count's figure is what ``hopscotch-export eval`` gives its file. A file the gate
converted is scored there, before it is deleted or exported (gate.py calls
:meth:`CurveTasks.score`), and the exported file where it lies, so no count is converted
twice. The original is scored once; it is also the reference of ``model.eval.json``. The
search stage knows nothing of this: the figures are added to the curve's JSON afterwards.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console

from .errors import HopscotchError
from .evaluation.report import EvalReport, Runtime, main_metrics, without_samples
from .evaluation.run import EvalOptions, TaskScorer
from .files import temp_folder
from .gate import count_plan, file_settings
from .sources import ModelSource

#: what the curve's JSON says the task figures are
MEASURE = (
    "lm-eval in llama.cpp (hopscotch-export eval): each count's converted file, and the original "
    "(converted to the same type)"
)


def task_settings(options: EvalOptions, outtype: str, imatrix: Path | None) -> dict[str, Any]:
    """What the curve's task figures depend on besides the plans: the tasks, eval's options
    and the files' output type."""
    return {
        "tasks": list(options.tasks), "limit": options.limit, "num_fewshot": options.num_fewshot,
        "include_path": None if options.include_path is None else str(options.include_path), "ctx": options.ctx,
        "cache_type": options.cache_type, **file_settings(outtype, imatrix),
    }  # fmt: skip


def already_scored(curve: dict[str, Any], settings: dict[str, Any]) -> bool:
    """Whether ``curve`` holds task figures made with ``settings`` (a rerun on the same plan)."""
    return curve.get("tasks", {}).get("settings") == settings


def files_to_score(counts: int) -> str:
    """The cost of ``--skips auto --tasks``, said before the run (and by ``--dry-run``)."""
    return (
        f"{counts + 1} files scored on the tasks: the original and each count of the curve (up to {counts}), "
        "each converted once to a temporary file (the gate's candidates and the exported file are scored as "
        "they are)"
    )


class CurveTasks:
    """Scores the counts of one curve and the original, one file at a time."""

    def __init__(
        self, source: ModelSource, model: str, curve: dict[str, Any], counts: Path, options: EvalOptions, *,
        outtype: str, imatrix: Path | None, name: str | None, work_dir: Path | None, console: Console,
    ) -> None:  # fmt: skip
        if not counts.is_dir():
            raise HopscotchError(
                f"--tasks scores every count of the curve from the search's plans per count ({counts}), which a "
                "finished run removes; pass --force to search again"
            )
        self.scorer = TaskScorer(options, console)
        self.source, self.model, self.counts = source, model, counts
        self.outtype, self.imatrix, self.name, self.work_dir = outtype, imatrix, name, work_dir
        self.console = console
        self.settings = task_settings(options, outtype, imatrix)
        #: per count: lm-eval's results and what scoring cost
        self.results: dict[int, tuple[dict[str, Any], Runtime]] = {}
        self.original: tuple[dict[str, Any], Runtime] | None = None
        self.total = len(curve["points"]) + 1

    def score(self, k: int, path: Path, what: str = "the gate's candidate") -> None:
        """Score count ``k``'s file at ``path`` (converted by someone else: ``what``)."""
        self._announce(f"count {k} ({what})")
        self.results[k] = self.scorer.score(path, f"count {k}")

    def finish(self, curve: dict[str, Any], exported: Path) -> dict[str, Any]:
        """Score the original and every count not scored yet (the chosen one is ``exported``);
        returns the curve's ``tasks`` entry."""
        from .converters import convert
        from .converters.reference import reference_gguf

        ks = [p["removed"] for p in curve["points"]]
        with reference_gguf(self.model, exported, None, self.console, self.work_dir) as ref:
            self._announce("the original")
            self.original = self.scorer.score(ref.path, "original", self.scorer.context(exported))
        with temp_folder(exported, folder=self.work_dir, fix="pass --work-dir on another disk") as tmp:
            for k in ks:
                if k in self.results:
                    continue
                if k == curve["chosen"]:
                    self.score(k, exported, "the exported file")
                    continue
                path = tmp / f"{k}.gguf"
                convert(
                    self.source, count_plan(self.counts, k), path, outtype=self.outtype, name=self.name,
                    console=self.console, work_dir=self.work_dir, imatrix=self.imatrix,
                )  # fmt: skip
                self.score(k, path, "converted to a temporary file")
                path.unlink()
        for k, (results, runtime) in self.results.items():  # per-document samples: the exported file's only
            if k != curve["chosen"]:
                self.results[k] = without_samples(results), runtime
        return {
            "measure": MEASURE,
            "settings": self.settings,
            "original": _scores(self.original[0]),
            "counts": [{"removed": k, "scores": _scores(self.results[k][0])} for k in ks],
        }

    def report(self, chosen: int, exported: Path) -> EvalReport:
        """``model.eval.json``: the exported count beside the original, from the scores made."""
        assert self.original is not None, "finish() scores the original"
        (results, runtime), (original, ref_runtime) = self.results[chosen], self.original
        return EvalReport(
            model=str(exported), reference=self.model, results=results, reference_results=original,
            runtime={"model": runtime, "reference": ref_runtime},
        )  # fmt: skip

    def _announce(self, what: str) -> None:
        done = len(self.results) + (self.original is not None) + 1
        self.console.print(f"lm-eval on file {done} of {self.total}: {what}", highlight=False)


def _scores(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each task's main metric and its standard error (None where lm-eval gives none)."""
    return {
        task: {"metric": m.name, "value": m.value,
               "stderr": None if m.stderr is None or math.isnan(m.stderr) else m.stderr}
        for task, m in main_metrics(results).items()
    }  # fmt: skip

