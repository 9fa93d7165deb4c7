"""Training branch scales with the model frozen, and measuring a plan's loss.

Both run the model inside ``torch_plan.scaled_model``: the scales trained here are exactly
what the converter folds into ``attn_output`` / ``ffn_down``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from ..errors import HopscotchError
from ..torch_plan import BranchScales, scaled_model
from .calibration import Calibration
from .objective import Teacher, batches, loss_sum
from ..stack import Stack


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
    on_batch: Callable[[], None] | None = None,
) -> None:  # fmt: skip
    """Adam on every branch scale, ``epochs`` passes over the training data in a seeded order."""
    opt = torch.optim.Adam(scales.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = calib.train_ids.shape[0]
    with torch.enable_grad(), scaled_model(stack.model, scales, skip):
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


@torch.no_grad()
def mean_loss(
    stack: Stack, scales: BranchScales, skip: Iterable[int], calib: Calibration, teacher: Teacher,
    objective: str, *, n_rows: int, batch_size: int, where: str,
) -> float:  # fmt: skip
    """The objective on the first ``n_rows`` training sequences."""
    total, count = 0.0, 0
    with scaled_model(stack.model, scales, skip):
        for rows in batches(n_rows, batch_size):
            logits = stack.forward_logits(calib.train_ids[rows])
            s, c = loss_sum(objective, logits, calib.train_ids[rows], calib.train_targets[rows], teacher, rows)
            total += float(s)
            count += c
    value = total / max(count, 1)
    check_finite(value, where)
    return value
