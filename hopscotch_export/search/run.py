"""``run_search``: model + options -> plan file, resumable, as the CLI and the one command call it.

The stages, each in its module: the outputs and the plan to resume (``resume.py``), the model,
its calibration data and the teacher (``workspace.py``), then on that workspace the greedy
steps, the final training or the curve's, and the held-out report (``stages.py``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import HopscotchError
from ..files import write_text_atomic
from ..plan import Plan
from ..progress import progress_bars
from ..sources import ModelSource
from . import distributed
from .curve import curve_table
from .curve_plot import plot_curve
from .curve_training import NoCountWithinLimits
from .display import RichSteps, Silent, summary_tables
from .greedy import SearchState
from .options import SearchOptions, device_name
from .resume import check_outputs, initial_state
from .stages import search_workspace
from .units import BLOCK
from .workspace import prepare


class SearchInterrupted(HopscotchError):
    """Ctrl-C: the partial plan of the last finished step is on disk."""


class ProcessFailed(SearchInterrupted):
    """Under torchrun, another process of the search died, or torchrun stopped this one."""


def run_search(
    source: ModelSource,
    options: SearchOptions,
    out: Path,
    *,
    resume: Path | None = None,
    force: bool = False,
    console: Console | None = None,
    curve_out: Path | None = None,
    resume_hint: str | None = None,
    count_plans: Path | None = None,
) -> Plan:
    """Search ``options.skips`` attention blocks to remove (skip, or replace by linear maps
    per ``options.replace``) and their scales; write the plan to ``out``.

    A partial plan (``complete=False``) is written after every greedy step; ``resume``
    continues one. Raises :class:`HopscotchError` for anything the user can fix. Under
    torchrun every process calls this with the same arguments: they share each step's
    candidates, and rank 0 alone writes the files and reports. With ``--skips auto`` the
    quality curve goes to ``curve_out`` (default ``<plan>.curve.json``) and a plot beside it
    (``.png``), also when no count is within the limits. ``resume_hint`` is how an
    interrupted run is continued (default: ``--resume OUT``), for callers with their own way.
    ``count_plans`` (a folder, ``--skips auto``) receives the complete plan of every count
    on the curve as ``<count>.json``: the one command measures them as verify does before
    it chooses (docs/quality-curve.md).
    """
    out = Path(out)
    ref = source.model_ref()
    options = options.for_spec(source.spec)
    candidates = options.candidates(ref.n_layers)
    curves = curve_paths(out, curve_out) if options.curve else ()
    state: SearchState | None = None
    with distributed.session(cuda=device_name(options.device) == "cuda"):
        main = distributed.rank() == 0
        console = (console or Console(stderr=True)) if main else Console(quiet=True)
        if not main:  # nor the libraries' bars
            from transformers.utils import logging

            logging.disable_progress_bar()
        try:
            prior, data_file = distributed.shared(lambda: check_outputs(out, resume, ref, options, force, curves))
            workspace = prepare(source, options, console, data_file=data_file, save_data=prior is None, force=force)
            if prior is not None and prior.provenance["data"]["hash"] != workspace.calib.hash:
                raise HopscotchError(
                    f"the calibration data differs from the run in {resume} (hash "
                    f"{prior.provenance['data']['hash']} vs {workspace.calib.hash}); "
                    "resume with the same --data options"
                )
            if data_file is not None:
                workspace.data["file"] = os.path.relpath(data_file, out.parent)
            state = initial_state(prior, ref, options, workspace.stack)
            with progress_bars(console) as bars:
                progress = RichSteps(bars) if main else Silent()
                try:
                    plan = search_workspace(workspace, options, candidates, state, ref, out, progress, count_plans)
                except NoCountWithinLimits as e:
                    if main:
                        write_curve(e.curve, curves, console, force)
                    raise
        except KeyboardInterrupt as e:  # Ctrl-C, or another process of a distributed search is gone
            raise _interrupted(e, state, out, resume_hint or f"continue with --resume {out}") from None
    if main:
        for table in summary_tables(plan.provenance["search"]["steps"], plan.provenance["heldout"], options.objective):
            console.print(table)
        if options.curve:
            write_curve(plan.provenance["curve"], curves, console, force)
        linear = f", linear maps for layers {list(plan.linear)}" if plan.linear else ""
        cut = f", KV groups kept {dict(plan.kv_groups)}" if plan.kv_groups else ""
        saving = f" ({plan.kv_saving():.1%} of the KV cache)" if options.unit != BLOCK else ""
        console.print(f"skip attention of layers {list(plan.skip)}{linear}{cut}{saving}; plan written to {out}")
    return plan


def curve_paths(out: Path, curve_out: Path | None) -> tuple[Path, Path]:
    """The curve's JSON and plot: ``curve_out`` (default ``<plan>.curve.json``) and its ``.png``."""
    json_path = Path(curve_out) if curve_out is not None else out.with_name(out.stem + ".curve.json")
    return json_path, json_path.with_suffix(".png")


def write_curve(curve: dict[str, Any], paths: tuple[Path, ...], console: Console, force: bool) -> None:
    """The curve as a table, and its JSON and plot files."""
    json_path, png_path = paths
    console.print(curve_table(curve))
    write_text_atomic(json_path, json.dumps(curve, indent=1) + "\n", force=force)
    plot_curve(curve, png_path, force=force)
    console.print(f"quality curve written to {json_path} and {png_path}", highlight=False)


def _interrupted(e: KeyboardInterrupt, state: SearchState | None, out: Path, hint: str) -> SearchInterrupted:
    """The error for Ctrl-C or a lost process: where the partial plan is, how to continue."""
    error, what = SearchInterrupted, "interrupted"
    if isinstance(e, distributed.Stopped):
        error, what = ProcessFailed, "a process of the distributed search failed or was stopped"
    if state is not None and state.steps:
        return error(f"{what}; the plan after {len(state.steps)} step(s) is in {out}, {hint}")
    return error(f"{what} before the first step finished; nothing was saved")
