"""Score a GGUF (and its reference, on the same requests) on lm-eval tasks.

lm-eval builds the requests from the task and the options (the few-shot examples are
drawn with its fixed seed), so the model and the reference answer identical requests;
the reference goes second, on the KV cache and threads settings of the first.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ..converters.reference import reference_gguf
from ..errors import HopscotchError
from ..progress import progress_bars
from ..sources.gguf_file import scan_gguf
from ..verify.llama_model import gpu_layers_for
from .report import EvalReport, Runtime

#: the context when the file's own is longer: enough for few-shot prompts, a small KV cache
DEFAULT_CTX = 4096


@dataclass(frozen=True)
class EvalOptions:
    """What to score and how; ``None`` leaves lm-eval's task defaults."""

    tasks: tuple[str, ...]
    limit: int | float | None = None
    num_fewshot: int | None = None
    include_path: Path | None = None
    #: context in tokens; None: the file's, at most :data:`DEFAULT_CTX`
    ctx: int | None = None
    threads: int | None = None
    #: layers offloaded (-1 = all); None: all when llama.cpp has GPU offload, as verify
    gpu_layers: int | None = None
    cache_type: str = "f16"
    flash_attn: bool = True
    reference_outtype: str | None = None
    work_dir: Path | None = None


def require_lm_eval() -> None:
    """lm-eval is an optional extra: without it, one line that says how to install it."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise HopscotchError(
            "eval needs lm-evaluation-harness: pip install 'hopscotch-export[eval]' (or pip install lm_eval)"
        ) from None
    for name in ("lm_eval", "lm-eval"):  # its per-request INFO lines would break our progress display
        logging.getLogger(name).setLevel(logging.ERROR)


def check_tasks(tasks: tuple[str, ...], include_path: Path | None = None) -> None:
    """Fail now, not after a long search, when lm-eval, a task or its data is missing."""
    require_lm_eval()
    from .tasks import task_manager

    task_manager(list(tasks), include_path)


def run_eval(model: Path, reference: str | None, options: EvalOptions, console: Console | None = None) -> EvalReport:
    """lm-eval's results for ``model`` (and ``reference``), compared task by task."""
    console = console or Console(stderr=True)
    model = Path(model)
    scorer = TaskScorer(options, console)
    ctx = scorer.context(model)
    results: dict[str, dict[str, Any]] = {}
    runtime: dict[str, Runtime] = {}
    with contextlib.ExitStack() as stack:
        files = {"model": model}
        if reference is not None:
            ref = stack.enter_context(
                reference_gguf(reference, model, options.reference_outtype, console, options.work_dir)
            )
            files["reference"] = ref.path
        for side, path in files.items():
            results[side], runtime[side] = scorer.score(path, side, ctx)
    return EvalReport(
        model=str(model), reference=reference, results=results["model"], reference_results=results.get("reference"),
        runtime=runtime,
    )  # fmt: skip


class TaskScorer:
    """Scores one file after another on the same tasks and options: the task registry is
    indexed and the data loaded once (the one command scores every count of a curve)."""

    def __init__(self, options: EvalOptions, console: Console) -> None:
        require_lm_eval()
        from .tasks import task_manager

        if not options.tasks:
            raise HopscotchError("--tasks is empty; name one or more lm-eval tasks, e.g. --tasks arc_easy,hellaswag")
        self.options = options
        self.console = console
        self.manager = task_manager(list(options.tasks), options.include_path)

    def context(self, path: Path) -> int:
        """The context the file is scored with: ``--ctx``, else its own, at most :data:`DEFAULT_CTX`."""
        return self.options.ctx or min(_trained_ctx(path), DEFAULT_CTX)

    def score(self, path: Path, label: str, ctx: int | None = None) -> tuple[dict[str, Any], Runtime]:
        """lm-eval's results for ``path`` (per-document samples kept) and its runtime, with
        progress bars named ``label``; ``ctx`` default: :meth:`context`."""
        with progress_bars(self.console) as bars:
            return _evaluate(path, self.manager, self.options, ctx or self.context(path), _counter(bars, label))


def _evaluate(
    path: Path, manager: Any, options: EvalOptions, ctx: int, progress: Any
) -> tuple[dict[str, Any], Runtime]:
    """lm-eval's ``simple_evaluate`` on one file (per-document samples kept), and what it cost."""
    from lm_eval import evaluator

    from .model import LlamaCppLM

    with _quiet(), LlamaCppLM(
        path, max_length=ctx, threads=options.threads, gpu_layers=gpu_layers_for(options.gpu_layers)[0],
        cache_type=options.cache_type, flash_attn=options.flash_attn, progress=progress,
    ) as lm:  # fmt: skip
        out = evaluator.simple_evaluate(
            model=lm, tasks=list(options.tasks), num_fewshot=options.num_fewshot, limit=options.limit,
            task_manager=manager, log_samples=True,
        )  # fmt: skip
        runtime = Runtime(lm.requests, lm.tokens, lm.seconds, lm.cpu_seconds)
    out["config"]["model"] = LlamaCppLM.__name__
    out["config"]["model_args"] = {"pretrained": str(path), "max_length": ctx, "cache_type": options.cache_type}
    return out, runtime


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval without its tqdm bars and prints (building requests, tokenizing, bootstrapping
    standard errors), which would break our progress display, and without asking git for
    the current folder's commit (it prints "fatal" outside a repository, and would record
    the user's repository, not lm-eval's)."""
    from unittest import mock

    import lm_eval.api.model
    import lm_eval.api.task
    import lm_eval.evaluator
    import tqdm as tqdm_module
    from tqdm import tqdm

    def silent(*args: Any, **kwargs: Any) -> Any:
        return tqdm(*args, **{**kwargs, "disable": True})

    with (
        contextlib.redirect_stdout(io.StringIO()),  # "bootstrapping for stddev: ..." and its bar
        mock.patch.object(lm_eval.api.task, "tqdm", silent),
        mock.patch.object(lm_eval.api.model, "tqdm", silent),
        mock.patch.object(tqdm_module, "tqdm", silent),  # imported inside lm-eval's bootstrap
        mock.patch.object(lm_eval.evaluator, "get_git_commit_hash", lambda: None),
    ):
        yield


def _counter(bars: Any, side: str) -> Any:
    """The model's progress hook: one bar per request type and file."""

    def start(label: str, total: int) -> Any:
        task = bars.add_task(f"{side}: {label}", total=total)
        return lambda: bars.advance(task)

    return start


def _trained_ctx(path: Path) -> int:
    meta = scan_gguf(path).metadata
    arch = meta.get("general.architecture")
    return int(meta.get(f"{arch}.context_length") or DEFAULT_CTX)
