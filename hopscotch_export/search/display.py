"""What a search shows: a progress bar per step and a final table."""

from __future__ import annotations

from typing import Any

from rich.progress import Progress
from rich.table import Table


class RichSteps:
    """One progress bar per greedy step (and one for the final training)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None

    def begin(self, label: str, total: int) -> None:
        self.task = self.progress.add_task(label, total=total)

    def advance(self) -> None:
        self.progress.advance(self.task)


class Silent:
    """Progress that shows nothing (benchmarks, library use)."""

    def begin(self, label: str, total: int) -> None:
        pass

    def advance(self) -> None:
        pass


def summary_tables(steps: list[dict[str, Any]], heldout: dict[str, dict[str, float]], objective: str) -> list[Table]:
    """The greedy steps, then held-out metrics of the original model, the removals alone and the plan."""
    t = Table(title=f"greedy steps (objective: {objective} on the training sequences)")
    for col in ("step", "layer", "removed as", "screened", "rescored", "trained", "loss", "seconds"):
        t.add_column(col, justify="right")
    for k, s in enumerate(steps, 1):
        # a candidate tried as both kinds (--replace auto) counts twice
        counts = [str(sum(c.get(key) is not None for c in s["candidates"])) for key in ("score", "rescored", "trained")]
        kind = s.get("kind", "skip")
        kind = f"KV group {s['group']}" if kind == "group" else kind
        t.add_row(str(k), str(s["chosen"]), kind, *counts, f"{s['loss']:.4f}", f"{s['seconds']:.1f}")
    h = Table(title="held-out tokens (not used for training)")
    for col in ("model", "KL to original", "cross-entropy", "perplexity"):
        h.add_column(col, justify="right")
    names = {"original": "original", "no_scales": "removals, scales = 1", "final": "plan (removals + scales)"}
    for key, label in names.items():
        m = heldout[key]
        h.add_row(label, f"{m['kl']:.4f}", f"{m['ce']:.4f}", f"{m['ppl']:.2f}")
    return [t, h]
