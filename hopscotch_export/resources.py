"""What a run will need, from the model's shapes alone, against what the machine has.

Every stage builds a list of :class:`Need` (bytes in RAM, on one GPU, or on the disk that
holds a path) before it reads a weight, prints it when it starts (``--dry-run`` prints it
and stops), and calls :func:`check`, which refuses in one line, naming the need, what is
available and the option that fixes it. A model that does not fit fails in a second,
not after an hour or by the kernel's OOM killer.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .errors import HopscotchError
from .families import ModelSpec

GiB = 2**30

#: Resident memory of a Python process that has imported torch, transformers and
#: llama-cpp-python, before any model (measured 345 MiB), with room for the tokenizer and
#: the interpreter's own growth: part of every RAM estimate.
PROCESS_BASE = 400 * 2**20

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

#: Memory gguf-py's reader keeps for a GGUF file's metadata per vocabulary entry (token,
#: score, type and about one merge, each as numpy objects): measured 160 MiB for SmolLM2's
#: 49152 tokens. Held as long as the source is open, so part of every stage reading a GGUF.
GGUF_METADATA_PER_TOKEN = 3400


def source_overhead(kind: str, vocab_size: int) -> dict[str, int]:
    """Memory that opening a source costs beyond its weights: a GGUF's parsed metadata."""
    return {"GGUF metadata (gguf-py)": GGUF_METADATA_PER_TOKEN * vocab_size} if kind == "gguf" else {}


@dataclass(frozen=True)
class Need:
    """Bytes that one part of a run holds at once in one place."""

    #: ``ram``, ``cuda:N`` or ``disk:PATH`` (the folder a file is written in)
    where: str
    #: what the bytes are for, e.g. ``search (bfloat16)``
    what: str
    #: named parts, added up; the one-line refusal names the largest
    parts: dict[str, int] = field(default_factory=dict)
    #: the option(s) that lower the need, for the refusal
    fix: str = ""

    @property
    def bytes(self) -> int:
        return sum(self.parts.values())


def available(where: str) -> int | None:
    """Free bytes at ``where`` now; None when unknown (no such device, unreadable system)."""
    if where == "ram":
        return _mem_available()
    if where.startswith("cuda:"):
        try:
            import torch

            free, _total = torch.cuda.mem_get_info(int(where.split(":", 1)[1]))
            return int(free)
        except Exception:  # no CUDA build, no such device
            return None
    if where.startswith("disk:"):
        path = Path(where.split(":", 1)[1])
        while not path.exists() and path != path.parent:
            path = path.parent
        return shutil.disk_usage(path).free
    raise ValueError(where)


def _mem_available() -> int | None:
    """``MemAvailable`` from /proc/meminfo (Linux), else the physical total (macOS)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def shortfall(need: Need) -> str | None:
    """The one-line refusal for ``need``, or None when it fits (or the machine cannot tell)."""
    have = available(need.where)
    if have is None or need.bytes <= have:
        return None
    place = "free memory" if need.where == "ram" else (
        f"free on {need.where}" if need.where.startswith("cuda") else f"free disk in {need.where[5:]}"
    )  # fmt: skip
    top = max(need.parts, key=lambda k: need.parts[k]) if need.parts else need.what
    fix = f"; {need.fix}" if need.fix else ""
    return (
        f"{need.what} needs {human(need.bytes)} ({top} {human(need.parts.get(top, need.bytes))}) "
        f"but {human(have)} is {place}{fix}"
    )


def check(needs: Iterable[Need]) -> None:
    """Raise :class:`HopscotchError` (one line) for the first need that does not fit."""
    for need in needs:
        message = shortfall(need)
        if message is not None:
            raise HopscotchError(message)


def fits(needs: Iterable[Need]) -> bool:
    return all(shortfall(n) is None for n in needs)


def table(needs: Iterable[Need], title: str = "estimated need before starting") -> Table:
    """The estimate as a table: where, what, the parts, the total and what is free there."""
    t = Table(title=title)
    for col in ("where", "for", "parts", "total", "available"):
        t.add_column(col, justify="right" if col in ("total", "available") else "left")
    for n in needs:
        have = available(n.where)
        parts = ", ".join(f"{k} {human(v)}" for k, v in n.parts.items())
        t.add_row(n.where, n.what, parts, human(n.bytes), "?" if have is None else human(have))
    return t


def print_report(console: Console, needs: list[Need], title: str) -> bool:
    """``--dry-run``: the estimate as a table and the refusal of each need that would not
    fit; returns whether everything fits."""
    console.print(table(needs, title))
    problems = [m for m in map(shortfall, needs) if m]
    for message in problems:
        console.print(f"[bold red]will not fit:[/] {message}", highlight=False)
    return not problems


def one_line(needs: Iterable[Need]) -> str:
    """``ram 3.1 GiB, cuda:0 17.2 GiB``: the estimate for a progress line."""
    return ", ".join(f"{n.where} {human(n.bytes)}" for n in needs)


def human(n: int | float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def parameter_count(spec: ModelSpec) -> dict[str, int]:
    """Parameters by part: ``embed``, ``head`` (0 when tied), ``layer`` (one decoder layer), ``norm``."""
    h, hd = spec.hidden_size, spec.head_dim
    q, kv = spec.n_heads * hd, spec.n_kv_heads * hd
    attn = h * q + 2 * h * kv + q * h
    if spec.attention_bias:
        attn += q + 2 * kv
    mlp = 3 * h * spec.intermediate_size + (2 * spec.intermediate_size + h if spec.mlp_bias else 0)
    embed = spec.vocab_size * h
    return {
        "embed": embed,
        "head": 0 if spec.tie_embeddings else embed,
        "layer": attn + mlp + 2 * h,
        "attention": attn,
        "norm": h,
    }


def weight_bytes(spec: ModelSpec, dtype: str) -> int:
    """All weights of the model in ``dtype``."""
    p = parameter_count(spec)
    return (p["embed"] + p["head"] + spec.n_layers * p["layer"] + p["norm"]) * DTYPE_BYTES[dtype]
