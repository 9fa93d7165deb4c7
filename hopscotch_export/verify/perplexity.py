"""Perplexity the way llama.cpp's ``llama-perplexity`` computes it.

From tools/perplexity/perplexity.cpp (``perplexity()``, the default mode): the text is
tokenized once, with BOS when the vocabulary adds one; it is cut into non-overlapping
windows of ``n_ctx`` tokens (a trailing partial window is dropped, and at least two
windows are required); when the vocabulary adds BOS, the first token of every window is
*replaced* by BOS; the logits at positions ``n_ctx/2 .. n_ctx-2`` score the next token,
so each window contributes ``n_ctx - 1 - n_ctx/2`` negative log-likelihoods. Perplexity
is ``exp(mean nll)`` and its uncertainty ``ppl * sqrt(var(nll) / (count - 1))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import HopscotchError


def make_windows(
    tokens: Sequence[int], n_ctx: int, bos: int | None, max_windows: int | None = None
) -> list[list[int]]:
    """Non-overlapping windows of ``n_ctx`` tokens, the first one replaced by ``bos`` if given."""
    n_tokens = len(tokens)
    if n_tokens < 2 * n_ctx:
        raise HopscotchError(
            f"the text has {n_tokens} tokens; perplexity with --ctx {n_ctx} needs at least {2 * n_ctx} "
            "(as llama-perplexity does): pass a longer --data or a smaller --ctx"
        )
    count = n_tokens // n_ctx
    if max_windows is not None:
        count = min(count, max_windows)
    windows = []
    for i in range(count):
        window = list(tokens[i * n_ctx : (i + 1) * n_ctx])
        if bos is not None:
            window[0] = bos
        windows.append(window)
    return windows


def first_scored(n_ctx: int) -> int:
    """The first position whose logits are scored: the second half of the window."""
    return n_ctx // 2


def token_nll(logprobs: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """Negative log-likelihood of ``targets[i]`` under the log-probabilities ``logprobs[i]``."""
    return -logprobs[np.arange(len(targets)), np.asarray(targets)]


@dataclass(frozen=True)
class Perplexity:
    """Perplexity over the scored tokens, with llama.cpp's uncertainty estimate."""

    ppl: float
    uncertainty: float
    mean_nll: float
    tokens: int

    @classmethod
    def from_nll(cls, nll: np.ndarray) -> Perplexity:
        count = len(nll)
        mean = float(nll.mean())
        ppl = math.exp(mean)
        var = float((nll**2).mean()) - mean * mean
        unc = ppl * math.sqrt(var / (count - 1)) if var > 0 and count > 1 else 0.0
        return cls(ppl, unc, mean, count)

    def to_json(self) -> dict[str, Any]:
        return {"ppl": self.ppl, "uncertainty": self.uncertainty, "mean_nll": self.mean_nll, "tokens": self.tokens}
