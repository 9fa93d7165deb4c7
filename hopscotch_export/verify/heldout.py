"""Perplexity of each model on the held-out windows, and each candidate's divergence from
the reference, with one llama.cpp model loaded at a time.

The reference goes first: its logits at the scored positions are written to a
:class:`LogitsFile` in the work folder (as ``llama-perplexity --kl-divergence-base``
does), and the reference is freed. Each candidate (the export, and the KV cache
alternatives) is then decoded and compared with those rows, :data:`KL_ROWS` at a time, so
one batch of the candidate's logits and a few rows of the reference's are in memory at
once, however long the text and however many candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .divergence import Divergence, log_softmax, same_top, token_kl
from .llama_model import LlamaSession
from .logits_file import LogitsFile
from .perplexity import Perplexity, first_scored, token_nll

#: Rows of logits turned into float64 log-probabilities at a time (bounds the temporaries).
KL_ROWS = 32


@dataclass(frozen=True)
class Scored:
    """One candidate on the held-out windows."""

    perplexity: Perplexity
    divergence: Divergence


def window_outputs(n_ctx: int) -> list[bool]:
    """Which positions of a window produce scored logits (``n_ctx/2 .. n_ctx-2``)."""
    first = first_scored(n_ctx)
    return [first <= pos <= n_ctx - 2 for pos in range(n_ctx)]


def score_reference(
    reference: LlamaSession, windows: Sequence[Sequence[int]], store: LogitsFile,
    advance: Callable[[], None] = lambda: None,
) -> Perplexity:  # fmt: skip
    """The reference's perplexity; its scored logits are appended to ``store`` for
    :func:`score_candidate`. ``advance`` is called after each window."""
    nll = []
    for logits, targets in _scored(reference, windows, advance):
        store.append(logits)
        nll += [token_nll(log_softmax(logits[rows]), targets[rows]) for rows in _chunks(len(targets))]
    return Perplexity.from_nll(np.concatenate(nll))


def score_candidate(
    candidate: LlamaSession, windows: Sequence[Sequence[int]], store: LogitsFile,
    advance: Callable[[], None] = lambda: None,
) -> Scored:  # fmt: skip
    """The candidate's perplexity and its KL from the reference rows in ``store`` (the same
    windows, scored by :func:`score_reference`)."""
    nll, kls, tops = [], [], []
    row = 0
    for logits, targets in _scored(candidate, windows, advance):
        for rows in _chunks(len(targets)):
            ref_logits = store.read(row + rows.start, rows.stop - rows.start)
            ref_lp, lp = log_softmax(ref_logits), log_softmax(logits[rows])
            nll.append(token_nll(lp, targets[rows]))
            kls.append(token_kl(ref_lp, lp))
            tops.append(same_top(ref_logits, logits[rows]))
        row += len(targets)
    if row != store.rows:
        raise ValueError(f"{candidate.path} scored {row} positions, the reference {store.rows}")
    return Scored(Perplexity.from_nll(np.concatenate(nll)),
                  Divergence.from_values(np.concatenate(kls), np.concatenate(tops)))  # fmt: skip


def _scored(
    session: LlamaSession, windows: Sequence[Sequence[int]], advance: Callable[[], None]
) -> Iterator[tuple[np.ndarray, list[int]]]:
    """Each micro-batch's logits at the scored positions, with the tokens they predict."""
    for window in windows:
        outputs = window_outputs(len(window))
        session.clear()
        for start in range(0, len(window), session.n_batch):
            piece = window[start : start + session.n_batch]
            flags = outputs[start : start + session.n_batch]
            logits = session.decode(piece, start, flags, copy=False)  # read before the next decode
            if len(logits):
                yield logits, [window[pos + 1] for pos in range(start, start + len(piece)) if outputs[pos]]
        advance()


def _chunks(n: int) -> list[slice]:
    return [slice(r, min(r + KL_ROWS, n)) for r in range(0, n, KL_ROWS)]
