"""Benchmark: Hopscotch's shortlisted search vs the paper's exhaustive one vs one-shot
baselines, and removed blocks replaced by fitted linear maps (``--replace linear|auto``)
against an NBL-style baseline (the blocks a linear map fits best, linearised).

Runs on SmolLM2-135M-Instruct (``bundled:smollm2``) on CPU by default, sized to finish in
about 30 minutes on two cores (results: docs/search-benchmark.md). One calibration set
(written by the model, as ``search`` does without ``--data``, or ``--data FILE`` with its
records shuffled by ``--data-seed``) and one teacher pass are shared by every method; each
greedy search runs once up to the largest ``--skips`` and is snapshotted at the smaller
ones, timed as a separate run would be: the teacher pass on the training sequences, its
own steps, its own final training. Model loading, data generation and the held-out
evaluation, the same for every method, are not counted.

    python bench/search.py --threads 2 --markdown table.md
    python bench/search.py --methods hopscotch,linear,auto,baselines,nbl --samples 16 --seq-len 128 \
        --heldout 24 --data docs.txt --data-seed 1 --seed 1
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from hopscotch_export.search import SearchOptions
from hopscotch_export.search.baselines import linear_fits, nbl, random_choice, similarities
from hopscotch_export.search.calibration import save_records
from hopscotch_export.search.display import Silent
from hopscotch_export.search.final import final_training, plan_metrics
from hopscotch_export.search.greedy import SearchState, Selector
from hopscotch_export.search.objective import heldout_metrics
from hopscotch_export.search.workspace import Workspace, prepare
from hopscotch_export.sources import open_source
from hopscotch_export.text_sources import read_records
from hopscotch_export.torch_plan import BranchScales

HOPSCOTCH = "Hopscotch (default shortlist)"
PAPER = "Hopscotch --shortlist all (paper)"
#: the default search with each ``--replace`` other than skip
REPLACED = {"linear": "Hopscotch --replace linear", "auto": "Hopscotch --replace auto"}
METHODS = ("hopscotch", "paper", "baselines", "linear", "auto", "nbl")
NBL, NBL_TRAINED = "NBL (best linear fit), closed-form maps", "NBL + trained scales and maps"
#: rows that are not Hopscotch searches: what every Hopscotch variant should beat
BASELINES = (
    "Hopscotch's blocks, scales = 1", "LLM-Drop (attention cosine)", "LLM-Drop + trained scales",
    "ShortGPT (layer Block Influence)", "random + trained scales", NBL, NBL_TRAINED,
)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bundled:smollm2", help="model to search (default: SmolLM2-135M-Instruct)")
    p.add_argument("--skips", default="2,4,8")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--heldout", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=48)
    p.add_argument("--score-samples", type=int, help="default: a quarter of --samples, as in search")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--shortlist", type=int, default=SearchOptions(skips=1).shortlist)
    p.add_argument("--final-epochs", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibration", type=Path, help="chats (JSON lines): read if it exists, else generated and saved")
    p.add_argument("--data", type=Path, help="a local .txt/.jsonl calibration file instead of the model's own chats")
    p.add_argument("--data-seed", type=int, help="shuffle --data's records with this seed before packing")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a machine shared with other jobs)")
    p.add_argument("--markdown", type=Path, help="also write the table here as markdown")
    a = p.parse_args()
    skips = sorted(int(s) for s in a.skips.split(","))
    methods = a.methods.split(",")
    if set(methods) - set(METHODS):
        p.error(f"--methods: unknown {', '.join(sorted(set(methods) - set(METHODS)))}; choose from {', '.join(METHODS)}")
    if a.data_seed is not None and a.data is None:
        p.error("--data-seed shuffles a --data file; give one")
    console = Console(stderr=True)
    source = open_source(a.model)
    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = None if a.data is None else str(shuffled(a.data, a.data_seed, Path(tmp)))
        options = SearchOptions(
            skips=max(skips), samples=a.samples, heldout=a.heldout, seq_len=a.seq_len, score_samples=a.score_samples,
            batch_size=a.batch_size, shortlist=a.shortlist, final_epochs=a.final_epochs,
            max_new_tokens=a.max_new_tokens, device=a.device, seed=a.seed, data=data,
        )  # fmt: skip
        data_file = a.calibration or Path(tmp) / "calibration.jsonl"
        ws = prepare(source, options, console, data_file=data_file, save_data=not data_file.exists(), force=False)
    if a.data is not None:
        ws.data.update(source=str(a.data), shuffled=a.data_seed)
    candidates = options.candidates(source.spec.n_layers)
    console.print(f"data: {ws.data}\nseconds: {ws.seconds}\ndevice: {ws.device}")
    original = heldout_metrics(ws.stack, ws.calib, ws.teacher, options.batch_size)
    rows: list[dict[str, Any]] = []
    base = ws.seconds["teacher"]
    n = source.spec.n_layers
    greedy: dict[str, list[int]] = {}
    if "hopscotch" in methods:
        greedy[HOPSCOTCH] = run_greedy(ws, options, candidates, skips, base, rows, HOPSCOTCH, console)
    if "paper" in methods:
        paper = dataclasses.replace(options, shortlist=None)
        greedy[PAPER] = run_greedy(ws, paper, candidates, skips, base, rows, PAPER, console)
    for replace, name in REPLACED.items():
        if replace in methods:
            replaced = dataclasses.replace(options, replace=replace)
            run_greedy(ws, replaced, candidates, skips, base, rows, name, console)
    if "baselines" in methods:
        t = time.perf_counter()
        attn_cos, layer_cos = similarities(ws.stack, ws.calib, options.batch_size)
        sim_s = time.perf_counter() - t  # one pass gives both LLM-Drop's and ShortGPT's numbers
        for k in skips:
            if HOPSCOTCH in greedy:
                ours = greedy[HOPSCOTCH][:k]
                rows.append(row(ws, options, "Hopscotch's blocks, scales = 1", ours, None, 0.0, console))
            llm_drop = sorted(sorted(candidates, key=lambda i: (-attn_cos[i], i))[:k])
            shortgpt = sorted(sorted(candidates, key=lambda i: (1 - layer_cos[i], i))[:k])
            rnd = random_choice(candidates, k, options.seed)
            rows.append(row(ws, options, "LLM-Drop (attention cosine)", llm_drop, None, sim_s, console))
            rows.append(row(ws, options, "LLM-Drop + trained scales", llm_drop, BranchScales(n), sim_s, console))
            rows.append(row(ws, options, "ShortGPT (layer Block Influence)", shortgpt, None, sim_s, console))
            rows.append(row(ws, options, "random + trained scales", rnd, BranchScales(n), 0.0, console))
    if "nbl" in methods:
        t = time.perf_counter()
        fits = linear_fits(ws.stack, ws.calib, candidates, options.batch_size)
        fit_s = base + time.perf_counter() - t
        console.print({c: round(f.error, 4) for c, f in fits.items()})  # type: ignore[arg-type]
        for k in skips:
            maps = nbl(fits, k)
            rows.append(row(ws, options, NBL, [], None, fit_s, console, maps))
            rows.append(row(ws, options, NBL_TRAINED, [], BranchScales(n), fit_s, console, maps))
    show(rows, skips, options, original, a)


def shuffled(data: Path, seed: int | None, tmp: Path) -> Path:
    """``data``, or its records in an order drawn by ``seed``, as a file ``search --data`` reads."""
    if seed is None:
        return data
    records = list(read_records(str(data), None, "train", None))
    random.Random(seed).shuffle(records)
    out = tmp / f"{data.stem}.seed{seed}.jsonl"
    save_records(records, out, force=True)
    return out


def run_greedy(
    ws: Workspace, options: SearchOptions, candidates: list[int], skips: list[int], base: float,
    rows: list[dict[str, Any]], name: str, console: Console,
) -> list[int]:  # fmt: skip
    """One greedy run to max(skips); a row per snapshot, timed as a standalone run."""
    snapshots: dict[int, SearchState] = {}

    def on_step(s: SearchState) -> None:
        last = s.steps[-1]
        console.print(f"{name}: step {len(s.steps)} {last.kind} {last.chosen} ({last.seconds:.1f}s)")
        if len(s.steps) in skips:
            snapshots[len(s.steps)] = copy.deepcopy(s)

    state = SearchState(BranchScales(len(ws.stack.layers)).to(ws.stack.device))
    Selector(ws.stack, ws.calib, ws.teacher, options, candidates, Silent()).run(state, on_step)
    for k in skips:
        s = snapshots[k]
        steps_s = base + sum(st.seconds for st in s.steps)
        rows.append(row(ws, options, name, s.skip, s.scales, steps_s, console, s.maps))
    return state.order


def row(
    ws: Workspace, options: SearchOptions, name: str, skip: list[int], scales: BranchScales | None,
    seconds: float, console: Console, maps: dict[int, torch.Tensor] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Held-out metrics of ``skip`` skipped and ``maps`` in place; ``scales`` given: after
    the final training from them (of the maps too)."""
    maps = maps or {}
    if scales is None:
        final = BranchScales(len(ws.stack.layers))
    else:
        t = time.perf_counter()
        final, maps = final_training(ws, options, skip, scales, Silent(), maps)
        seconds += time.perf_counter() - t
    m = plan_metrics(ws, skip, final, options.batch_size, maps)
    removed = sorted([*skip, *maps])
    r = {"method": name, "skips": len(removed), "blocks": removed, "linear": sorted(maps), "seconds": seconds, **m}
    console.print(r)
    return r


def show(
    rows: list[dict[str, Any]], skips: list[int], options: SearchOptions, original: dict[str, float],
    a: argparse.Namespace,
) -> None:  # fmt: skip
    """The table, and per skip count the speed-up and KL gap of the shortlist vs the paper."""
    table = Table(title="held-out KL to the original model (time: teacher + greedy steps + final training)")
    header = ("skips", "method", "attention removed (L: linear map)", "time s", "held-out KL", "perplexity")
    for col in header:
        table.add_column(col)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for k in skips:
        for r in (r for r in rows if r["skips"] == k):
            blocks = ",".join(f"{i}{'L' if i in r['linear'] else ''}" for i in r["blocks"])
            cells = [str(k), r["method"], blocks, f"{r['seconds']:.0f}", f"{r['kl']:.4f}", f"{r['ppl']:.2f}"]
            table.add_row(*cells)
            md.append("| " + " | ".join(cells) + " |")
    data = f"--data {a.data} (records shuffled with seed {a.data_seed})" if a.data else "the model's own chats"
    lines = [
        f"data: {data}, search seed {a.seed}; {a.samples} x {a.seq_len} training tokens, "
        f"{a.heldout} x {a.seq_len} held-out",
        f"original model: held-out perplexity {original['ppl']:.2f}",
    ]
    for k in skips:
        ours = next((r for r in rows if r["skips"] == k and r["method"] == HOPSCOTCH), None)
        paper = next((r for r in rows if r["skips"] == k and r["method"] == PAPER), None)
        if ours and paper:
            lines.append(
                f"{k} skips: shortlist {options.shortlist} is {paper['seconds'] / ours['seconds']:.1f}x faster than "
                f"--shortlist all, held-out KL {100 * (ours['kl'] / paper['kl'] - 1):+.1f}%"
            )
        for name in REPLACED.values():
            other = next((r for r in rows if r["skips"] == k and r["method"] == name), None)
            if ours and other:
                lines.append(
                    f"{k} blocks: {name} held-out KL {100 * (other['kl'] / ours['kl'] - 1):+.1f}% vs skip, "
                    f"time x{other['seconds'] / ours['seconds']:.1f}, {len(other['linear'])} linear"
                )
        base = [r for r in rows if r["skips"] == k and r["method"] in BASELINES]
        if base:
            best = min(base, key=lambda r: r["kl"])
            for r in (r for r in rows if r["skips"] == k and r["method"] not in BASELINES):
                lines.append(
                    f"{k} blocks: {r['method']} held-out KL {100 * (r['kl'] / best['kl'] - 1):+.1f}% vs the best "
                    f"baseline ({best['method']}, {best['kl']:.4f})"
                )
    print_results(table, lines, md, a.markdown)


def print_results(table: Table, lines: list[str], md: list[str], markdown: Path | None) -> None:
    """The table and the lines under it, and (``--markdown``) both as markdown."""
    console = Console()
    console.print(table)
    for line in lines:
        console.print(line)
    if markdown:
        markdown.write_text("\n".join(md + [""] + [f"- {line}" for line in lines]) + "\n")


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
