"""Parity: the GGUF against the torch model with the plan applied, on the same tokens.

This checks the conversion (skips dropped, scales folded, q/k permuted), not the quality
of the plan: a correct file differs from torch only by llama.cpp's quantized arithmetic
(mean KL around 1e-3 or less; DESIGN.md section 2), a wrong fold by orders of magnitude more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HopscotchError
from ..plan import load_plan
from ..sources import open_source
from .divergence import log_softmax, same_top, token_kl
from .runner import LlamaSession

#: Tokens per window compared: conversion bugs show at any length, and torch's full
#: logits (tokens x vocabulary) for a long window would take gigabytes.
PARITY_TOKENS = 512


@dataclass(frozen=True)
class Parity:
    """Mean KL(torch || GGUF) and top-1 agreement over every position of the windows."""

    source: str
    plan: str
    mean_kl: float
    same_top: float
    tokens: int

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "plan": self.plan,
            "mean_kl": self.mean_kl,
            "same_top": self.same_top,
            "tokens": self.tokens,
        }


def torch_parity(
    session: LlamaSession,
    source_spec: str | Path,
    plan_path: Path,
    windows: Sequence[Sequence[int]],
    advance: Callable[[], None] = lambda: None,
) -> Parity:
    """Compare ``session`` with ``source`` under ``plan`` on the first ``PARITY_TOKENS`` of each window."""
    import torch

    from ..torch_plan import apply_plan

    plan = load_plan(plan_path)
    source = open_source(source_spec)
    ref = source.model_ref()
    plan.check_model(ref, force=True)  # shape checks; the fingerprint gets its own message
    if plan.model.fingerprint != ref.fingerprint:
        raise HopscotchError(
            f"--plan {plan_path} was made for other weights than --source {source_spec} "
            "(fingerprint mismatch); pass the model the plan was searched on"
        )
    model = source.load_torch(torch.float32)
    model.eval()
    kls, tops = [], []
    with apply_plan(model, plan), torch.no_grad():
        for full in windows:
            window = list(full[:PARITY_TOKENS])
            expected = model(torch.tensor([window])).logits[0].float().numpy()
            got = _all_logits(session, window)
            if expected.shape[1] < got.shape[1]:
                raise HopscotchError(
                    f"--source has a vocabulary of {expected.shape[1]}, the GGUF {got.shape[1]}: not the same model"
                )
            expected = expected[:, : got.shape[1]]  # torch may pad the vocabulary
            for r in range(0, len(got), 64):  # bounds the float64 temporaries
                rows = slice(r, r + 64)
                kls.append(token_kl(log_softmax(expected[rows]), log_softmax(got[rows])))
                tops.append(same_top(expected[rows], got[rows]))
            advance()
    kl, top = np.concatenate(kls), np.concatenate(tops)
    return Parity(str(source_spec), str(plan_path), float(kl.mean()), float(top.mean()), len(kl))


def _all_logits(session: LlamaSession, window: Sequence[int]) -> np.ndarray:
    session.clear()
    parts = []
    for start in range(0, len(window), session.n_batch):
        piece = window[start : start + session.n_batch]
        parts.append(session.decode(piece, start, [True] * len(piece)))
    return np.concatenate(parts)
