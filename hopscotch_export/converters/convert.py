"""Source + plan -> a ``deci`` GGUF (``openelm`` for Qwen3) that llama.cpp and Ollama load.

Streaming: tensor infos are computed from shapes alone, the header is written, then each
tensor is loaded, transformed, encoded and written before the next one is touched. The
file is written beside the output under a temporary name and renamed at the end; the f16
intermediate of a llama.cpp-quantized type goes to ``work_dir`` (default: beside the
output, never the system temp folder, which is often a small RAM disk). Free disk space
is checked against the estimate (:mod:`.needs`) before anything is written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGUFWriter
from rich.console import Console

from ..errors import HopscotchError, PlanError
from ..estimates import check, one_line
from ..files import atomic_output, check_work_dir, check_writable, disk_errors, temp_file
from ..plan import Plan
from ..progress import progress_bars
from ..sources import GgufFileSource, ModelSource
from .metadata import copy_gguf_metadata, write_general, write_hparams, write_provenance
from .needs import convert_needs, extra_tensors
from .outtypes import OutputChoice, file_type, resolve_outtype
from .quantize import imatrix_command, llama_quantize
from .tensors import OutTensor, iter_produced, plan_tensors
from .vocab import add_hf_tokenizer


@dataclass
class ConvertSummary:
    """What a conversion did, for the closing table and for callers."""

    out: Path
    outtype: str
    tensors_written: int
    tensors_dropped: int
    bytes_written: int
    seconds: float
    skipped_layers: list[int] = field(default_factory=list)
    linear_layers: list[int] = field(default_factory=list)
    #: layer -> KV groups kept, for layers that keep only some
    kv_groups: dict[int, tuple[int, ...]] = field(default_factory=dict)
    #: tensor name -> how it was re-encoded after losing columns (``Q4_K -> Q5_0``)
    requantized: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("output", str(self.out)),
            ("type", self.outtype),
            ("attention blocks skipped", ", ".join(map(str, self.skipped_layers)) or "none"),
            ("attention blocks made linear", ", ".join(map(str, self.linear_layers)) or "none"),
            *([("KV groups kept", "; ".join(f"layer {i}: {', '.join(map(str, g))}" for i, g in self.kv_groups.items()))]
              if self.kv_groups else []),
            *([("requantized", "; ".join(f"{n} ({how})" for n, how in self.requantized.items()))]
              if self.requantized else []),
            ("tensors written", str(self.tensors_written)),
            ("tensors dropped", str(self.tensors_dropped)),
            ("size", f"{self.bytes_written / 2**20:.1f} MiB"),
            ("time", f"{self.seconds:.1f} s"),
        ]


def convert(
    source: ModelSource,
    plan: Plan | None,
    out: Path,
    *,
    outtype: str = "auto",
    force: bool = False,
    accept_foreign_plan: bool = False,
    name: str | None = None,
    console: Console | None = None,
    work_dir: Path | None = None,
    allow_incomplete: bool = False,
    imatrix: Path | None = None,
) -> ConvertSummary:
    """Write ``source`` with ``plan`` folded in as a ``deci`` GGUF at ``out``.

    ``force`` allows replacing ``out``; ``accept_foreign_plan`` accepts a plan whose
    fingerprint does not match the source; ``work_dir`` holds the f16 intermediate of a
    llama.cpp-quantized type (default: beside ``out``); ``allow_incomplete`` accepts the
    partial plan of an interrupted search. Nothing is left under ``out`` or in
    ``work_dir`` if anything fails, Ctrl-C included. With an importance matrix
    (``imatrix``) a llama.cpp type is written as f16, and the command that finishes it printed.
    """
    console = console or Console(stderr=True)
    out = Path(out)
    check_writable(out, force)
    check_work_dir(work_dir)
    if plan is not None:
        plan.check_model(source.model_ref(), accept_foreign=accept_foreign_plan)
        source.spec.family.check_plan(plan, plan.origin or "the plan")
        if not plan.complete and not allow_incomplete:
            raise _incomplete(plan, source)
    if imatrix is not None and not Path(imatrix).is_file():
        raise HopscotchError(f"--imatrix {imatrix} is not a file; pass the file llama.cpp's llama-imatrix wrote")
    choice = choose_outtype(source, outtype, imatrix is not None)
    needs = convert_needs(source, choice, out, work_dir, plan)
    check(needs)
    console.print(f"convert: estimated need {one_line(needs)}", highlight=False)
    if source.spec.notice:
        console.print(f"[yellow]note:[/] {source.spec.notice}", highlight=False)
    start = time.perf_counter()
    with atomic_output(out, force) as tmp:
        if choice.quantizer is None:
            written, dropped, requantized = _write(source, plan, choice, tmp, name, console)
        else:
            fix = "pass --work-dir on another disk"
            mid = temp_file(out, work_dir, ".f16.tmp", fix)
            try:
                with disk_errors(mid, fix, what="the f16 intermediate"):
                    written, dropped, requantized = _write(source, plan, choice, mid, name, console)
                with progress_bars(console, width=28) as progress:
                    bar = progress.add_task(f"llama.cpp quantizing to {choice.name}", total=written)
                    llama_quantize(mid, tmp, choice.quantizer, on_tensor=lambda: progress.advance(bar))
            finally:
                mid.unlink(missing_ok=True)
        size = tmp.stat().st_size
    if choice.after is not None:
        console.print(
            f"llama-cpp-python cannot pass an importance matrix to llama.cpp's quantizer, so {out} is f16; make "
            f"{choice.after.name.removeprefix('MOSTLY_')} with: {imatrix_command(out, Path(imatrix), choice.after)}",
            highlight=False, soft_wrap=True,
        )  # fmt: skip
    return ConvertSummary(
        out, choice.name, written, dropped, size, time.perf_counter() - start,
        list(plan.skip) if plan else [], sorted(plan.linear) if plan else [],
        dict(plan.kv_groups) if plan else {}, requantized,
    )


def _incomplete(plan: Plan, source: ModelSource) -> PlanError:
    """The refusal of a partial plan: which one, how far its search got, how to finish it."""
    options = plan.provenance.get("options")
    asked = options.get("skips") if isinstance(options, dict) else None
    removed = len(plan.skip) + len(plan.linear)
    progress = f"{removed} of {asked} blocks" if isinstance(asked, int) else f"{removed} block(s)"
    where = plan.origin or "PLAN"
    return PlanError(
        f"{plan.origin or 'the plan'} is partial (complete: false): an interrupted search saved it after choosing "
        f"{progress}; finish it with `hopscotch-export search {source.describe()} --resume {where} -o {where}` "
        "and the same options, or pass --allow-incomplete to convert it as it is"
    )


def choose_outtype(source: ModelSource, outtype: str, imatrix: bool = False) -> OutputChoice:
    """``--outtype`` resolved against the source (``auto`` follows the first tensor's type)."""
    return resolve_outtype(outtype, source.kind, next(source.tensors()).qtype, imatrix)


def _write(
    source: ModelSource, plan: Plan | None, choice: OutputChoice, path: Path, name: str | None, console: Console
) -> tuple[int, int, dict[str, str]]:
    """Stream every tensor into ``path``; returns (written, dropped) counts and the tensors
    re-encoded after a KV-group cut (name -> ``source type -> written type``)."""
    tensors, dropped = plan_tensors(source, plan, choice, extra_tensors(source))

    writer = GGUFWriter(path, source.spec.family.gguf_out)
    write_hparams(writer, source.spec, plan.skip if plan else (), plan.linear if plan else (),
                  plan.kv_groups if plan else None)  # fmt: skip
    write_provenance(writer, plan, source)
    if isinstance(source, GgufFileSource):
        copy_gguf_metadata(writer, source)
    else:
        add_hf_tokenizer(writer, source.path, source.spec.vocab_size)
    write_general(writer, source, name)  # after the vocabulary, which the name must suit
    writer.add_file_type(file_type(choice, {t.name: t.qtype for t in tensors}))
    for t in tensors:
        _add_info(writer, t)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    total = sum(t.nbytes for t in tensors)
    with progress_bars(console, in_bytes=True, width=28) as progress:
        task = progress.add_task("converting", total=total)
        for t, data in iter_produced(tensors):
            progress.update(task, description=t.name)
            writer.write_tensor_data(data)
            progress.advance(task, t.nbytes)
            del data
    writer.close()
    return len(tensors), len(dropped), {t.name: t.requantized for t in tensors if t.requantized}


def _add_info(writer: GGUFWriter, t: OutTensor) -> None:
    # A non-uint8 dtype makes gguf-py take ``shape`` as element shape, not byte shape.
    writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
