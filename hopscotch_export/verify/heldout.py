"""Model and reference over the same held-out windows: perplexity of each and their divergence.

Both contexts advance one micro-batch at a time side by side, so only one batch of
logits per model is in memory however long the window is.
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
class HeldOutResult:
    reference: Perplexity
    model: Perplexity
    divergence: Divergence


def window_outputs(n_ctx: int) -> list[bool]:
    """Which positions of a window produce scored logits (``n_ctx/2 .. n_ctx-2``)."""
    first = first_scored(n_ctx)
    return [first <= pos <= n_ctx - 2 for pos in range(n_ctx)]


def compare_windows(
    reference: LlamaSession,
    model: LlamaSession,
    windows: Sequence[Sequence[int]],
    advance: Callable[[], None] = lambda: None,
) -> HeldOutResult:
    """Score every window on both models; ``advance`` is called after each window."""
    nll_ref: list[np.ndarray] = []
    nll_model: list[np.ndarray] = []
    kls: list[np.ndarray] = []
    tops: list[np.ndarray] = []
    step = min(reference.n_batch, model.n_batch)
    for window in windows:
        outputs = window_outputs(len(window))
        reference.clear()
        model.clear()
        for start in range(0, len(window), step):
            piece = window[start : start + step]
            flags = outputs[start : start + step]
            if not any(flags):
                reference.decode(piece, start, flags)
                model.decode(piece, start, flags)
                continue
            targets = [window[pos + 1] for pos in range(start, start + len(piece)) if outputs[pos]]
            ref_logits = reference.decode(piece, start, flags)
            logits = model.decode(piece, start, flags)
            for r in range(0, len(targets), _ROWS):  # bounds the float64 temporaries
                rows = slice(r, r + _ROWS)
                ref_lp, lp = log_softmax(ref_logits[rows]), log_softmax(logits[rows])
                nll_ref.append(token_nll(ref_lp, targets[rows]))
                nll_model.append(token_nll(lp, targets[rows]))
                kls.append(token_kl(ref_lp, lp))
                tops.append(same_top(ref_logits[rows], logits[rows]))
        advance()
    return HeldOutResult(
        Perplexity.from_nll(np.concatenate(nll_ref)),
        Perplexity.from_nll(np.concatenate(nll_model)),
        Divergence.from_values(np.concatenate(kls), np.concatenate(tops)),
    )
