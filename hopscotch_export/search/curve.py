"""The quality curve: one search gives a plan for every number of removed blocks.

Greedy plans (``--unit block|group``) are nested: the plan for k blocks is the first k steps
of the plan for k + 1. With ``--skips auto`` the search runs up to ``--max-skips`` blocks'
worth and keeps the scales and maps of the states it reaches (:class:`Snapshot`); every
count then gets its own final training, started from its state, so that the point for k is
the plan ``--skips k`` would write, and its held-out figures. The largest count within
``--max-kl`` / ``--max-ppl-increase`` becomes the plan.

With ``--unit group`` or ``auto`` the steps are many (one per KV group) and the x axis is
KV saved: the curve's point ``k`` is the kept state with the fewest groups freed that frees
``k`` blocks' worth of KV cache (``k / n_layers`` of it, :func:`at_least`), so the final
trainings stay one per block's worth. ``auto`` keeps the best state of every KV saving
(``levels.py``); its plans are not nested, and each point is the best state found for its
saving (a ``--skips k`` search alone can differ near its budget, where trials that would
overshoot are not tried).

The held-out sequences choose the count, so the chosen point's figures are slightly
optimistic; ``verify`` measures the exported file on other text. The one command with
verify on therefore chooses among these counts by verify's own measure of their files
(``export.py``), from the plans ``run_search`` writes per count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from rich.table import Table

from ..torch_plan import BranchScales
from .greedy import LINEAR, SearchState, Step
from .options import SearchOptions
from .savings import block_savings, model_flops_per_token
from .units import BLOCK, GROUP, kv_heads, replay


@dataclass
class Snapshot:
    """A state the search kept: its steps, and the scales and linear maps they left, on the CPU."""

    steps: list[Step]
    scales: dict[str, torch.Tensor]
    maps: dict[int, torch.Tensor]

    @classmethod
    def of(cls, state: SearchState) -> Snapshot:
        return cls(
            list(state.steps),
            {k: t.detach().cpu().clone() for k, t in state.scales.state_dict().items()},
            {i: m.detach().cpu().clone() for i, m in state.maps.items()},
        )

    def restore(self, like: BranchScales) -> tuple[BranchScales, dict[int, torch.Tensor]]:
        """Scales shaped and placed like ``like``, and the maps of the snapshot's linear layers."""
        scales = BranchScales(*like.attn.shape).to(like.attn.device)
        scales.load_state_dict(self.scales)
        linear = [s.chosen for s in self.steps if s.kind == LINEAR]
        return scales, {i: self.maps[i] for i in linear}


def at_least(snapshots: dict[int, Snapshot], groups: int) -> Snapshot | None:
    """The kept state with the fewest KV groups freed that frees at least ``groups``: a
    curve point's state (``snapshots`` by KV groups freed)."""
    enough = [n for n in snapshots if n >= groups]
    return snapshots[min(enough)] if enough else None


@dataclass
class Point:
    """One count of removed blocks (of blocks' worth of KV): which, as what, and what it
    keeps and saves."""

    steps: list[Step]
    #: held-out KL to the original model, cross-entropy and perplexity after final training
    metrics: dict[str, float]
    ppl_increase_pct: float
    kv_saved_pct: float
    compute_saved_pct: float
    within: bool
    #: blocks removed, or with KV-group units the blocks' worth of KV the point stands for
    removed: int
    #: KV-group units: the fraction of the KV cache saved and the partly cut layers' kept groups
    kv: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        groups = {"groups": [s.group for s in self.steps]} if self.kv is not None else {}
        return {
            "removed": self.removed,
            "layers": [s.chosen for s in self.steps],
            "kinds": [s.kind for s in self.steps],
            **groups,
            **{k: self.metrics[k] for k in ("kl", "ce", "ppl")},
            "ppl_increase_pct": self.ppl_increase_pct,
            "kv_saved_pct": self.kv_saved_pct,
            "compute_saved_pct": self.compute_saved_pct,
            **(self.kv or {}),
            "within_limits": self.within,
        }


def point(steps: list[Step], metrics: dict[str, float], original: dict[str, float], config: Any,
          options: SearchOptions, removed: int) -> Point:  # fmt: skip
    """The curve's point for ``steps`` (``removed`` blocks' worth), judged against ``options``' limits."""
    rise = 100.0 * (metrics["ppl"] / original["ppl"] - 1.0)
    n_kv = kv_heads(config)
    done = replay(steps, n_kv)
    flops = sum(block_savings(config, s.kind, f)["flops_per_token"] for s, f in zip(steps, done.freed))
    within = (options.max_kl is None or metrics["kl"] <= options.max_kl) and (
        options.max_ppl_increase is None or rise <= options.max_ppl_increase
    )
    kv = None
    if options.unit != BLOCK:
        kv = {"kv_saved": done.saved / (config.num_hidden_layers * n_kv),
              "kv_groups": {str(i): list(g) for i, g in done.kv_groups.items()}}  # fmt: skip
    return Point(
        list(steps), metrics, rise, 100.0 * done.saved / (config.num_hidden_layers * n_kv),
        100.0 * flops / model_flops_per_token(config), within, removed, kv,
    )  # fmt: skip


def chosen(points: list[Point]) -> Point | None:
    """The point with the most blocks removed within the limits (None: not even one block)."""
    return max((p for p in points if p.within), key=lambda p: p.removed, default=None)


def curve_json(points: list[Point], original: dict[str, float], options: SearchOptions, resumed: int) -> dict[str, Any]:
    """What ``<plan>.curve.json`` holds (and the plan's provenance, under ``curve``)."""
    best = chosen(points)
    return {
        "replace": options.replace,
        **({"unit": options.unit, "x": "blocks' worth of KV cache saved"} if options.unit != BLOCK else {}),
        "limits": {"max_kl": options.max_kl, "max_ppl_increase": options.max_ppl_increase},
        "max_skips": options.skips,
        "heldout": f"{options.heldout} sequences of {options.seq_len} tokens, not trained on",
        "original": {k: original[k] for k in ("kl", "ce", "ppl")},
        "points": [p.to_json() for p in points],
        "chosen": None if best is None else best.removed,
        # points up to this count started their final training from the resumed plan's
        # scales and maps, not from their own step's (those were not saved)
        **({"resumed_at": resumed} if resumed else {}),
    }


def curve_table(curve: dict[str, Any]) -> Table:
    """The curve as a table: one row per count, the chosen one marked."""
    limits = ", ".join(f"{k.replace('_', '-')} {v:g}" for k, v in curve["limits"].items() if v is not None)
    t = Table(title=f"quality curve on held-out tokens ({limits})")
    # the one command's counts measured as verify measures them (export.py, gate.py)
    gate = {g["removed"]: g for g in curve.get("gate", {}).get("counts", [])}
    verify = ["KL (verify)"] if gate else []
    # the one command's lm-eval scores of every count (--tasks, export.py and curve_tasks.py)
    tasks = curve.get("tasks")
    names = list(tasks["original"]) if tasks else []
    scored = {c["removed"]: c["scores"] for c in tasks["counts"]} if tasks else {}
    headers = [f"{n} {tasks['original'][n]['metric']}" for n in names] if tasks else []
    columns = ("removed", "layers", "KL", *verify, "perplexity", "ppl rise", *headers, "KV saved", "compute saved", "")
    for col in columns:
        t.add_column(col, justify="right")
    original_ppl = curve["original"]["ppl"]
    original = [_score(tasks["original"].get(n)) for n in names] if tasks else []
    t.add_row("0", "", "0", *[""] * len(verify), f"{original_ppl:.2f}", "", *original, "", "", "")
    for p in curve["points"]:
        groups = p.get("groups") or [None] * len(p["kinds"])
        layers = [f"{i}{'L' if k == LINEAR else ''}{f'g{g}' if k == GROUP else ''}"
                  for i, k, g in zip(p["layers"], p["kinds"], groups)]  # fmt: skip
        measured = gate.get(p["removed"])
        mark = "chosen" if p["removed"] == curve["chosen"] else ("" if p["within_limits"] else "over")
        if measured is not None and not measured["passed"]:
            mark = "fails verify"
        shown = [f"{measured['kl']:.4f}" if measured else ""] if gate else []
        scores = [_score(scored.get(p["removed"], {}).get(n)) for n in names]
        t.add_row(
            str(p["removed"]), ",".join(layers), f"{p['kl']:.4f}", *shown, f"{p['ppl']:.2f}",
            f"{p['ppl_increase_pct']:+.1f}%", *scores, f"{p['kv_saved_pct']:.0f}%", f"{p['compute_saved_pct']:.1f}%",
            mark,
        )  # fmt: skip
    t.caption = "L: replaced by a linear map; the others are skipped"
    if curve.get("unit", BLOCK) != BLOCK:
        t.caption = "L: replaced by a linear map; gN: its KV group N removed; the others are skipped"
        t.columns[0].header = "blocks' worth"
    if gate:
        t.caption += "; KL (verify): the converted file in llama.cpp on verify's text, which chose the count"
    if tasks:
        t.caption += "; tasks: lm-eval on each count's file in llama.cpp, ± its standard error"
    return t


def _score(score: dict[str, Any] | None) -> str:
    """A task's main metric with lm-eval's standard error (``""`` for a count not scored)."""
    if score is None:
        return ""
    value = f"{score['value']:.3f}" if abs(score["value"]) < 100 else f"{score['value']:.4g}"
    return value + (f"±{score['stderr']:.3f}" if score.get("stderr") is not None else "")
