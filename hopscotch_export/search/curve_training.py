"""The quality curve's stage (``--skips auto``): a final training and held-out figures for
every count of removed blocks, and the largest count within the limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import HopscotchError
from ..torch_plan import BranchScales
from .curve import Point, Snapshot, at_least, curve_json, point
from .final import final_training, plan_metrics
from .greedy import Progress, SearchState
from .objective import heldout_metrics
from .options import SearchOptions
from .units import BLOCK
from .workspace import Workspace

#: given every count as it is trained: count, state, scales, maps, held-out metrics
KeepCount = Callable[[int, SearchState, BranchScales, dict[int, torch.Tensor], dict[str, dict[str, float]]], None]


class NoCountWithinLimits(HopscotchError):
    """``--skips auto``: even one removed block exceeds the limits; carries the curve."""

    def __init__(self, curve: dict[str, Any], message: str) -> None:
        super().__init__(message)
        self.curve = curve


def trace_curve(
    workspace: Workspace, options: SearchOptions, state: SearchState, snapshots: dict[int, Snapshot], resumed: int,
    progress: Progress, keep: KeepCount | None = None,
) -> tuple[SearchState, BranchScales, dict[int, torch.Tensor], dict[str, Any], dict[str, dict[str, float]]]:
    """A final training and held-out figures for every count of removed blocks (with
    KV-group units: for the kept state with the fewest groups freed that frees each count's
    worth of KV, :func:`curve.at_least`); the state
    of the largest count within the limits with its trained scales and maps, the curve, and
    the held-out metrics already measured (the original model's and that count's plan's).
    ``keep`` is given every count as it is trained (count, state, scales, maps, those
    metrics). Raises :class:`NoCountWithinLimits`, carrying the curve, if no
    count is within."""
    original = heldout_metrics(workspace.stack, workspace.calib, workspace.teacher, options.batch_size)
    points: list[Point] = []
    best: tuple[SearchState, BranchScales, dict[int, torch.Tensor], dict[str, float]] | None = None
    for k in range(1, options.skips + 1):
        kept = at_least(snapshots, k * state.n_kv)
        if kept is None:
            break
        steps = kept.steps
        scales, maps = kept.restore(state.scales)
        at_k = SearchState(scales, steps, maps, state.n_kv)
        final, trained = final_training(
            workspace, options, at_k.skip, scales, progress, maps, label=f"final training {k}", groups=at_k.kv_groups
        )
        metrics = plan_metrics(workspace, at_k.skip, final, options.batch_size, trained, at_k.kv_groups)
        points.append(point(steps, metrics, original, workspace.stack.config, options, k))
        if keep is not None:
            keep(k, at_k, final, trained, {"original": original, "final": metrics})
        if points[-1].within:
            best = at_k, final, trained, points[-1].metrics
    curve = curve_json(points, original, options, resumed)
    if best is None:
        first = points[0]
        one = "1 block" if options.unit == BLOCK else "1 block's worth of KV"
        raise NoCountWithinLimits(
            curve,
            f"no count of removed blocks stays within the limits: {one} gives held-out KL {first.metrics['kl']:.4f} "
            f"and perplexity {first.ppl_increase_pct:+.1f}%; raise --max-kl / --max-ppl-increase",
        )
    at_k, final, trained, metrics = best
    return at_k, final, trained, curve, {"original": original, "final": metrics}
