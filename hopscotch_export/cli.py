"""Command line: ``hopscotch-export MODEL --skips N -o model.gguf`` and the stage subcommands.

The CLI only parses and calls; every stage is a Python function with the same arguments.
User mistakes (:class:`HopscotchError`) print one line and exit 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__, signals
from .converters.outtypes import IMATRIX_ONLY, OUTTYPES
from .errors import HopscotchError
from .evaluation.command import eval_command
from .families import gguf_help
from .plan import ACCEPT_FOREIGN
from .quiet import quiet_libraries
from .search.command import search_command
from .verify.command import verify_command

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Skip the attention blocks a task does not need and ship the model as a GGUF for llama.cpp "
    "and Ollama.\n\nMain job: hopscotch-export MODEL --skips 4 -o model.gguf (search, convert, verify).",
)
console = Console(stderr=True)
out_console = Console()


def _version(value: bool) -> None:
    if value:
        out_console.print(f"hopscotch-export {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Stages: search -> plan.json -> convert -> model.gguf -> verify."""


@app.command("convert")
def convert_command(
    model: str = typer.Argument(
        ..., help=f"Hugging Face folder, hub id, GGUF file ({gguf_help()}) or hub GGUF (org/repo:Q4_K_M)."
    ),
    plan: Optional[Path] = typer.Option(None, "--plan", help="Plan file from `search`; none = no skips."),
    output: Path = typer.Option(..., "-o", "--output", help="The GGUF to write."),
    outtype: str = typer.Option(
        "auto", "--outtype",
        help=f"{'|'.join(OUTTYPES)}. auto keeps a GGUF's types and picks f16/bf16 for Hugging Face weights; "
        f"{', '.join(IMATRIX_ONLY)} need --imatrix.",
    ),
    imatrix: Optional[Path] = typer.Option(
        None, "--imatrix", help="Importance matrix from llama.cpp's llama-imatrix, for a quantized --outtype: "
        "writes f16 and prints the llama-quantize command that uses it (llama-cpp-python cannot pass one)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite the output if it exists."),
    accept_foreign_plan: bool = typer.Option(
        False, ACCEPT_FOREIGN, help="Apply a plan that was searched on other weights (its fingerprint differs "
        "from MODEL's), e.g. a fine-tune of the same base model."
    ),
    name: Optional[str] = typer.Option(None, "--name", help="general.name written into the GGUF."),
    work_dir: Optional[Path] = typer.Option(
        None, "--work-dir", help="Folder for the f16 intermediate of q4_k_m and other llama.cpp types "
        "(default: beside the output)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the memory and disk estimate, then exit."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit of a hub MODEL."),
    allow_incomplete: bool = typer.Option(
        False, "--allow-incomplete", help="Convert the partial plan of an interrupted search as it is."
    ),
) -> None:
    """Fold a plan into the weights and write a `deci` GGUF that llama.cpp and Ollama run."""
    from .converters import convert
    from .plan import load_plan
    from .sources import open_source

    source = open_source(model, revision)
    loaded = load_plan(plan) if plan else None
    if dry_run:
        from .converters.convert import choose_outtype
        from .converters.needs import convert_needs
        from .estimates import print_report

        choice = choose_outtype(source, outtype, imatrix is not None)
        print_report(out_console, convert_needs(source, choice, output, work_dir, loaded), f"convert to {choice.name}")
        return
    summary = convert(
        source, loaded, output, outtype=outtype, force=force, accept_foreign_plan=accept_foreign_plan, name=name,
        console=console, work_dir=work_dir, allow_incomplete=allow_incomplete, imatrix=imatrix,
    )
    print_rows("converted", summary.rows())


@app.command("inspect")
def inspect_command(
    file: Path = typer.Argument(..., help="A plan (.json) or a GGUF file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show what a plan or a GGUF holds: attention layers, scales, types, size, KV bytes/token."""
    from .summary import summarize

    info = summarize(file)
    if as_json:
        out_console.print_json(json.dumps(info))
        return
    rows = []
    for key, value in info.items():
        if isinstance(value, list) and len(value) > 12 and all(isinstance(v, float) for v in value):
            value = " ".join(f"{v:.3g}" for v in value)
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = " ".join(value)  # layer kinds: keep skip linear ...
        elif isinstance(value, dict) and key == "kv_groups":  # layer -> what it keeps
            value = "; ".join(f"layer {i}: {v}" for i, v in value.items())
        elif key.endswith("bytes") or key.endswith("bytes_per_token"):
            value = f"{value:,} B" if value < 2**20 else f"{value / 2**20:,.2f} MiB"
        rows.append((key.replace("_", " "), str(value)))
    print_rows(str(file), rows)


def print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    """A two-column table on stdout."""
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    out_console.print(table)


app.command("search")(search_command)
app.command("verify")(verify_command)
app.command("eval")(eval_command)


def main() -> None:
    """Entry point: subcommands, or the one command when the first word is a model.

    Third-party output is silenced first; SIGTERM stops a run as Ctrl-C does (the search
    keeps its partial plan, no temporary file stays), with exit status 128 + the signal."""
    quiet_libraries()
    with signals.interrupts():
        try:
            args = sys.argv[1:]
            if args and args[0] not in {*(c.name for c in app.registered_commands), "--help", "-h", "--version"}:
                from .export import export_app

                export_app(args=args, prog_name="hopscotch-export")
            else:
                app(prog_name="hopscotch-export")
        except HopscotchError as e:  # an interrupted search says where its partial plan is
            if os.environ.get("RANK", "0") == "0":  # under torchrun every process stops; one says why
                console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            sys.exit(signals.exit_code(2))
        except (KeyboardInterrupt, SystemExit) as e:
            if isinstance(e, SystemExit) and signals.received() is None:
                raise  # an ordinary end; typer ends a KeyboardInterrupt with a silent exit 130
            console.print("[yellow]interrupted[/]")
            sys.exit(signals.exit_code(130))
