"""``hopscotch-export verify``: the typer command (registered by cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from ..errors import HopscotchError
from ..files import check_writable
from ..kv_cache import CACHE_TYPES
from ..run_commands import WHY_FLASH_ATTENTION, llama_cpp_command, ollama_environment
from .measure import run_verify
from .options import VerifyOptions
from .tasks import DEFAULT_TEMPLATE

#: Exit codes: 0 every gate passed (or none ran), 1 a gate failed, 2 a user error.
EXIT_LIMIT, EXIT_USER_ERROR = 1, 2



def gpu_layers_option() -> Any:
    """``--gpu-layers``, as every command that runs llama.cpp declares it (a fresh option each)."""
    return typer.Option(
        None, "--gpu-layers", help="Layers to offload to CUDA/Metal (-1 = all); default: all when llama-cpp-python "
        "was built with GPU offload, else 0."
    )

def verify_command(
    model: Path = typer.Argument(..., help="The GGUF to verify (written by convert)."),
    reference: str = typer.Option(
        ..., "--reference", help="The original model: a GGUF, or a Hugging Face folder / hub id (converted once, no skips)."
    ),
    # --data, --data-config and --data-split are named by typer after their parameters: the one
    # command renames the parameters (verify_data: --verify-data) beside search's --data
    data: Optional[str] = typer.Option(
        None, help="Held-out text: a text file, or a dataset id with a 'text' column. Default: built-in sample."
    ),
    data_config: Optional[str] = typer.Option(None, help="Dataset config (e.g. wikitext-2-raw-v1)."),
    data_split: str = typer.Option("test", help="Dataset split."),
    ctx: int = typer.Option(512, "--ctx", help="Tokens per perplexity window (llama-perplexity -c); context of every test."),
    chunks: Optional[int] = typer.Option(None, "--chunks", help="Score at most this many windows (default: all)."),
    task: Optional[str] = typer.Option(
        None, "--task", help="Multiple-choice task: JSONL (question / choices / answer) or a dataset id."
    ),
    task_config: Optional[str] = typer.Option(None, "--task-config", help="Task dataset config (e.g. ARC-Challenge)."),
    task_split: str = typer.Option("test", "--task-split", help="Task dataset split."),
    task_limit: Optional[int] = typer.Option(None, "--task-limit", help="Score only the first N questions."),
    task_template: str = typer.Option(
        DEFAULT_TEMPLATE,
        "--task-template",
        help="Prompt; {question} is replaced, \\n is a newline.",
        show_default=DEFAULT_TEMPLATE.replace("\n", "\\n"),
    ),
    plan: Optional[Path] = typer.Option(None, "--plan", help="Plan the GGUF was made with: adds the parity check vs torch."),
    source: Optional[str] = typer.Option(
        None, "--source", help="Model the plan was made for, for the parity check (default: --reference)."
    ),
    parity_windows: int = typer.Option(2, "--parity-windows", help="Windows compared with torch (first 512 tokens each)."),
    speed: bool = typer.Option(True, "--speed/--no-speed", help="Measure prompt and generation speed."),
    speed_prompt: int = typer.Option(512, "--speed-prompt", help="Prompt tokens per speed run (capped by --ctx)."),
    speed_gen: int = typer.Option(64, "--speed-gen", help="Generated tokens per speed run."),
    speed_rounds: int = typer.Option(3, "--speed-rounds", help="Interleaved rounds; the median is reported."),
    cache_type: str = typer.Option(
        "f16", "--cache-type", help=f"KV cache type of the main row ({'|'.join(CACHE_TYPES)}); "
        "the others are measured beside it."
    ),
    gpu_layers: Optional[int] = gpu_layers_option(),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="CPU threads (default: all cores; on a busy shared machine 1 can be faster)."
    ),
    reference_outtype: Optional[str] = typer.Option(
        None, "--reference-outtype", help="Output type for converting the reference (default: the model's)."
    ),
    work_dir: Optional[Path] = typer.Option(
        None, "--work-dir", help="Folder for the converted reference (a whole model) and the reference's logits kept "
        "between the models (default: beside MODEL)."
    ),
    max_kl: Optional[float] = typer.Option(None, "--max-kl", help="Exit 1 if the mean KL exceeds this."),
    max_ppl_increase: Optional[float] = typer.Option(
        None, "--max-ppl-increase", help="Exit 1 if perplexity rises more than this many percent."
    ),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full report as JSON here."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --json file."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the memory and disk estimate, then exit."),
) -> None:
    """Compare a GGUF with its reference in llama.cpp: perplexity, KL, task accuracy, speed, KV cache."""
    console = Console(stderr=True)
    options = VerifyOptions(
        ctx=ctx,
        chunks=chunks,
        data=data,
        data_config=data_config,
        data_split=data_split,
        task=task,
        task_config=task_config,
        task_split=task_split,
        task_limit=task_limit,
        task_template=task_template.replace("\\n", "\n"),
        plan=plan,
        source=source,
        parity_windows=parity_windows,
        speed=speed,
        speed_prompt=speed_prompt,
        speed_gen=speed_gen,
        speed_rounds=speed_rounds,
        cache_type=cache_type,
        gpu_layers=gpu_layers,
        threads=threads,
        reference_outtype=reference_outtype,
        work_dir=work_dir,
        max_kl=max_kl,
        max_ppl_increase=max_ppl_increase,
    )
    try:
        if dry_run:
            from ..estimates import print_report
            from .needs import verify_needs

            print_report(Console(), verify_needs(model, reference, options), f"verify {model}")
            return
        if json_out is not None:
            check_writable(json_out, force)
        report = run_verify(model, reference, options, console)
        out = Console()
        report.render(out)
        out.print(
            f"run it with: {llama_cpp_command(model, cache_type)}\n"
            f"Ollama: start the server as {ollama_environment(cache_type)} ollama serve\n({WHY_FLASH_ATTENTION})",
            highlight=False, soft_wrap=True,
        )
        if json_out is not None:
            report.save(json_out, force=force)
    except HopscotchError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    if report.passed is False:
        raise typer.Exit(EXIT_LIMIT)
