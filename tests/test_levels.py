"""``--unit auto``'s search over KV savings (search/levels.py), on a made-up problem where
a greedy choice by loss per group freed goes wrong."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hopscotch_export.search.levels import Child, best_by_level


@dataclass(frozen=True)
class S:
    """A state: groups freed, loss, and the removals that led to it."""

    saved: int
    loss: float
    path: tuple[str, ...] = ()


#: a block frees 3 groups and costs 0.9 (0.3 a group); each single group costs 0.4 at first,
#: but every group after the first costs only 0.05 more (the groups share what they remove)
def children(s: S) -> list[S]:
    out = []
    if "block" not in s.path and s.saved + 3 <= 6:
        out.append(S(s.saved + 3, s.loss + 0.9, s.path + ("block",)))
    groups = s.path.count("group")
    out.append(S(s.saved + 1, s.loss + (0.4 if groups == 0 else 0.05), s.path + ("group",)))
    return out


built: list[S] = []


def lazy(make: Callable[[S], list[S]]) -> Callable[[S], list[Child]]:
    """``make``'s states as children that record when they are built."""

    def children(s: S) -> list[Child]:
        return [Child(c.saved, c.loss, lambda c=c: built.append(c) or c) for c in make(s)]

    return children


def run(start: S, target: int, make: Callable[[S], list[S]] = children) -> tuple[S, list[S]]:
    handed: list[S] = []
    built.clear()
    final = best_by_level(start, target, lambda s: s.saved, lambda s: s.loss, lazy(make), handed.append)
    return final, handed


def test_a_block_taken_first_by_loss_per_group_loses_to_groups_freeing_as_much() -> None:
    # greedy by loss added per group: block 0.9 / 3 = 0.3 < group 0.4 / 1, so it takes the
    # block and reaches 3 groups at 0.9; three groups cost 0.4 + 0.05 + 0.05 = 0.5
    final, handed = run(S(0, 0.0), 3)
    assert final.path == ("group",) * 3 and final.loss == 0.5
    assert [s.saved for s in handed] == [1, 2, 3]  # each saving's best once, in order, the start not
    # only children that beat their saving's best are built: the block (0.9 at 3) is, until
    # the groups' 0.5 replaces it; from 1 and 2 the block would overshoot
    assert [c.path for c in built] == [("block",), ("group",), ("group",) * 2, ("group",) * 3]


def test_every_saving_keeps_its_best_state_and_blocks_still_win_where_they_pay() -> None:
    final, handed = run(S(0, 0.0), 6)
    best = {s.saved: s for s in handed}
    assert best[3].loss == 0.5 and best[6].path == ("group",) * 6  # 0.65 < the block then groups' 1.4
    assert final is best[6]
    # a start that already has groups: the block (0.9) now loses to 3 more groups (0.15)
    final, _ = run(S(2, 0.45, ("group", "group")), 5)
    assert final.path == ("group",) * 5


def test_a_block_wins_its_saving_when_it_costs_less_than_the_groups() -> None:
    def cheap_block(s: S) -> list[S]:
        return [S(c.saved, c.loss - 0.8, c.path) if c.path[-1] == "block" else c for c in children(s)]

    final, handed = run(S(0, 0.0), 4, cheap_block)
    assert [s.path for s in handed][2] == ("block",)  # 0.1 at 3 groups, against 0.5
    # 4 groups: a group then the block, or the block then a group (0.5 both; the first found
    # stays), not four groups (0.55)
    assert final.path == ("group", "block") and final.saved == 4


def test_a_target_no_child_reaches_gives_the_highest_saving_found() -> None:
    def stuck(s: S) -> list[S]:
        return [S(s.saved + 1, s.loss + 0.1)] if s.saved < 2 else []

    final, handed = run(S(0, 0.0), 5, stuck)
    assert final.saved == 2 and [s.saved for s in handed] == [1, 2]
    # a start already at the target is returned as it is, and nothing is handed on
    assert run(S(3, 0.2), 3) == (S(3, 0.2), [])
