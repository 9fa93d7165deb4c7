"""``hopscotch-export eval``: the typer command (registered by cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..errors import HopscotchError
from ..files import check_writable
from ..kv_cache import CACHE_TYPES
from ..sources.bundled import PREFIX, bundled_path
from ..verify.alternatives import check_cache_type
from ..verify.command import gpu_layers_option
from .run import DEFAULT_CTX, EvalOptions, run_eval


def parse_tasks(text: str) -> tuple[str, ...]:
    """``arc_easy,hellaswag`` -> the names, blanks dropped."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def parse_limit(limit: float | None) -> int | float | None:
    """lm-eval's ``--limit``: a count of documents per task, or a fraction of them below 1."""
    if limit is None:
        return None
    if limit <= 0:
        raise HopscotchError(f"--limit {limit:g}: give a positive number of documents per task (or a fraction < 1)")
    return int(limit) if limit >= 1 else limit


def gguf_path(spec: str) -> Path:
    """The GGUF file ``spec`` names (a path, or ``bundled:NAME``); any architecture llama.cpp
    runs, ``deci`` included."""
    if spec.startswith(PREFIX):
        return bundled_path(spec[len(PREFIX) :])
    path = Path(spec).expanduser()
    if path.is_dir() or (path.exists() and path.suffix.lower() != ".gguf"):
        raise HopscotchError(f"{spec} is not a GGUF; convert it first (hopscotch-export convert {spec} -o m.gguf)")
    if not path.is_file():
        raise HopscotchError(f"{spec} not found; pass a .gguf file or bundled:smollm2")
    return path


def eval_command(
    model: str = typer.Argument(..., help="The GGUF to score (a path, or bundled:smollm2)."),
    tasks: str = typer.Option(..., "--tasks", help="lm-eval tasks, comma-separated: arc_easy,hellaswag,..."),
    reference: Optional[str] = typer.Option(
        None, "--reference", help="Score this model too, on the same requests: a GGUF, or a Hugging Face folder / "
        "hub id (converted once to the model's type)."
    ),
    limit: Optional[float] = typer.Option(None, "--limit", help="Documents per task (a fraction if below 1)."),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", help="Few-shot examples (default: the task's)."),
    include_path: Optional[Path] = typer.Option(
        None, "--include-path", help="Folder of task YAML files of your own (lm-eval's --include_path)."
    ),
    ctx: Optional[int] = typer.Option(
        None, "--ctx",
        help=f"Context in tokens; longer prompts are cut on the left (default: the file's, at most {DEFAULT_CTX}).",
    ),
    cache_type: str = typer.Option("f16", "--cache-type", help=f"KV cache type ({'|'.join(CACHE_TYPES)})."),
    gpu_layers: Optional[int] = gpu_layers_option(),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: all cores)."),
    reference_outtype: Optional[str] = typer.Option(
        None, "--reference-outtype", help="Output type for converting the reference (default: the model's)."
    ),
    work_dir: Optional[Path] = typer.Option(
        None, "--work-dir", help="Folder for the converted reference (default: beside MODEL)."
    ),
    json_out: Optional[Path] = typer.Option(
        None, "--json", help="Write lm-eval's results (and the comparison) as JSON here."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --json file."),
) -> None:
    """Score a GGUF on lm-evaluation-harness tasks in llama.cpp, optionally beside its original."""
    path = gguf_path(model)
    check_cache_type(cache_type)
    if json_out is not None:
        check_writable(json_out, force)
    options = EvalOptions(
        tasks=parse_tasks(tasks), limit=parse_limit(limit), num_fewshot=num_fewshot, include_path=include_path,
        ctx=ctx, threads=threads, gpu_layers=gpu_layers, cache_type=cache_type,
        reference_outtype=reference_outtype, work_dir=work_dir,
    )  # fmt: skip
    report = run_eval(path, reference, options, Console(stderr=True))
    report.render(Console())
    if json_out is not None:
        report.save(json_out, force=force)
