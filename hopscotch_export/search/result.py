"""The plan a search state makes: the blocks removed, scales, maps, and the provenance that
reports the run and lets ``--resume`` continue it."""

from __future__ import annotations

from typing import Any

import torch

from ..plan import ModelRef, Plan
from ..torch_plan import BranchScales
from . import distributed
from .greedy import SearchState
from .options import SearchOptions
from .savings import blocks
from .units import BLOCK, kv_heads
from .workspace import Workspace

#: the provenance's ``tool``: ``--resume`` continues only plans it wrote
TOOL = "hopscotch-export search"


def make_plan(
    ref: ModelRef, state: SearchState, scales: BranchScales, maps: dict[int, torch.Tensor], workspace: Workspace,
    options: SearchOptions, candidates: list[int], base_loss: float, *, complete: bool,
    heldout: dict[str, Any] | None = None, curve: dict[str, Any] | None = None,
) -> Plan:  # fmt: skip
    """The plan of ``state`` with ``scales`` and ``maps``: partial (``complete=False``) after
    each greedy step, so an interrupted run can resume; complete, with ``heldout``, at the end."""
    attn, mlp = scales.as_lists()
    steps = state.steps
    seconds = {"steps": sum(s.seconds for s in steps), **workspace.seconds}  # a partial plan: its steps so far
    method = "Hopscotch greedy block selection with branch scales (arXiv 2506.03303)"
    if options.replace != "skip":
        method += "; removed blocks may be replaced by fitted linear maps (llama.cpp deci linear attention)"
    search = {
        "candidates": candidates, "order": state.order, "steps": [s.to_json() for s in steps],
        "blocks": blocks(steps, workspace.stack.config, base_loss),
    }  # fmt: skip
    if options.unit != BLOCK:
        method += "; single KV groups (a KV head and its query heads) are removed as units too"
        n_kv = kv_heads(workspace.stack.config)
        target = options.kv_target(ref.n_layers, n_kv)
        search |= {"unit": options.unit, "kv_target": {"groups": target, "of": ref.n_layers * n_kv,
                   "fraction": target / (ref.n_layers * n_kv)}}  # fmt: skip
    provenance: dict[str, Any] = {
        "tool": TOOL,
        "method": method,
        "options": options.to_json(),
        "data": workspace.data,
        "device": workspace.device,
        "processes": distributed.world_size(),
        "search": search,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    if heldout is not None:
        provenance["heldout"] = heldout
    if curve is not None:
        provenance["curve"] = curve
    removed = state.removed
    linear = sorted(removed.linear)
    arrays = {i: maps[i].detach().cpu().numpy() for i in linear}
    return Plan(
        ref, tuple(sorted(removed.skip)), tuple(attn), tuple(mlp), provenance, complete, tuple(linear), arrays,
        removed.kv_groups,
    )  # fmt: skip
