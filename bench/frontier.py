"""Benchmark: the quality paid per KV byte saved, by unit of removal.

Whole attention blocks skipped with scales (the paper), single KV groups (``--unit
group``), and every greedy step choosing among a block skipped, a block replaced by a
linear map and one KV group (``--unit auto --replace auto``); optionally blocks replaced
by linear maps (``--replace linear``), the third single unit. Each method runs one
greedy search up to the largest saving and is snapshotted at the first step that frees
each saving's worth of KV (in blocks: 4 of SmolLM2's 30 layers = 13.3%); every snapshot then
gets the final training and is measured on the held-out sequences. One calibration set
and one teacher pass are shared by every method, so the rows differ only by method.

    python bench/frontier.py --threads 1 --data docs.txt --markdown table.md
    python bench/frontier.py --threads 1 --seed 1 --markdown table2.md   # the model's own chats

Results: docs/frontier.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from search import print_results, shuffled  # bench/search.py, beside this script

from hopscotch_export.search import SearchOptions
from hopscotch_export.search.display import Silent
from hopscotch_export.search.final import final_training, plan_metrics
from hopscotch_export.search.greedy import SearchState, Selector
from hopscotch_export.search.objective import heldout_metrics
from hopscotch_export.search.units import kv_heads
from hopscotch_export.search.workspace import Workspace, prepare
from hopscotch_export.sources import open_source
from hopscotch_export.torch_plan import BranchScales

#: name -> (unit, replace)
METHODS = {
    "block": ("block", "skip"),
    "group": ("group", "skip"),
    "auto": ("auto", "auto"),
    "linear": ("block", "linear"),
}
LABELS = {
    "block": "blocks skipped + scales (paper)",
    "group": "single KV groups + scales",
    "auto": "--unit auto --replace auto",
    "linear": "blocks as linear maps (--replace linear)",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bundled:smollm2")
    p.add_argument("--savings", default="4,8", help="KV saved, in blocks' worth (default 4,8: 13.3%% and 26.7%%)")
    p.add_argument("--methods", default="block,group,auto", help=f"comma-separated subset of {', '.join(METHODS)}")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--heldout", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--shortlist", type=int, default=1)
    p.add_argument("--final-epochs", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, help="a local .txt/.jsonl file; default: the model's own chats")
    p.add_argument("--data-seed", type=int, help="shuffle --data's records with this seed")
    p.add_argument("--threads", type=int)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    savings = sorted(int(s) for s in a.savings.split(","))
    methods = a.methods.split(",")
    if set(methods) - set(METHODS):
        p.error(f"--methods: choose from {', '.join(METHODS)}")
    if a.threads:
        torch.set_num_threads(a.threads)
    console = Console(stderr=True)
    source = open_source(a.model)
    options = SearchOptions(
        skips=max(savings), samples=a.samples, heldout=a.heldout, seq_len=a.seq_len, batch_size=a.batch_size,
        shortlist=a.shortlist, final_epochs=a.final_epochs, max_new_tokens=a.max_new_tokens, device="cpu",
        seed=a.seed,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if a.data is not None:
            options = dataclasses.replace(options, data=str(shuffled(a.data, a.data_seed, Path(tmp))))
        ws = prepare(source, options, console, data_file=Path(tmp) / "calib.jsonl", save_data=True, force=True)
    original = heldout_metrics(ws.stack, ws.calib, ws.teacher, options.batch_size)
    n, n_kv = ws.stack.n_layers, kv_heads(ws.stack.config)
    rows: list[dict[str, Any]] = []
    for name in methods:
        unit, replace = METHODS[name]
        o = dataclasses.replace(options, unit=unit, replace=replace)

        clock = {"start": time.perf_counter(), "measuring": 0.0}  # search time = elapsed - measuring

        def on_step(s: SearchState, name: str = name, o: SearchOptions = o, clock: dict = clock) -> None:
            last, saved = s.steps[-1], s.removed.saved
            console.print(f"{name}: step {len(s.steps)} {last.kind} {last.chosen} ({last.seconds:.1f}s), {saved} groups")
            # the first kept state (in KV groups freed) that reaches a saving, measured when reached
            for k in savings:
                if saved >= k * n_kv and not any(r["method"] == name and r["blocks_worth"] == k for r in rows):
                    t = time.perf_counter()
                    searched = t - clock["start"] - clock["measuring"]
                    rows.append(snapshot_row(ws, o, s, name, k, n_kv, searched))
                    clock["measuring"] += time.perf_counter() - t
                    console.print(rows[-1])
                    show(rows, savings, original, a)

        state = SearchState(BranchScales(n).to(ws.stack.device))
        Selector(ws.stack, ws.calib, ws.teacher, o, o.candidates(n), Silent()).run(state, on_step)


def snapshot_row(
    ws: Workspace, o: SearchOptions, s: SearchState, name: str, k: int, n_kv: int, searched: float
) -> dict[str, Any]:
    """Held-out KL of the search state ``s`` with scales = 1 and after the final training;
    ``searched``: the seconds the search took to reach it (every state it tried, not only
    ``s``'s steps)."""
    n = ws.stack.n_layers
    plain = plan_metrics(ws, s.skip, BranchScales(n), o.batch_size, s.maps, s.kv_groups)
    t = time.perf_counter()
    final, maps = final_training(ws, o, s.skip, s.scales, Silent(), s.maps, groups=s.kv_groups)
    trained = plan_metrics(ws, s.skip, final, o.batch_size, maps, s.kv_groups)
    removed = s.removed
    return {
        "method": name, "blocks_worth": k, "kv_saved": removed.saved / (n * n_kv),
        "skip": sorted(removed.skip), "linear": sorted(removed.linear),
        "kv_groups": {str(i): list(g) for i, g in removed.kv_groups.items()},
        "groups_cut": sum(n_kv - len(g) for g in removed.kv_groups.values()),
        "steps": len(s.steps), "seconds": searched + time.perf_counter() - t,
        "kl_plain": plain["kl"], "kl": trained["kl"], "ppl": trained["ppl"],
    }  # fmt: skip


#: what the calibration data is without ``--data``
OWN_CHATS = "the model's own chats"


def removed_text(r: dict[str, Any]) -> str:
    """``skip 7,20; linear 3; 12 groups in 9 layers``."""
    parts = []
    if r["skip"]:
        parts.append("skip " + ",".join(map(str, r["skip"])))
    if r["linear"]:
        parts.append("linear " + ",".join(map(str, r["linear"])))
    if r["kv_groups"]:
        parts.append(f"{r['groups_cut']} groups in {len(r['kv_groups'])} layers")
    return "; ".join(parts)


def show(rows: list[dict[str, Any]], savings: list[int], original: dict[str, float], a: argparse.Namespace) -> None:
    """The table, and per saving each method's held-out KL against the paper's."""
    header = ("KV saved", "method", "removed", "KL, scales = 1", "KL, trained", "perplexity", "time s")
    table = Table(title="held-out KL to the original model at the same KV saving")
    for col in header:
        table.add_column(col)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines = [
        f"data: {a.data or OWN_CHATS}"
        f"{f' (records shuffled with seed {a.data_seed})' if a.data_seed is not None else ''}, search seed {a.seed}; "
        f"{a.samples} x {a.seq_len} training tokens, {a.heldout} x {a.seq_len} held-out; "
        f"original held-out perplexity {original['ppl']:.2f}"
    ]
    for k in savings:
        here = [r for r in rows if r["blocks_worth"] == k]
        paper = next((r for r in here if r["method"] == "block"), None)
        for r in here:
            cells = [
                f"{r['kv_saved']:.1%}", LABELS[r["method"]], removed_text(r), f"{r['kl_plain']:.4f}",
                f"{r['kl']:.4f}", f"{r['ppl']:.2f}", f"{r['seconds']:.0f}",
            ]  # fmt: skip
            table.add_row(*cells)
            md.append("| " + " | ".join(cells) + " |")
            if paper and r is not paper:
                lines.append(
                    f"{k} blocks' worth: {LABELS[r['method']]} held-out KL {100 * (r['kl'] / paper['kl'] - 1):+.1f}% "
                    "vs the paper's blocks"
                )
    print_results(table, lines, md, a.markdown)
    if a.json:
        a.json.write_text(json.dumps({"original": original, "rows": rows, "notes": lines}, indent=1) + "\n")


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
