"""The search on a loaded workspace, stage after stage: greedy steps (a partial plan saved
after each), the final training (or, with ``--skips auto``, every count's: the curve), the
held-out report, the plan."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from ..plan import ModelRef, Plan
from ..torch_plan import BranchScales
from . import distributed
from .curve import Snapshot
from .curve_training import trace_curve
from .final import evaluate, final_training, original_loss
from .greedy import Progress, SearchState, Selector
from .options import SearchOptions
from .result import make_plan
from .units import replay
from .workspace import Workspace


def search_workspace(
    workspace: Workspace, options: SearchOptions, candidates: list[int], state: SearchState, ref: ModelRef,
    out: Path, progress: Progress, count_plans: Path | None = None,
) -> Plan:  # fmt: skip
    """Greedy steps (saving a partial plan after each), final training, held-out report;
    with ``--skips auto``, a final training and held-out figures for every count (with
    KV-group units: every block's worth of KV) (the curve, in the plan's provenance) and
    the plan of the largest count within the limits; the plan of every count goes to
    ``count_plans`` when given."""
    main = distributed.rank() == 0  # the only process that writes; the others compute the same plan
    base = original_loss(workspace, options)
    #: blocks' worth of KV a resumed run had freed (its curve points up to it start from its scales)
    resumed = state.removed.saved // state.n_kv
    #: the first kept state at or past each block's worth of KV, by KV groups freed: the
    #: curve's points (a resumed run's earlier steps share its current scales and maps)
    snapshots: dict[int, Snapshot] = {}
    if options.curve and state.steps:
        now = Snapshot.of(state)
        for n in range(1, len(state.steps) + 1):
            saved = replay(state.steps[:n], state.n_kv).saved
            if saved // state.n_kv > max((s // state.n_kv for s in snapshots), default=0):
                snapshots[saved] = dataclasses.replace(now, steps=state.steps[:n])

    def on_step(s: SearchState) -> None:
        saved = s.removed.saved
        if options.curve and saved // s.n_kv > max((n // s.n_kv for n in snapshots), default=0):
            snapshots[saved] = Snapshot.of(s)
        if main:
            partial = make_plan(ref, s, s.scales, s.maps, workspace, options, candidates, base, complete=False)
            partial.save(out, force=True)

    def save_count(k: int, at_k: SearchState, final: BranchScales, maps: dict[int, torch.Tensor],
                   measured: dict[str, dict[str, float]]) -> None:  # fmt: skip
        heldout = evaluate(workspace, at_k, final, maps, options.batch_size, measured)
        plan = make_plan(ref, at_k, final, maps, workspace, options, candidates, base, complete=True, heldout=heldout)
        if main:
            plan.save(Path(count_plans) / f"{k}.json", force=True)  # type: ignore[arg-type]

    if state.steps:  # resumed: the partial plan lives at ``out`` from now on
        on_step(state)
    earlier = sum(s.seconds for s in state.steps)  # a resumed auto run: its path's steps only
    selector = Selector(workspace.stack, workspace.calib, workspace.teacher, options, candidates, progress)
    selector.run(state, on_step)
    workspace.seconds["steps"] = earlier + selector.seconds
    t = time.perf_counter()
    curve, measured = None, {}
    if options.curve:
        keep = save_count if count_plans is not None else None
        state, final, maps, curve, measured = trace_curve(workspace, options, state, snapshots, resumed, progress, keep)
    else:
        final, maps = final_training(
            workspace, options, state.skip, state.scales, progress, state.maps, groups=state.kv_groups
        )
    workspace.seconds["final"] = time.perf_counter() - t
    t = time.perf_counter()
    heldout = evaluate(workspace, state, final, maps, options.batch_size, measured)
    workspace.seconds["eval"] = time.perf_counter() - t
    plan = make_plan(
        ref, state, final, maps, workspace, options, candidates, base, complete=True, heldout=heldout, curve=curve
    )
    if main:
        plan.save(out, force=True)
    return plan
