"""The best state at every KV saving: how ``--unit auto`` mixes units without locking in
an early choice.

A greedy search that ranks a whole block (freeing all of a layer's KV groups) against a
single group by loss added per group freed compares states of different savings, and a
block it takes first cannot be undone. On SmolLM2 (docs/frontier.md) such a search skipped
a block at its first step and ended 19% below the paper at 13.3% of the KV cache, where
single groups alone reached 35%. Here every state is compared only with states that free
the same number of KV groups: from each saving, in increasing order, the best state found
for it is expanded by one step (a block to ``saving + left``, a group to ``saving + 1``),
and each child replaces the best state of its saving if its loss is lower. Every child
frees at least one group, so a saving's best is final once the savings below it are
expanded: it is handed on then and dropped. A child is built (its scales and maps copied)
only when it beats its saving's best, so the search holds at most the best states of the
next block's worth of savings, besides what the step being run holds. Costs one step per
KV group of the budget (a greedy block search: one per block).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, TypeVar

S = TypeVar("S")


class Child(NamedTuple):
    """A state one step can reach: its saving, its loss, and how to build it."""

    level: int
    loss: float
    build: Callable[[], object]


def best_by_level(
    start: S, target: int, level: Callable[[S], int], loss: Callable[[S], float],
    children: Callable[[S], list[Child]], on_final: Callable[[S], None],
) -> S:  # fmt: skip
    """The lowest-loss state found at saving ``target`` (or, if no child lands on it, at the
    highest saving reached). ``on_final`` gets the best state of each saving reached, in
    increasing order, once no state can replace it; ``start``'s saving is not handed on.
    ``children(s)``'s builds must return states of the kind ``start`` is."""
    first = level(start)
    best: dict[int, S] = {first: start}
    highest = start
    for at in range(first, target):
        state = best.pop(at, None)
        if state is None:
            continue
        highest = state
        if at != first:
            on_final(state)
        for child in children(state):
            if child.level <= target and (child.level not in best or child.loss < loss(best[child.level])):
                best[child.level] = child.build()  # type: ignore[assignment]
    if target in best and target != first:
        highest = best[target]
        on_final(highest)
    return highest
