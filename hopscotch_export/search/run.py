"""``run_search``: model + options -> plan file, resumable, as the CLI and the one command call it."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ..errors import HopscotchError
from ..files import check_writable, write_text_atomic
from ..plan import ModelRef, Plan, load_plan
from ..progress import progress_bars
from ..resources import check, one_line
from ..sources import ModelSource
from ..stack import Stack, module_device
from ..torch_plan import BranchScales, plan_maps, scaled_model
from . import distributed
from .calibration import Calibration, build_calibration, save_records
from .curve import Point, Snapshot, at_least, curve_json, curve_table, point
from .curve_plot import plot_curve
from ..text_sources import read_records
from .generate import BASE_MODEL_NOTICE, describe_generation, generated_records
from .greedy import LINEAR, Progress, SearchState, Selector, Step
from .objective import Teacher, batches, heldout_metrics, teacher_heldout, teacher_topk
from .options import SearchOptions, device_name
from .placement import plan_placement
from .display import RichSteps, Silent, summary_tables
from .savings import blocks
from .units import BLOCK, kv_heads, replay
from .train import mean_loss, train_scales

TOOL = "hopscotch-export search"


class SearchInterrupted(HopscotchError):
    """Ctrl-C: the partial plan of the last finished step is on disk."""


class ProcessFailed(SearchInterrupted):
    """Under torchrun, another process of the search died, or torchrun stopped this one."""


class NoCountWithinLimits(HopscotchError):
    """``--skips auto``: even one removed block exceeds the limits; carries the curve."""

    def __init__(self, curve: dict[str, Any], message: str) -> None:
        super().__init__(message)
        self.curve = curve


@dataclass
class Workspace:
    """A loaded model with its calibration data and teacher outputs: what every search run
    (and the benchmark's baselines) works on."""

    stack: Stack
    calib: Calibration
    teacher: Teacher
    data: dict[str, Any]
    device: str
    seconds: dict[str, float]


def run_search(
    source: ModelSource,
    options: SearchOptions,
    out: Path,
    *,
    resume: Path | None = None,
    force: bool = False,
    console: Console | None = None,
    curve_out: Path | None = None,
    resume_hint: str | None = None,
    count_plans: Path | None = None,
) -> Plan:
    """Search ``options.skips`` attention blocks to remove (skip, or replace by linear maps
    per ``options.replace``) and their scales; write the plan to ``out``.

    A partial plan (``complete=False``) is written after every greedy step; ``resume``
    continues one. Raises :class:`HopscotchError` for anything the user can fix. Under
    torchrun every process calls this with the same arguments: they share each step's
    candidates, and rank 0 alone writes the files and reports. With ``--skips auto`` the
    quality curve goes to ``curve_out`` (default ``<plan>.curve.json``) and a plot beside it
    (``.png``), also when no count is within the limits. ``resume_hint`` is how an
    interrupted run is continued (default: ``--resume OUT``), for callers with their own way.
    ``count_plans`` (a folder, ``--skips auto``) receives the complete plan of every count
    on the curve as ``<count>.json``: the one command measures them as verify does before
    it chooses (docs/quality-curve.md).
    """
    out = Path(out)
    ref = source.model_ref()
    options = options.for_spec(source.spec)
    candidates = options.candidates(ref.n_layers)
    curves = curve_paths(out, curve_out) if options.curve else ()
    state: SearchState | None = None
    with distributed.session(cuda=device_name(options.device) == "cuda"):
        main = distributed.rank() == 0
        console = (console or Console(stderr=True)) if main else Console(quiet=True)
        if not main:  # nor the libraries' bars
            from transformers.utils import logging

            logging.disable_progress_bar()
        try:
            prior, data_file = distributed.shared(lambda: _outputs(out, resume, ref, options, force, curves))
            ws = prepare(source, options, console, data_file=data_file, save_data=prior is None, force=force)
            if prior is not None and prior.provenance["data"]["hash"] != ws.calib.hash:
                raise HopscotchError(
                    f"the calibration data differs from the run in {resume} (hash "
                    f"{prior.provenance['data']['hash']} vs {ws.calib.hash}); resume with the same --data options"
                )
            if data_file is not None:
                ws.data["file"] = os.path.relpath(data_file, out.parent)
            state = _initial_state(prior, ref, options, ws.stack)
            with progress_bars(console) as bars:
                progress = RichSteps(bars) if main else Silent()
                try:
                    plan = search_workspace(ws, options, candidates, state, ref, out, progress, count_plans)
                except NoCountWithinLimits as e:
                    if main:
                        write_curve(e.curve, curves, console, force)
                    raise
        except KeyboardInterrupt as e:  # Ctrl-C, or another process of a distributed search is gone
            raise _interrupted(e, state, out, resume_hint or f"continue with --resume {out}") from None
    if main:
        for table in summary_tables(plan.provenance["search"]["steps"], plan.provenance["heldout"], options.objective):
            console.print(table)
        if options.curve:
            write_curve(plan.provenance["curve"], curves, console, force)
        linear = f", linear maps for layers {list(plan.linear)}" if plan.linear else ""
        cut = f", KV groups kept {dict(plan.kv_groups)}" if plan.kv_groups else ""
        saving = f" ({plan.kv_saving():.1%} of the KV cache)" if options.unit != BLOCK else ""
        console.print(f"skip attention of layers {list(plan.skip)}{linear}{cut}{saving}; plan written to {out}")
    return plan


def curve_paths(out: Path, curve_out: Path | None) -> tuple[Path, Path]:
    """The curve's JSON and plot: ``curve_out`` (default ``<plan>.curve.json``) and its ``.png``."""
    json_path = Path(curve_out) if curve_out is not None else out.with_name(out.stem + ".curve.json")
    return json_path, json_path.with_suffix(".png")


def write_curve(curve: dict[str, Any], paths: tuple[Path, ...], console: Console, force: bool) -> None:
    """The curve as a table, and its JSON and plot files."""
    json_path, png_path = paths
    console.print(curve_table(curve))
    write_text_atomic(json_path, json.dumps(curve, indent=1) + "\n", force=force)
    plot_curve(curve, png_path, force=force)
    console.print(f"quality curve written to {json_path} and {png_path}", highlight=False)


def _outputs(
    out: Path, resume: Path | None, ref: ModelRef, options: SearchOptions, force: bool, also: tuple[Path, ...] = ()
) -> tuple[Plan | None, Path | None]:
    """The partial plan to continue and the calibration chats' file, after checking that no
    output (nor the files in ``also``) would overwrite what the user owns (before hours of work)."""
    prior = _resumable(resume, ref, options) if resume is not None else None
    for path in also:
        check_writable(path, force)
    if prior is None or out.resolve() != Path(resume).resolve():  # type: ignore[arg-type]
        check_writable(out, force)
    data_file = None
    if options.data is None:
        data_file = _recorded_data_file(prior, resume) if prior else out.with_name(out.stem + ".calibration.jsonl")
        if prior is None:
            check_writable(data_file, force)
    return prior, data_file


def _interrupted(e: KeyboardInterrupt, state: SearchState | None, out: Path, hint: str) -> SearchInterrupted:
    """The error for Ctrl-C or a lost process: where the partial plan is, how to continue."""
    error, what = SearchInterrupted, "interrupted"
    if isinstance(e, distributed.Stopped):
        error, what = ProcessFailed, "a process of the distributed search failed or was stopped"
    if state is not None and state.steps:
        return error(f"{what}; the plan after {len(state.steps)} step(s) is in {out}, {hint}")
    return error(f"{what} before the first step finished; nothing was saved")


def prepare(
    source: ModelSource, options: SearchOptions, console: Console, *, data_file: Path | None,
    save_data: bool, force: bool,
) -> Workspace:  # fmt: skip
    """Load the model on the chosen device, build the calibration data, run the teacher."""
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    placement = plan_placement(
        source.spec, options, distributed.local_gpus(), distributed.processes_on_node(), source.kind
    )
    check(placement.needs)
    console.print(f"estimated need: {one_line(placement.needs)} (--dry-run for details)", highlight=False)
    if source.spec.notice:
        console.print(f"[yellow]note:[/] {source.spec.notice}", highlight=False)
    if placement.notice:
        console.print(f"[yellow]note:[/] {placement.notice}", highlight=False)
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    with console.status("loading the model"):
        model = source.load_torch(placement.torch_dtype, device_map=placement.device_map, max_memory=placement.max_memory)
        model.requires_grad_(False)
        model.eval()
        tokenizer = source.load_tokenizer()
    stack = Stack(model)
    where = describe_device(model, placement.dtype)
    console.print(f"model loaded on {where}", highlight=False)
    seconds["load"] = time.perf_counter() - t
    t = time.perf_counter()
    with progress_bars(console) as bars:  # counts sequences as they fill (the model may be writing them)
        bar = bars.add_task("calibration sequences", total=options.samples + options.heldout)
        if options.data is not None:
            records = read_records(options.data, options.data_config, options.data_split, options.data_field)
            data: dict[str, Any] = {
                "kind": "dataset", "source": options.data, "config": options.data_config,
                "split": options.data_split, "field": options.data_field,
            }  # fmt: skip
        else:
            data = describe_generation(tokenizer, options.seed)
            if data["kind"] == "generated-text":
                console.print(f"[yellow]note:[/] {BASE_MODEL_NOTICE}", highlight=False)
            if save_data:
                records = generated_records(
                    model, tokenizer, seed=options.seed, max_new_tokens=options.max_new_tokens,
                    batch_size=max(8, options.batch_size), device=stack.device,
                )  # fmt: skip
            else:  # resumed: the records the model wrote, chats or plain text
                assert data_file is not None
                records = read_records(str(data_file), None, "train", None)
        # rank 0 packs the sequences for every process (records are lazy: the model writes its chats there alone)
        calib = distributed.shared(
            lambda: build_calibration(
                records, tokenizer, options.samples, options.heldout, options.seq_len, lambda: bars.advance(bar)
            )
        )
        if options.data is None and save_data and distributed.rank() == 0:
            assert data_file is not None
            save_records(calib.records, data_file, force)
    data.update(calib.describe())
    seconds["data"] = time.perf_counter() - t
    t = time.perf_counter()
    with console.status("running the original model once (teacher)"):
        cache = placement.cache_device
        topk = teacher_topk(stack, calib, options.batch_size, cache) if options.objective == "kl" else (None, None)
        seconds["teacher"] = time.perf_counter() - t
        t = time.perf_counter()
        held = teacher_heldout(stack, calib, options.batch_size, cache)
        seconds["teacher_heldout"] = time.perf_counter() - t
    return Workspace(stack, calib, Teacher(*topk, held), data, where, seconds)


def describe_device(model: Any, dtype: str) -> str:
    """``cuda:0, cuda:1, cpu (bfloat16)``: where accelerate put the weights."""
    devices = sorted({str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()})
    where = ", ".join(devices) if devices else str(next(model.parameters()).device)
    return f"{where} ({dtype})"


def search_workspace(
    ws: Workspace, options: SearchOptions, candidates: list[int], state: SearchState, ref: ModelRef,
    out: Path, progress: Progress, count_plans: Path | None = None,
) -> Plan:  # fmt: skip
    """Greedy steps (saving a partial plan after each), final training, held-out report;
    with ``--skips auto``, a final training and held-out figures for every count (with
    KV-group units: every block's worth of KV) (the curve, in the plan's provenance) and
    the plan of the largest count within the limits; the plan of every count goes to
    ``count_plans`` when given."""
    o = options
    main = distributed.rank() == 0  # the only process that writes; the others compute the same plan
    base = original_loss(ws, o)
    #: blocks' worth of KV a resumed run had freed (its curve points up to it start from its scales)
    resumed = state.removed.saved // state.n_kv
    #: the first kept state at or past each block's worth of KV, by KV groups freed: the
    #: curve's points (a resumed run's earlier steps share its current scales and maps)
    snapshots: dict[int, Snapshot] = {}
    if o.curve and state.steps:
        now = Snapshot.of(state)
        for n in range(1, len(state.steps) + 1):
            saved = replay(state.steps[:n], state.n_kv).saved
            if saved // state.n_kv > max((s // state.n_kv for s in snapshots), default=0):
                snapshots[saved] = dataclasses.replace(now, steps=state.steps[:n])

    def on_step(s: SearchState) -> None:
        saved = s.removed.saved
        if o.curve and saved // s.n_kv > max((n // s.n_kv for n in snapshots), default=0):
            snapshots[saved] = Snapshot.of(s)
        if main:
            _plan(ref, s, s.scales, s.maps, ws, o, candidates, base, complete=False).save(out, force=True)

    def save_count(k: int, at_k: SearchState, final: BranchScales, maps: dict[int, torch.Tensor],
                   measured: dict[str, dict[str, float]]) -> None:  # fmt: skip
        heldout = evaluate(ws, at_k, final, maps, o.batch_size, measured)
        plan = _plan(ref, at_k, final, maps, ws, o, candidates, base, complete=True, heldout=heldout)
        if main:
            plan.save(Path(count_plans) / f"{k}.json", force=True)  # type: ignore[arg-type]

    if state.steps:  # resumed: the partial plan lives at ``out`` from now on
        on_step(state)
    earlier = sum(s.seconds for s in state.steps)  # a resumed auto run: its path's steps only
    selector = Selector(ws.stack, ws.calib, ws.teacher, o, candidates, progress)
    selector.run(state, on_step)
    ws.seconds["steps"] = earlier + selector.seconds
    t = time.perf_counter()
    curve, measured = None, {}
    if o.curve:
        keep = save_count if count_plans is not None else None
        state, final, maps, curve, measured = _trace_curve(ws, o, state, snapshots, resumed, progress, keep)
    else:
        final, maps = final_training(
            ws, o, state.skip, state.scales, progress, state.maps, groups=state.kv_groups
        )
    ws.seconds["final"] = time.perf_counter() - t
    t = time.perf_counter()
    heldout = evaluate(ws, state, final, maps, o.batch_size, measured)
    ws.seconds["eval"] = time.perf_counter() - t
    plan = _plan(ref, state, final, maps, ws, o, candidates, base, complete=True, heldout=heldout, curve=curve)
    if main:
        plan.save(out, force=True)
    return plan


def _trace_curve(
    ws: Workspace, o: SearchOptions, state: SearchState, snapshots: dict[int, Snapshot], resumed: int,
    progress: Progress, keep: Callable[[int, SearchState, BranchScales, dict[int, torch.Tensor],
                                        dict[str, dict[str, float]]], None] | None = None,
) -> tuple[SearchState, BranchScales, dict[int, torch.Tensor], dict[str, Any], dict[str, dict[str, float]]]:
    """A final training and held-out figures for every count of removed blocks (with
    KV-group units: for the kept state with the fewest groups freed that frees each count's
    worth of KV, :func:`curve.at_least`); the state
    of the largest count within the limits with its trained scales and maps, the curve, and
    the held-out metrics already measured (the original model's and that count's plan's).
    ``keep`` is given every count as it is trained (count, state, scales, maps, those
    metrics). Raises :class:`NoCountWithinLimits`, carrying the curve, if no
    count is within."""
    original = heldout_metrics(ws.stack, ws.calib, ws.teacher, o.batch_size)
    points: list[Point] = []
    best: tuple[SearchState, BranchScales, dict[int, torch.Tensor], dict[str, float]] | None = None
    for k in range(1, o.skips + 1):
        kept = at_least(snapshots, k * state.n_kv)
        if kept is None:
            break
        steps = kept.steps
        scales, maps = kept.restore(state.scales)
        at_k = SearchState(scales, steps, maps, state.n_kv)
        final, trained = final_training(
            ws, o, at_k.skip, scales, progress, maps, label=f"final training {k}", groups=at_k.kv_groups
        )
        metrics = plan_metrics(ws, at_k.skip, final, o.batch_size, trained, at_k.kv_groups)
        points.append(point(steps, metrics, original, ws.stack.config, o, k))
        if keep is not None:
            keep(k, at_k, final, trained, {"original": original, "final": metrics})
        if points[-1].within:
            best = at_k, final, trained, points[-1].metrics
    curve = curve_json(points, original, o, resumed)
    if best is None:
        first = points[0]
        one = "1 block" if o.unit == BLOCK else "1 block's worth of KV"
        raise NoCountWithinLimits(
            curve,
            f"no count of removed blocks stays within the limits: {one} gives held-out KL {first.metrics['kl']:.4f} "
            f"and perplexity {first.ppl_increase_pct:+.1f}%; raise --max-kl / --max-ppl-increase",
        )
    at_k, final, trained, metrics = best
    return at_k, final, trained, curve, {"original": original, "final": metrics}


def final_training(
    ws: Workspace, o: SearchOptions, skip: list[int], scales: BranchScales, progress: Progress,
    maps: dict[int, torch.Tensor] | None = None, label: str = "final training",
    groups: dict[int, tuple[int, ...]] | None = None,
) -> tuple[BranchScales, dict[int, torch.Tensor]]:  # fmt: skip
    """The longer training of every scale for the chosen blocks, with the linear layers'
    ``maps`` held as the steps left them; then, when there are maps, ``o.map_epochs`` of
    the maps trained with the scales; partly cut layers keep their KV ``groups``.
    ``scales`` and ``maps`` are left as they are.

    Two phases rather than one joint run: a plan without maps trains exactly as before,
    ``--linear-epochs 0`` gives the maps as the greedy steps fitted and trained them, and
    the maps' phase starts from scales already settled on the chosen blocks."""
    final = copy.deepcopy(scales)
    maps = {i: m.clone() for i, m in (maps or {}).items()}
    map_epochs = o.map_epochs if maps else 0
    progress.begin(label, (o.final_epochs + map_epochs) * len(batches(o.samples, o.batch_size)))
    train_scales(
        ws.stack, final, skip, ws.calib, ws.teacher, o.objective, lr=o.final_lr, epochs=o.final_epochs,
        batch_size=o.batch_size, seed=o.seed * 1_000_003, where="in the final training", on_batch=progress.advance,
        maps=maps, kv_groups=groups,
    )  # fmt: skip
    if map_epochs:
        train_scales(
            ws.stack, final, skip, ws.calib, ws.teacher, o.objective, lr=o.final_lr, epochs=map_epochs,
            batch_size=o.batch_size, seed=o.seed * 1_000_003 - 1, where="in the final training of the linear maps",
            on_batch=progress.advance, maps=maps, map_lr=o.map_lr, kv_groups=groups,
        )  # fmt: skip
    return final, maps


def original_loss(ws: Workspace, o: SearchOptions) -> float:
    """The original model's objective on the training sequences, from which the first
    block's cost is counted: 0 for ``kl`` (the teacher is this model), computed for ``ce``."""
    if o.objective == "kl":
        return 0.0
    ones = BranchScales(ws.stack.n_layers).to(ws.stack.device)
    return mean_loss(
        ws.stack, ones, [], ws.calib, ws.teacher, o.objective, n_rows=o.samples, batch_size=o.batch_size,
        where="of the original model",
    )  # fmt: skip


def evaluate(
    ws: Workspace, state: SearchState, scales: BranchScales, maps: dict[int, torch.Tensor], batch_size: int,
    measured: dict[str, dict[str, float]] | None = None,
) -> dict[str, dict[str, float]]:
    """Held-out metrics of the original model, of the removals alone (the maps as the steps
    left them, scales = 1), and of the plan (final scales and maps); those in ``measured``
    (the quality curve's) are not measured again."""
    ones = BranchScales(*scales.attn.shape).to(scales.attn.device)  # (layers,) or (layers, hidden)
    groups = state.kv_groups
    runs = {
        "original": lambda: heldout_metrics(ws.stack, ws.calib, ws.teacher, batch_size),
        "no_scales": lambda: plan_metrics(ws, state.skip, ones, batch_size, state.maps, groups),
        "final": lambda: plan_metrics(ws, state.skip, scales, batch_size, maps, groups),
    }
    measured = measured or {}
    return {key: measured[key] if key in measured else run() for key, run in runs.items()}


def plan_metrics(
    ws: Workspace, skip: list[int], scales: BranchScales, batch_size: int,
    maps: dict[int, torch.Tensor] | None = None, groups: dict[int, tuple[int, ...]] | None = None,
) -> dict[str, float]:  # fmt: skip
    """Held-out metrics of the model with ``skip`` skipped, ``maps`` in place, partly cut
    layers keeping their KV ``groups``, and ``scales`` applied."""
    with scaled_model(ws.stack.model, scales, skip, maps, groups):
        return heldout_metrics(ws.stack, ws.calib, ws.teacher, batch_size)


def _plan(
    ref: ModelRef, state: SearchState, scales: BranchScales, maps: dict[int, torch.Tensor], ws: Workspace,
    options: SearchOptions, candidates: list[int], base_loss: float, *, complete: bool,
    heldout: dict[str, Any] | None = None, curve: dict[str, Any] | None = None,
) -> Plan:  # fmt: skip
    attn, mlp = scales.as_lists()
    steps = state.steps
    seconds = {"steps": sum(s.seconds for s in steps), **ws.seconds}  # a partial plan: its steps so far
    method = "Hopscotch greedy block selection with branch scales (arXiv 2506.03303)"
    if options.replace != "skip":
        method += "; removed blocks may be replaced by fitted linear maps (llama.cpp deci linear attention)"
    search = {
        "candidates": candidates, "order": state.order, "steps": [s.to_json() for s in steps],
        "blocks": blocks(steps, ws.stack.config, base_loss),
    }  # fmt: skip
    if options.unit != BLOCK:
        method += "; single KV groups (a KV head and its query heads) are removed as units too"
        n_kv = kv_heads(ws.stack.config)
        target = options.kv_target(ref.n_layers, n_kv)
        search |= {"unit": options.unit, "kv_target": {"groups": target, "of": ref.n_layers * n_kv,
                   "fraction": target / (ref.n_layers * n_kv)}}  # fmt: skip
    provenance: dict[str, Any] = {
        "tool": TOOL,
        "method": method,
        "options": options.to_json(),
        "data": ws.data,
        "device": ws.device,
        "processes": distributed.world_size(),
        "search": search,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    if heldout is not None:
        provenance["heldout"] = heldout
    if curve is not None:
        provenance["curve"] = curve
    removed = state.removed
    linear = sorted(removed.linear)
    arrays = {i: maps[i].detach().cpu().numpy() for i in linear}
    return Plan(
        ref, tuple(sorted(removed.skip)), tuple(attn), tuple(mlp), provenance, complete, tuple(linear), arrays,
        removed.kv_groups,
    )  # fmt: skip


def _resumable(resume: Path, ref: ModelRef, options: SearchOptions) -> Plan:
    """The partial plan to continue, after checking it belongs to this model and these options."""
    plan = load_plan(resume)
    if plan.complete:
        raise HopscotchError(f"{resume} is a finished plan; start a new search instead of --resume")
    prov = plan.provenance
    if prov.get("tool") != TOOL or "search" not in prov:
        raise HopscotchError(f"{resume} was not written by {TOOL}; it cannot be resumed")
    plan.check_model(ref, fix="start a new search on this model (without --resume)")
    diff = options.selection_mismatch(prov["options"])
    if diff:
        raise HopscotchError(
            f"--resume {resume}: options differ from the interrupted run ({'; '.join(diff)}); rerun with the same ones"
        )
    n_kv = ref.n_kv_heads or 1
    done = replay([Step.from_json(s) for s in prov["search"]["steps"]], n_kv).saved
    target = options.kv_target(ref.n_layers, n_kv)
    if done > target:
        what = (f"{done // n_kv} blocks, more than --skips {options.skips}" if options.unit == BLOCK
                else f"{done} KV groups, more than the budget's {target}")  # fmt: skip
        raise HopscotchError(f"{resume} already removes {what}; give a larger budget or start a new search")
    return plan


def _recorded_data_file(prior: Plan, resume: Path | None) -> Path:
    assert resume is not None
    path = Path(resume).parent / prior.provenance["data"]["file"]
    if not path.is_file():
        raise HopscotchError(f"the calibration data of {resume} ({path}) is missing; start a new search")
    return path


def _initial_state(prior: Plan | None, ref: ModelRef, options: SearchOptions, stack: Stack) -> SearchState:
    n_kv = kv_heads(stack.config)
    if prior is None:
        hidden = ref.hidden_size if options.granularity == "channel" else None
        return SearchState(BranchScales(ref.n_layers, hidden).to(stack.device), n_kv=n_kv)
    steps = [Step.from_json(s) for s in prior.provenance["search"]["steps"]]
    maps = {i: m.to(module_device(stack.layers[i])) for i, m in plan_maps(prior).items()}
    return SearchState(BranchScales.from_plan(prior).to(stack.device), steps, maps, n_kv)
