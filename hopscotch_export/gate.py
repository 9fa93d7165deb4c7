"""``--skips auto`` in the one command: the count is chosen by the measure that gates it.

The search's curve estimates each count's KL in torch on its own held-out chats; verify
gates the file on llama.cpp's KL to the reference on its own text, with the file quantized.
The two differ (other tokens, another engine, and the largest count under a limit picked
from a noisy estimate is optimistic), so a count the curve put within ``--max-kl`` could
fail verify after its file was written. So the one command converts the counts, from the
search's choice down, one at a time to a temporary file in the work folder, measures each
with verify itself (no speed, task or parity runs), and exports the first that passes;
verify then measures that same file on the same text again, so the gate that chose it
cannot fail it (docs/quality-curve.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .errors import HopscotchError
from .files import temp_folder
from .plan import Plan, load_plan
from .sources import ModelSource
from .verify.options import VerifyOptions

#: what the curve's JSON says the gate's figures are
MEASURE = "verify: llama.cpp, the converted file against the reference on verify's held-out text"


@dataclass(frozen=True)
class Measured:
    """One count as the search estimated it and as verify measured its file."""

    removed: int
    search_kl: float
    search_ppl_increase_pct: float
    kl: float
    ppl_increase_pct: float
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class NoCountPasses(HopscotchError):
    """Not even the smallest count passes the limits as verify measures them."""


#: what verify's KL of a file depends on besides the file: the settings a gated count was measured with
MEASURED_WITH = ("ctx", "chunks", "data", "data_config", "data_split", "cache_type", "reference_outtype")


def file_settings(outtype: str, imatrix: Path | None) -> dict[str, Any]:
    """How each count's file is written (``--imatrix`` writes f16 instead of ``outtype``):
    what any figure measured on those files depends on."""
    return {"outtype": outtype, "imatrix": None if imatrix is None else str(imatrix)}


def gate_settings(verify: VerifyOptions, outtype: str, imatrix: Path | None = None) -> dict[str, Any]:
    """The settings that made the gate's figures: the files' (:func:`file_settings`) and
    verify's text and cache."""
    return {**file_settings(outtype, imatrix), **{k: getattr(verify, k) for k in MEASURED_WITH}}


def gated(plan: Plan, verify: VerifyOptions, outtype: str, imatrix: Path | None = None) -> bool:
    """Whether ``plan``'s count was chosen by verify's measure (or has no curve to choose
    from). A count chosen with other settings is refused: its plans per count are gone, and
    verify could now measure it above the limit that chose it."""
    curve = plan.provenance.get("curve")
    if curve is None or "gate" not in curve:
        return curve is None
    then, now = curve["gate"].get("settings") or {}, gate_settings(verify, outtype, imatrix)
    changed = [f"--{k.replace('_', '-')} {then.get(k)!r} -> {now[k]!r}" for k in now if then.get(k) != now[k]]
    if changed:
        raise HopscotchError(
            f"the plan's count was chosen by verify with other settings ({'; '.join(changed)}); "
            "pass the same settings, or --force to search again"
        )
    return True


@contextlib.contextmanager
def gated_count(
    source: ModelSource, model: str, chosen: Plan, counts: Path, verify: VerifyOptions, *, outtype: str,
    name: str | None, work_dir: Path | None, near: Path, console: Console, imatrix: Path | None = None,
    measured_file: Callable[[int, Path], None] | None = None,
) -> Iterator[tuple[Plan, Path]]:  # fmt: skip
    """The plan of the largest count, from the search's ``chosen`` one down, whose file passes
    verify's limits, and that file (temporary, in ``work_dir`` or beside ``near``: move it
    away inside the block). Each count's plan is read from ``counts/<count>.json``; one
    candidate file exists at a time. ``measured_file(count, path)`` is given each candidate
    once verify has measured it, before it is deleted (``--tasks`` scores it there). Raises
    :class:`NoCountPasses` when none passes."""
    from .converters import convert
    from .verify.measure import run_verify

    curve = chosen.provenance["curve"]
    points = {p["removed"]: p for p in curve["points"]}
    lean = dataclasses.replace(verify, plan=None, source=None, speed=False, task=None)
    measured: list[Measured] = []
    with temp_folder(near, folder=work_dir, fix="pass --work-dir on another disk") as tmp:
        for k in range(curve["chosen"], 0, -1):
            plan = count_plan(counts, k)
            path = tmp / f"{k}.gguf"
            console.print(f"measuring {k} as verify does (the search estimated KL {points[k]['kl']:.4g})")
            convert(
                source, plan, path, outtype=outtype, name=name, console=console, work_dir=work_dir, imatrix=imatrix
            )
            report = run_verify(path, model, lean, console)
            measured.append(Measured(k, points[k]["kl"], points[k]["ppl_increase_pct"],
                                     report.divergence.mean_kl, report.ppl_increase_pct, bool(report.passed)))  # fmt: skip
            if measured_file is not None:
                measured_file(k, path)
            if report.passed:
                break
            path.unlink()
        console.print(gate_table(measured, curve["limits"]))
        best = measured[-1]
        if not best.passed:
            one = "1 block" if curve.get("unit", "block") == "block" else "1 block's worth of KV"
            raise NoCountPasses(
                f"no count of removed blocks passes the limits as verify measures them: {one} gives KL "
                f"{best.kl:.4g} and perplexity {best.ppl_increase_pct:+.1f}% (the search estimated "
                f"{best.search_kl:.4g}); raise --max-kl / --max-ppl-increase; no model file was written"
            )
        if best.removed != curve["chosen"]:
            first = measured[0]
            console.print(
                f"[bold yellow]notice:[/] the search's estimate put {first.removed} within the limits (KL "
                f"{first.search_kl:.4g}), verify measures {first.kl:.4g} on its file: exporting {best.removed} "
                f"(verify {best.kl:.4g})", highlight=False, soft_wrap=True,
            )  # fmt: skip
        gate = {"measure": MEASURE, "counts": [m.to_json() for m in measured], "search_chosen": curve["chosen"],
                "settings": gate_settings(verify, outtype, imatrix)}  # fmt: skip
        curve = {**curve, "chosen": best.removed, "gate": gate}
        yield plan.with_fields(provenance={**plan.provenance, "curve": curve}), path


def count_plan(counts: Path, k: int) -> Plan:
    """The search's plan for ``k`` removed blocks (blocks' worth of KV)."""
    path = counts / f"{k}.json"
    if not path.is_file():
        raise HopscotchError(f"the plan for {k} removed blocks ({path}) is missing; pass --force to search again")
    return load_plan(path)


def gate_table(measured: list[Measured], limits: dict[str, float | None]) -> Table:
    """Each count measured: the search's estimate beside verify's figures, and the verdict."""
    shown = ", ".join(f"{k.replace('_', '-')} {v:g}" for k, v in limits.items() if v is not None)
    t = Table(title=f"counts measured as verify measures them ({shown})")
    for col in ("removed", "KL (search)", "KL (verify)", "ppl rise (search)", "ppl rise (verify)", ""):
        t.add_column(col, justify="right")
    for m in measured:
        t.add_row(
            str(m.removed), f"{m.search_kl:.4f}", f"{m.kl:.4f}", f"{m.search_ppl_increase_pct:+.1f}%",
            f"{m.ppl_increase_pct:+.1f}%", "passes: exported" if m.passed else "fails",
        )  # fmt: skip
    t.caption = "search: torch on the search's held-out chats; verify: llama.cpp on the file, verify's text"
    return t
