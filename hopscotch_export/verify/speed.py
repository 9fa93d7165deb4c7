"""Prompt and generation speed of several GGUFs, measured in one run, interleaved.

On a shared or thermally throttled machine the background load drifts over minutes; a
model measured entirely before another would absorb that drift as a fake speed-up. So
every round runs each model once, in forward order on even rounds and reverse order on
odd ones (A B C, C B A, ...: a linear drift then hits every model equally), and the
median round is reported. A model may take part in fewer rounds (the first ones) than
the others: verify's KV cache alternatives do, to keep its runtime down. Generation feeds
the held-out text's next token one position at a time (logits on), the same work as
greedy decoding without sampling noise in what is decoded.

By default every run decodes its prompt from scratch. With ``prompt_once`` each session
decodes the prompt once (its one prompt figure, in every run) and each run drops the
cache back to the prompt and generates again at the same depth: at long contexts, where a
prompt costs minutes and generation seconds, many more generation rounds fit.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..errors import HopscotchError
from .llama_model import LlamaSession, Timing

#: Tokens decoded once per model before timing: pages in the weights, builds graphs.
_WARMUP = 16


class Run(NamedTuple):
    """Tokens per second of one run: prompt and generation, by wall clock and by CPU time."""

    prompt_tps: float
    gen_tps: float
    prompt_cpu_tps: float
    gen_cpu_tps: float


@dataclass(frozen=True)
class Speed:
    """Median tokens per second over the rounds (wall clock and per CPU-second), and every run.

    The ``*_cpu_tps`` figures divide by the CPU time this process used: steadier than the
    wall clock when other programs share the cores; meaningless when a GPU does the work.
    """

    prompt_tps: float
    gen_tps: float
    prompt_cpu_tps: float
    gen_cpu_tps: float
    prompt_tokens: int
    gen_tokens: int
    runs: tuple[Run, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt_tokens_per_s": self.prompt_tps,
            "gen_tokens_per_s": self.gen_tps,
            "prompt_tokens_per_cpu_s": self.prompt_cpu_tps,
            "gen_tokens_per_cpu_s": self.gen_cpu_tps,
            "prompt_tokens": self.prompt_tokens,
            "gen_tokens": self.gen_tokens,
            "runs": [r._asdict() for r in self.runs],
        }


def measure_speed(
    sessions: Sequence[LlamaSession],
    tokens: Sequence[int],
    *,
    prompt_tokens: int,
    gen_tokens: int,
    rounds: int | Sequence[int],
    advance: Callable[[], None] = lambda: None,
    prompt_once: bool = False,
) -> list[Speed]:
    """Speeds of each session in ``sessions`` order; ``rounds`` for all or per session;
    ``advance`` is called after each run (and, with ``prompt_once``, after each prompt)."""
    n_ctx = min(s.n_ctx for s in sessions)
    per_session = [rounds] * len(sessions) if isinstance(rounds, int) else list(rounds)
    if len(per_session) != len(sessions):
        raise ValueError(f"{len(per_session)} round counts for {len(sessions)} sessions")
    if prompt_tokens < 1 or gen_tokens < 1 or min(per_session) < 1:
        raise HopscotchError("speed prompt tokens, generated tokens and rounds must all be at least 1")
    if prompt_tokens + gen_tokens > n_ctx:
        raise HopscotchError(
            f"speed test needs {prompt_tokens} prompt + {gen_tokens} generated tokens, "
            f"more than the context of {n_ctx}; lower --speed-prompt/--speed-gen or raise --ctx"
        )
    if not tokens:
        raise HopscotchError("no tokens to measure speed with")
    feed = [tokens[i % len(tokens)] for i in range(prompt_tokens + gen_tokens)]
    for s in sessions:
        s.clear()
        s.timed_decode(feed[:_WARMUP], 0)
    prompts: list[Timing | None] = [None] * len(sessions)
    if prompt_once:
        for i, s in enumerate(sessions):
            prompts[i] = _prompt(s, feed, prompt_tokens)
            advance()
    runs: list[list[Run]] = [[] for _ in sessions]
    for r in range(max(per_session)):
        order = range(len(sessions)) if r % 2 == 0 else reversed(range(len(sessions)))
        for i in (i for i in order if r < per_session[i]):
            runs[i].append(_one_run(sessions[i], feed, prompt_tokens, gen_tokens, prompts[i]))
            advance()
    return [
        Speed(
            *(statistics.median(getattr(run, f) for run in rs) for f in Run._fields),
            prompt_tokens,
            gen_tokens,
            tuple(rs),
        )
        for rs in runs
    ]


def _prompt(session: LlamaSession, feed: Sequence[int], n_prompt: int) -> Timing:
    """A fresh sequence's first ``n_prompt`` tokens, at once."""
    session.clear()
    return session.timed_decode(feed[:n_prompt], 0)


def _one_run(
    session: LlamaSession, feed: Sequence[int], n_prompt: int, n_gen: int, prompt: Timing | None = None
) -> Run:
    """``n_prompt`` tokens at once, then ``n_gen`` one at a time; given the ``prompt``'s
    timing, the cached prompt is kept (what followed it dropped) instead of decoded again."""
    if prompt is None:
        prompt = _prompt(session, feed, n_prompt)
    else:
        session.truncate(n_prompt)
    gen = [session.timed_decode([feed[n_prompt + i]], n_prompt + i) for i in range(n_gen)]
    gen_wall, gen_cpu = sum(t.wall for t in gen), sum(t.cpu for t in gen)
    return Run(n_prompt / prompt.wall, n_gen / gen_wall, n_prompt / _nonzero(prompt.cpu), n_gen / _nonzero(gen_cpu))


def _nonzero(seconds: float) -> float:
    """CPU clocks tick coarsely on some systems; never divide by zero."""
    return max(seconds, 1e-9)
