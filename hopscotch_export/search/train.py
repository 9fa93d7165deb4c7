"""Training branch scales (and linear maps) with the model frozen, and measuring a plan's loss.

Both run the model inside ``torch_plan.scaled_model``: the scales trained here are exactly
what the converter folds into ``attn_output`` / ``ffn_down``, the maps what it writes as
the linear layers' attention.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from ..decoder_stack import Stack
from ..errors import HopscotchError
from ..torch_plan import BranchScales, scaled_model
from .calibration import Calibration
from .objective import Teacher, batches, loss_sum


class NonFiniteLoss(HopscotchError):
    """The loss became NaN or infinite: the search stops rather than write a broken plan."""


def check_finite(value: float, where: str) -> None:
    if not math.isfinite(value):
        raise NonFiniteLoss(
            f"the loss became {value} {where}; no plan was written. Lower --lr / --final-lr, "
            "or run on --device cpu (float32) if this was bf16"
        )


def train_scales(
    stack: Stack, scales: BranchScales, skip: Iterable[int], calib: Calibration, teacher: Teacher,
    objective: str, *, lr: float, epochs: int, batch_size: int, seed: int, where: str,
    on_batch: Callable[[], None] | None = None, maps: Mapping[int, torch.Tensor] | None = None,
    map_lr: float | None = None, kv_groups: Mapping[int, Sequence[int]] | None = None,
) -> None:  # fmt: skip
    """Adam on every branch scale, ``epochs`` passes over the training data in a seeded
    order, with the linear layers' ``maps`` in the model: trained in place at ``map_lr``,
    or held as they are when it is None; partly cut layers keep only their ``kv_groups``."""
    trained = dict(maps or {}) if map_lr is not None else {}
    groups: list[dict[str, Any]] = [{"params": list(scales.parameters())}]
    if trained:
        groups.append({"params": list(trained.values()), "lr": map_lr})
    opt = torch.optim.Adam(groups, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = calib.train_ids.shape[0]
    for m in trained.values():
        m.requires_grad_(True)
    try:
        with torch.enable_grad(), scaled_model(stack.model, scales, skip, maps, kv_groups):
            for _ in range(epochs):
                for rows in batches(n, batch_size, torch.randperm(n, generator=gen)):
                    logits = stack.forward_logits(calib.train_ids[rows])
                    ids, targets = calib.train_ids[rows], calib.train_targets[rows]
                    total, count = loss_sum(objective, logits, ids, targets, teacher, rows)
                    if count:  # under ``ce`` a chunk of prompts only has nothing to learn from
                        loss = total / count
                        check_finite(float(loss.detach()), where)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                    if on_batch is not None:
                        on_batch()
    finally:  # plain tensors again: they are cloned, sent and saved afterwards
        for m in trained.values():
            m.requires_grad_(False)


@torch.no_grad()
def mean_loss(
    stack: Stack, scales: BranchScales, skip: Iterable[int], calib: Calibration, teacher: Teacher,
    objective: str, *, n_rows: int, batch_size: int, where: str, maps: Mapping[int, torch.Tensor] | None = None,
    kv_groups: Mapping[int, Sequence[int]] | None = None,
) -> float:  # fmt: skip
    """The objective on the first ``n_rows`` training sequences."""
    total, count = 0.0, 0
    with scaled_model(stack.model, scales, skip, maps, kv_groups):
        for rows in batches(n_rows, batch_size):
            logits = stack.forward_logits(calib.train_ids[rows])
            s, c = loss_sum(objective, logits, calib.train_ids[rows], calib.train_targets[rows], teacher, rows)
            total += float(s)
            count += c
    value = total / max(count, 1)
    check_finite(value, where)
    return value
