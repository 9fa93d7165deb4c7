"""``hopscotch-export search``: parse options, call :func:`run_search`. Nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from ..errors import HopscotchError
from ..estimates import print_report
from ..sources import ModelSource, open_source
from .greedy import RESCORE
from .options import CPU_BUDGET, MAX_SKIPS, SearchOptions
from .placement import Placement, plan_placement
from .run import run_search

#: defaults come from SearchOptions, the one place that holds them
DEFAULTS = SearchOptions(skips=1)


def _budget(name: str) -> str:
    """Help text naming a budget option's GPU and CPU defaults."""
    return f"(default: {getattr(DEFAULTS, name)} on a GPU, {CPU_BUDGET[name]} on CPU)"



def search_command(
    model: str = typer.Argument(..., help="Hugging Face folder, hub id (org/name), .gguf file or bundled:smollm2"),
    skips: Optional[str] = typer.Option(
        None, "--skips", help="attention blocks to remove (skip, or replace: see --replace; with --unit group or "
        "auto, blocks' worth of KV cache); auto: the most within --max-kl / --max-ppl-increase, trying up to "
        "--max-skips, with the quality curve of every count"
    ),
    output: Path = typer.Option(..., "-o", "--output", help="plan file to write (JSON)"),
    granularity: str = typer.Option(
        DEFAULTS.granularity, help="layer: one scale per branch; channel: one per hidden unit"
    ),
    objective: str = typer.Option(
        DEFAULTS.objective, help="kl: match the original model; ce: cross-entropy on the data"
    ),
    shortlist: str = typer.Option(
        str(DEFAULTS.shortlist),
        help="candidates trained per step after training-free scoring; 'all' = the paper's procedure",
    ),
    protect: str = typer.Option("", help="comma-separated layers whose attention is kept (layer 0 always is)"),
    data: Optional[str] = typer.Option(
        None, help="HF dataset name or .txt/.jsonl/.json/.parquet file; default: the model answers built-in prompts"
    ),
    data_config: Optional[str] = typer.Option(None, help="HF dataset configuration"),
    data_split: str = typer.Option(DEFAULTS.data_split, help="HF dataset split"),
    data_field: Optional[str] = typer.Option(None, help="column with text or chat messages (default: auto)"),
    samples: Optional[int] = typer.Option(None, help=f"training sequences {_budget('samples')}"),
    heldout: Optional[int] = typer.Option(None, help=f"held-out sequences, scored at the end {_budget('heldout')}"),
    seq_len: Optional[int] = typer.Option(None, help=f"tokens per sequence {_budget('seq_len')}"),
    score_samples: Optional[int] = typer.Option(
        None, help="training sequences that screen every candidate untrained (default: a quarter of --samples); "
        f"the best {RESCORE} x --shortlist are then scored on all of them"
    ),
    batch_size: int = typer.Option(DEFAULTS.batch_size, help="sequences per optimizer step / forward batch"),
    lr: float = typer.Option(DEFAULTS.lr, help="learning rate of the brief per-candidate training"),
    epochs: int = typer.Option(DEFAULTS.epochs, help="epochs of the brief per-candidate training"),
    final_lr: float = typer.Option(DEFAULTS.final_lr, help="learning rate of the final training"),
    final_epochs: Optional[int] = typer.Option(
        None, help=f"epochs of the final training {_budget('final_epochs')}"
    ),
    seed: int = typer.Option(DEFAULTS.seed, help="seed for data generation and training order"),
    device: str = typer.Option(
        DEFAULTS.device, help="auto, cuda, mps or cpu; cuda spreads a model larger than one GPU over all"
    ),
    dtype: str = typer.Option(
        DEFAULTS.dtype,
        help="auto, float32, bfloat16 or float16; auto: bfloat16 on a GPU, on CPU float32 if it fits, else bfloat16",
    ),
    max_new_tokens: Optional[int] = typer.Option(
        None, help=f"answer length when the model writes its calibration data {_budget('max_new_tokens')}"
    ),
    replace: str = typer.Option(
        DEFAULTS.replace,
        help="what takes a removed block's place: skip (nothing), linear (a fitted n_embd x n_embd map "
        "of its normalised input, no KV cache) or auto (whichever loses less, each step)",
    ),
    linear_epochs: Optional[int] = typer.Option(
        None, help="epochs training the linear maps with the scales after the final training; 0 keeps the maps "
        "as the steps left them (default: --final-epochs)"
    ),
    max_linear: Optional[int] = typer.Option(None, help="at most this many blocks become linear maps (default: no bound)"),
    map_lr: float = typer.Option(DEFAULTS.map_lr, help="learning rate of the linear maps (brief and final training)"),
    unit: str = typer.Option(
        DEFAULTS.unit, help="what each greedy step removes: block (a whole attention block), group (one KV group: a KV "
        "head and its query heads; a layer losing its last is skipped) or auto (either: the search keeps the best "
        "state at every KV saving, and a block competes with groups freeing as much); Qwen3 takes group only, and every layer keeps one"
    ),
    kv_saving: Optional[float] = typer.Option(
        None, "--kv-saving", help="instead of --skips: the fraction of the KV cache to remove (0.25: a quarter); "
        "steps continue until it is reached, none overshooting it with --unit group or auto"
    ),
    max_skips: int = typer.Option(
        MAX_SKIPS, help="--skips auto: the most blocks tried (lowered to what the model offers)"
    ),
    max_kl: Optional[float] = typer.Option(
        None, "--max-kl", help="--skips auto: the most held-out KL to the original model the plan may have "
        "(the one command also checks the exported file against it)"
    ),
    max_ppl_increase: Optional[float] = typer.Option(
        None, "--max-ppl-increase", help="--skips auto: the most held-out perplexity rise (percent) the plan may "
        "have (the one command also checks the exported file against it)"
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="CPU threads for torch (the one command: for llama.cpp's verify too; default: all "
        "cores; on a busy shared machine fewer can be faster)"
    ),
    revision: Optional[str] = typer.Option(
        None, "--revision", help="branch, tag or commit of a hub MODEL (default: main)"
    ),
    resume: Optional[Path] = typer.Option(None, help="continue an interrupted search from its partial plan"),
    force: bool = typer.Option(False, "--force", help="overwrite existing output files"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the memory estimate and placement, then exit"),
) -> None:
    """Choose attention blocks to remove and train the branch scales (and linear maps) that repair the drift."""
    options = SearchOptions.sized_for_device(
        **parse_skips(skips, max_skips, kv_saving), max_kl=max_kl, max_ppl_increase=max_ppl_increase, granularity=granularity, objective=objective, shortlist=parse_shortlist(shortlist),
        protect=parse_layers(protect), data=data, data_config=data_config, data_split=data_split,
        data_field=data_field, samples=samples, heldout=heldout, seq_len=seq_len, score_samples=score_samples,
        batch_size=batch_size, lr=lr, epochs=epochs, final_lr=final_lr, final_epochs=final_epochs, seed=seed,
        device=device, dtype=dtype, max_new_tokens=max_new_tokens, replace=replace, linear_epochs=linear_epochs,
        max_linear=max_linear, map_lr=map_lr, unit=unit, threads=threads,
    )  # fmt: skip
    source = open_source(model, revision)
    if dry_run:
        print_estimate(source, options)
        return
    run_search(source, options, output, resume=resume, force=force)


def print_estimate(source: ModelSource, options: SearchOptions, console: Console | None = None) -> Placement:
    """The search's estimate as a table (``--dry-run``), with the refusal if it would not fit."""
    console = console or Console()
    # the budget as the search will run it: --kv-saving sets the blocks' worth (and the maps' bytes),
    # and the family refuses what it cannot write (Qwen3: whole blocks)
    placement = plan_placement(source.spec, options.for_spec(source.spec), source_kind=source.kind)
    print_report(console, placement.needs, f"search: {source.describe()} on {placement.describe()}")
    if placement.notice:
        console.print(f"[yellow]note:[/] {placement.notice}", highlight=False)
    return placement


def parse_skips(text: str | None, max_skips: int, kv_saving: float | None = None) -> dict[str, Any]:
    """``--skips N``, ``--skips auto`` (a curve up to ``max_skips``) or ``--kv-saving F``,
    as SearchOptions fields."""
    if kv_saving is not None:
        if text is not None:
            raise HopscotchError("--kv-saving and --skips are alternatives; give one of them")
        return {"skips": 0, "curve": False, "kv_saving": kv_saving}
    if text is None:
        raise HopscotchError(
            "say how much to remove: --skips N (or auto), or --kv-saving F (a fraction of the KV cache)"
        )
    if text.strip().lower() == "auto":
        return {"skips": max_skips, "curve": True}
    try:
        return {"skips": int(text), "curve": False}
    except ValueError:
        raise HopscotchError(f"--skips must be a number or 'auto', got {text!r}") from None


def parse_shortlist(text: str) -> int | None:
    if text.strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise HopscotchError(f"--shortlist must be a number or 'all', got {text!r}") from None


def parse_layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted({int(p) for p in text.split(",") if p.strip()}))
    except ValueError:
        raise HopscotchError(f"--protect takes comma-separated layer numbers like 1,2,29; got {text!r}") from None
