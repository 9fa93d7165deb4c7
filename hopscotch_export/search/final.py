"""The search's last stages: the final training of the chosen blocks' scales (and maps) and
the held-out report."""

from __future__ import annotations

import copy

import torch

from ..torch_plan import BranchScales, scaled_model
from .greedy import Progress, SearchState
from .objective import batches, heldout_metrics
from .options import SearchOptions
from .train import mean_loss, train_scales
from .workspace import Workspace


def final_training(
    workspace: Workspace, options: SearchOptions, skip: list[int], scales: BranchScales, progress: Progress,
    maps: dict[int, torch.Tensor] | None = None, label: str = "final training",
    groups: dict[int, tuple[int, ...]] | None = None,
) -> tuple[BranchScales, dict[int, torch.Tensor]]:  # fmt: skip
    """The longer training of every scale for the chosen blocks, with the linear layers'
    ``maps`` held as the steps left them; then, when there are maps, ``options.map_epochs``
    of the maps trained with the scales; partly cut layers keep their KV ``groups``.
    ``scales`` and ``maps`` are left as they are.

    Two phases rather than one joint run: a plan without maps trains exactly as before,
    ``--linear-epochs 0`` gives the maps as the greedy steps fitted and trained them, and
    the maps' phase starts from scales already settled on the chosen blocks."""
    final = copy.deepcopy(scales)
    maps = {i: m.clone() for i, m in (maps or {}).items()}
    map_epochs = options.map_epochs if maps else 0
    progress.begin(label, (options.final_epochs + map_epochs) * len(batches(options.samples, options.batch_size)))
    stack, calib, teacher, objective = workspace.stack, workspace.calib, workspace.teacher, options.objective
    train_scales(
        stack, final, skip, calib, teacher, objective, lr=options.final_lr, epochs=options.final_epochs,
        batch_size=options.batch_size, seed=options.seed * 1_000_003, where="in the final training",
        on_batch=progress.advance, maps=maps, kv_groups=groups,
    )  # fmt: skip
    if map_epochs:
        train_scales(
            stack, final, skip, calib, teacher, objective, lr=options.final_lr, epochs=map_epochs,
            batch_size=options.batch_size, seed=options.seed * 1_000_003 - 1,
            where="in the final training of the linear maps", on_batch=progress.advance, maps=maps,
            map_lr=options.map_lr, kv_groups=groups,
        )  # fmt: skip
    return final, maps


def original_loss(workspace: Workspace, options: SearchOptions) -> float:
    """The original model's objective on the training sequences, from which the first
    block's cost is counted: 0 for ``kl`` (the teacher is this model), computed for ``ce``."""
    if options.objective == "kl":
        return 0.0
    stack = workspace.stack
    ones = BranchScales(stack.n_layers).to(stack.device)
    return mean_loss(
        stack, ones, [], workspace.calib, workspace.teacher, options.objective, n_rows=options.samples,
        batch_size=options.batch_size, where="of the original model",
    )  # fmt: skip


def evaluate(
    workspace: Workspace, state: SearchState, scales: BranchScales, maps: dict[int, torch.Tensor], batch_size: int,
    measured: dict[str, dict[str, float]] | None = None,
) -> dict[str, dict[str, float]]:
    """Held-out metrics of the original model, of the removals alone (the maps as the steps
    left them, scales = 1), and of the plan (final scales and maps); those in ``measured``
    (the quality curve's) are not measured again."""
    ones = BranchScales(*scales.attn.shape).to(scales.attn.device)  # (layers,) or (layers, hidden)
    groups = state.kv_groups
    runs = {
        "original": lambda: heldout_metrics(workspace.stack, workspace.calib, workspace.teacher, batch_size),
        "no_scales": lambda: plan_metrics(workspace, state.skip, ones, batch_size, state.maps, groups),
        "final": lambda: plan_metrics(workspace, state.skip, scales, batch_size, maps, groups),
    }
    measured = measured or {}
    return {key: measured[key] if key in measured else run() for key, run in runs.items()}


def plan_metrics(
    workspace: Workspace, skip: list[int], scales: BranchScales, batch_size: int,
    maps: dict[int, torch.Tensor] | None = None, groups: dict[int, tuple[int, ...]] | None = None,
) -> dict[str, float]:  # fmt: skip
    """Held-out metrics of the model with ``skip`` skipped, ``maps`` in place, partly cut
    layers keeping their KV ``groups``, and ``scales`` applied."""
    with scaled_model(workspace.stack.model, scales, skip, maps, groups):
        return heldout_metrics(workspace.stack, workspace.calib, workspace.teacher, batch_size)
