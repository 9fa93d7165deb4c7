"""The quality curve as a picture (``model.curve.png``): what each count of removed blocks
costs on held-out tokens, what it saves, and the frontier: KL against KV cache saved, beside
what a user already has (llama.cpp's KV-cache quantization) when the one command has
measured it; with the one command's ``--tasks``, each count's task accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import atomic_output


@dataclass(frozen=True)
class VerifyPoint:
    """A model measured elsewhere (the one command's verify, in llama.cpp on its own text),
    drawn on the frontier as a point: KV cache saved against the original with an f16 cache."""

    label: str
    kv_saved_pct: float
    kl: float


@dataclass(frozen=True)
class Combined:
    """The curve's exports run with a quantized KV cache: each point's KV bytes times
    ``kv_ratio`` (the cache type's bytes over f16's), its KL moved by ``kl_shift`` (the
    change the cache type made to the chosen export's KL in verify)."""

    cache_type: str
    kv_ratio: float
    kl_shift: float


def plot_curve(
    curve: dict[str, Any], path: Path, force: bool = False, measured: Sequence[VerifyPoint] = (),
    combined: Combined | None = None,
) -> None:  # fmt: skip
    """First: held-out KL and perplexity rise against blocks removed, the limits dashed and
    the chosen count ringed; points whose plan has linear maps are squares. Second: the KV
    cache and compute per token saved. Third: the frontier, held-out KL against KV cache
    saved, with the ``measured`` points and the ``combined`` line. With the curve's ``tasks``
    (the one command's ``--tasks``), a fourth: each task's score against the count, the
    original's as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    points = curve["points"]
    ks = [0] + [p["removed"] for p in points]
    kl = [0.0] + [p["kl"] for p in points]
    rise = [0.0] + [p["ppl_increase_pct"] for p in points]
    linear = [False] + ["linear" in p["kinds"] for p in points]
    tasks = curve.get("tasks")
    panels = 4 if tasks else 3
    fig, axes = plt.subplots(1, panels, figsize=(5.4 * panels, 4.2), constrained_layout=True)
    left, right, frontier = axes[:3]
    right_kl = left.twinx()
    left.plot(ks, kl, color="tab:blue", label="KL to original")
    right_kl.plot(ks, rise, color="tab:orange", label="perplexity rise %")
    for k, a, b, lin in zip(ks, kl, rise, linear):
        marker = "s" if lin else "o"
        left.plot(k, a, marker, color="tab:blue")
        right_kl.plot(k, b, marker, color="tab:orange")
    limits = curve["limits"]
    for ax, values, limit, color in ((left, kl, limits.get("max_kl"), "tab:blue"),
                                     (right_kl, rise, limits.get("max_ppl_increase"), "tab:orange")):  # fmt: skip
        if limit is not None and limit <= 3 * max(map(abs, values)):  # a far-off limit would flatten the curve
            ax.axhline(limit, color=color, linestyle="--", linewidth=1)
    gated = curve.get("gate", {}).get("counts", [])
    if gated:  # the one command's counts measured as verify measures them
        left.plot([m["removed"] for m in gated], [m["kl"] for m in gated], "x", markersize=9,
                  color="black", label="KL measured by verify")  # fmt: skip
    if curve.get("chosen"):
        k = curve["chosen"]
        left.plot(k, kl[k], "o", markersize=14, markerfacecolor="none", color="black", label=f"exported ({k})")
    xlabel = "attention blocks removed" if curve.get("unit", "block") == "block" else "blocks' worth of KV removed"
    left.set_xlabel(xlabel)
    left.set_ylabel("held-out KL to original", color="tab:blue")
    right_kl.set_ylabel("held-out perplexity rise (%)", color="tab:orange")
    left.set_title(f"cost (--replace {curve['replace']}; squares: plan has linear maps)")
    left.legend(loc="upper left")

    right.plot(ks, [0.0] + [p["kv_saved_pct"] for p in points], "o-", label="KV cache")
    right.plot(ks, [0.0] + [p["compute_saved_pct"] for p in points], "s-", label="compute per token")
    right.set_xlabel(xlabel)
    right.set_ylabel("saved (%)")
    right.set_title("savings (compute at short context)")
    right.legend(loc="upper left")
    for ax in (left, right):
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    _frontier(frontier, curve, kl, measured, combined)
    if tasks:
        _tasks(axes[3], tasks, curve.get("chosen"), xlabel)
    with atomic_output(path, force) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _frontier(
    ax: Any, curve: dict[str, Any], kl: list[float], measured: Sequence[VerifyPoint], combined: Combined | None
) -> None:
    """KL against KV cache saved: the search's curve, the curve with a quantized cache, and
    the ``measured`` points (llama.cpp on verify's text: another measure than the curve's)."""
    saved = [0.0] + [p["kv_saved_pct"] for p in curve["points"]]
    ax.plot(saved, kl, "o-", color="tab:blue", label="export, f16 KV (search's held-out, torch)")
    if combined is not None:
        moved = [100 - (100 - s) * combined.kv_ratio for s in saved]
        ax.plot(moved, [max(0.0, k + combined.kl_shift) for k in kl], "o--", color="tab:green",
                label=f"export, {combined.cache_type} KV (KV computed; KL shift measured by verify)")  # fmt: skip
    for i, m in enumerate(measured):
        ax.plot(m.kv_saved_pct, m.kl, "D^v<>p"[i % 6], markersize=8, linestyle="none",
                label=f"{m.label} (verify, llama.cpp)")  # fmt: skip
    ax.set_xlabel("KV cache saved (%)")
    ax.set_ylabel("KL to original")
    ax.set_title("frontier: quality paid per KV byte saved")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)


def _tasks(ax: Any, tasks: dict[str, Any], chosen: int | None, xlabel: str) -> None:
    """Each task's main metric against the count, with lm-eval's standard error as bars and
    the original's figure as a dotted line of the same colour. Metrics outside 0..1
    (perplexities) are in the JSON and the table only: they would flatten the accuracies."""
    counts = sorted(tasks["counts"], key=lambda c: c["removed"])
    ks = [0] + [c["removed"] for c in counts]
    for i, (name, original) in enumerate(tasks["original"].items()):
        scores = [original] + [c["scores"].get(name) for c in counts]
        if any(s is None or not 0 <= s["value"] <= 1 for s in scores):
            continue
        color = f"C{i % 10}"
        values = [s["value"] for s in scores]
        errors = [s.get("stderr") or 0.0 for s in scores]
        ax.errorbar(ks, values, yerr=errors, marker="o", capsize=3, color=color, label=f"{name} {original['metric']}")
        ax.axhline(original["value"], color=color, linestyle=":", linewidth=1)
        if chosen in ks:
            ax.plot(chosen, values[ks.index(chosen)], "o", markersize=14, markerfacecolor="none", color="black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("task score (lm-eval in llama.cpp)")
    ax.set_title("tasks on each count's file (dotted: the original)")
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7)
