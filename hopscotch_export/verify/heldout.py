"""Candidates and their reference over the same held-out windows: perplexity of each and
each candidate's divergence from the reference.

Every context advances one micro-batch at a time side by side; a candidate's logits are
scored and dropped before the next candidate decodes, so the reference's batch of logits
and one candidate's are in memory at once, however long the window and however many
candidates (the export, and the KV cache alternatives).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .divergence import Divergence, log_softmax, same_top, token_kl
from .perplexity import Perplexity, first_scored, token_nll
from .runner import LlamaSession

#: Rows of logits turned into float64 log-probabilities at a time.
_ROWS = 64


@dataclass(frozen=True)
class Scored:
    """One candidate on the held-out windows."""

    perplexity: Perplexity
    divergence: Divergence


@dataclass(frozen=True)
class HeldOutResult:
    reference: Perplexity
    #: in the order the candidates were given
    candidates: list[Scored]


def window_outputs(n_ctx: int) -> list[bool]:
    """Which positions of a window produce scored logits (``n_ctx/2 .. n_ctx-2``)."""
    first = first_scored(n_ctx)
    return [first <= pos <= n_ctx - 2 for pos in range(n_ctx)]


def compare_windows(
    reference: LlamaSession,
    candidates: Sequence[LlamaSession],
    windows: Sequence[Sequence[int]],
    advance: Callable[[], None] = lambda: None,
) -> HeldOutResult:
    """Score every window on the reference and each candidate; ``advance`` is called after each window."""
    nll_ref: list[np.ndarray] = []
    nll: list[list[np.ndarray]] = [[] for _ in candidates]
    kls: list[list[np.ndarray]] = [[] for _ in candidates]
    tops: list[list[np.ndarray]] = [[] for _ in candidates]
    sessions = [reference, *candidates]
    step = min(s.n_batch for s in sessions)
    for window in windows:
        outputs = window_outputs(len(window))
        for s in sessions:
            s.clear()
        for start in range(0, len(window), step):
            piece = window[start : start + step]
            flags = outputs[start : start + step]
            if not any(flags):
                for s in sessions:
                    s.decode(piece, start, flags)
                continue
            targets = [window[pos + 1] for pos in range(start, start + len(piece)) if outputs[pos]]
            ref_logits = reference.decode(piece, start, flags)
            chunks = [slice(r, r + _ROWS) for r in range(0, len(targets), _ROWS)]  # bounds float64 temporaries
            nll_ref += [token_nll(log_softmax(ref_logits[rows]), targets[rows]) for rows in chunks]
            for i, s in enumerate(candidates):
                logits = s.decode(piece, start, flags)
                for rows in chunks:  # the reference's log-probabilities again: cheaper than keeping them
                    ref_lp, lp = log_softmax(ref_logits[rows]), log_softmax(logits[rows])
                    nll[i].append(token_nll(lp, targets[rows]))
                    kls[i].append(token_kl(ref_lp, lp))
                    tops[i].append(same_top(ref_logits[rows], logits[rows]))
                del logits  # before the next candidate's arrive
        advance()
    return HeldOutResult(
        Perplexity.from_nll(np.concatenate(nll_ref)),
        [
            Scored(Perplexity.from_nll(np.concatenate(n)), Divergence.from_values(np.concatenate(k), np.concatenate(t)))
            for n, k, t in zip(nll, kls, tops)
        ],
    )
