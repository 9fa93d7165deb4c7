"""Units of removal: whole attention blocks and single KV groups, and the KV budget they fill.

A KV group is one KV head and the query heads that share it (``deci`` stores
``head_count`` and ``head_count_kv`` per layer, so a layer may keep only some groups). Every
layer's KV heads are the same size, so the KV cache is counted in groups: a model has
``n_layers x n_kv`` of them, a whole block frees the groups its layer still has. With
``--unit block`` a step removes a block (skip or linear map, per ``--replace``); with
``group`` one KV group of a layer other than 0 (a layer losing its last group is skipped);
with ``auto`` either, each state compared with those freeing as much KV (``levels.py``).

The steps of a search are replayed here into what the plan holds (:func:`replay`), so the
state, the plan, the curve and the savings all read one account of what each step removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

BLOCK, GROUP, AUTO = "block", "group", "auto"
#: what one step removes: a whole attention block, one KV group, or either (``levels.py``)
UNITS = (BLOCK, GROUP, AUTO)
#: how a step removed what it chose: ``skip`` and ``linear`` remove a block, ``group`` one KV group
SKIP, LINEAR = "skip", "linear"


class Removal(Protocol):
    """What :func:`replay` reads of a greedy step."""

    chosen: int
    kind: str
    group: int | None


@dataclass(frozen=True)
class Removed:
    """What a sequence of steps removed, in step order."""

    #: skipped layers: skip steps, and layers whose last KV group a group step removed
    skip: list[int]
    linear: list[int]
    #: the KV groups gone from each layer a step touched (all of them for skip and linear)
    cut: dict[int, frozenset[int]]
    #: KV groups each step freed (a block step on a partly cut layer frees only the rest)
    freed: list[int]
    n_kv: int

    @property
    def kv_groups(self) -> dict[int, tuple[int, ...]]:
        """Partly cut layers -> the groups they keep (the plan's ``kv_groups``)."""
        return {
            i: tuple(g for g in range(self.n_kv) if g not in gone)
            for i, gone in sorted(self.cut.items())
            if 0 < len(gone) < self.n_kv
        }

    @property
    def saved(self) -> int:
        """KV groups freed in all."""
        return sum(self.freed)

    def left(self, layer: int) -> int:
        """The KV groups ``layer`` still has."""
        return self.n_kv - len(self.cut.get(layer, ()))


def replay(steps: Sequence[Removal], n_kv: int) -> Removed:
    """The skipped, linear and partly cut layers after ``steps``, and what each step freed."""
    skip: list[int] = []
    linear: list[int] = []
    cut: dict[int, frozenset[int]] = {}
    freed: list[int] = []
    for s in steps:
        gone = cut.get(s.chosen, frozenset())
        if s.kind == GROUP:
            now = gone | {s.group}
            if len(now) == n_kv:
                skip.append(s.chosen)
        else:
            now = frozenset(range(n_kv))
            (linear if s.kind == LINEAR else skip).append(s.chosen)
        cut[s.chosen] = now
        freed.append(len(now) - len(gone))
    return Removed(skip, linear, cut, freed, n_kv)


def kv_heads(config: Any) -> int:
    """KV heads per layer of a transformers config (all query heads' count without GQA)."""
    return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
