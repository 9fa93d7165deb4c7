"""Prompt and generation speed of several GGUFs, measured in one run, interleaved.

On a shared or thermally throttled machine the background load drifts over minutes; a
model measured entirely before another would absorb that drift as a fake speed-up. So
every round runs each model once, in forward order on even rounds and reverse order on
odd ones (A B C, C B A, ...: a linear drift then hits every model equally), and the
median round is reported. Generation feeds the held-out text's next token one position
at a time (logits on), the same work as greedy decoding without sampling noise in what
is decoded.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import HopscotchError
from .runner import LlamaSession

#: Tokens decoded once per model before timing: pages in the weights, builds graphs.
_WARMUP = 16


@dataclass(frozen=True)
class Speed:
    """Median tokens per second over the rounds, and every round's figures."""

    prompt_tps: float
    gen_tps: float
    prompt_tokens: int
    gen_tokens: int
    prompt_runs: tuple[float, ...]
    gen_runs: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt_tokens_per_s": self.prompt_tps,
            "gen_tokens_per_s": self.gen_tps,
            "prompt_tokens": self.prompt_tokens,
            "gen_tokens": self.gen_tokens,
            "prompt_runs": list(self.prompt_runs),
            "gen_runs": list(self.gen_runs),
        }


def measure_speed(
    sessions: Sequence[LlamaSession],
    tokens: Sequence[int],
    *,
    prompt_tokens: int,
    gen_tokens: int,
    rounds: int,
    advance: Callable[[], None] = lambda: None,
) -> list[Speed]:
    """Speeds of each session in ``sessions`` order; ``advance`` is called after each run."""
    n_ctx = min(s.n_ctx for s in sessions)
    if prompt_tokens < 1 or gen_tokens < 1 or rounds < 1:
        raise HopscotchError("speed prompt tokens, generated tokens and rounds must all be at least 1")
    if prompt_tokens + gen_tokens > n_ctx:
        raise HopscotchError(
            f"speed test needs {prompt_tokens} prompt + {gen_tokens} generated tokens, "
            f"more than the context of {n_ctx}; lower --speed-prompt/--speed-gen or raise --ctx"
        )
    need = prompt_tokens + gen_tokens
    if not tokens:
        raise HopscotchError("no tokens to measure speed with")
    feed = [tokens[i % len(tokens)] for i in range(need)]
    for s in sessions:
        s.clear()
        s.timed_decode(feed[:_WARMUP], 0)
    prompt_runs: list[list[float]] = [[] for _ in sessions]
    gen_runs: list[list[float]] = [[] for _ in sessions]
    for r in range(rounds):
        order = range(len(sessions)) if r % 2 == 0 else reversed(range(len(sessions)))
        for i in order:
            p, g = _one_run(sessions[i], feed, prompt_tokens, gen_tokens)
            prompt_runs[i].append(p)
            gen_runs[i].append(g)
            advance()
    return [
        Speed(
            statistics.median(prompt_runs[i]),
            statistics.median(gen_runs[i]),
            prompt_tokens,
            gen_tokens,
            tuple(prompt_runs[i]),
            tuple(gen_runs[i]),
        )
        for i in range(len(sessions))
    ]


def _one_run(session: LlamaSession, feed: Sequence[int], n_prompt: int, n_gen: int) -> tuple[float, float]:
    """(prompt tokens/s, generated tokens/s) for one fresh sequence."""
    session.clear()
    prompt_s = session.timed_decode(feed[:n_prompt], 0)
    gen_s = sum(session.timed_decode([feed[n_prompt + i]], n_prompt + i) for i in range(n_gen))
    return n_prompt / prompt_s, n_gen / gen_s
