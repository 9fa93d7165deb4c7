"""``run_search``: model + options -> plan file, resumable, as the CLI and the pipeline call it."""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ..errors import HopscotchError
from ..files import check_writable
from ..plan import ModelRef, Plan, load_plan
from ..progress import progress_bars
from ..sources import ModelSource
from ..torch_plan import BranchScales, scaled_model
from .calibration import Calibration, build_calibration, save_records
from .data import read_records
from .generate import generated_chats
from .greedy import Progress, SearchState, Selector, Step
from .objective import Teacher, batches, heldout_metrics, teacher_heldout, teacher_topk
from .options import SearchOptions, device_name
from .report import RichSteps, summary_tables
from ..stack import Stack
from .train import train_scales

TOOL = "hopscotch-export search"


class SearchInterrupted(HopscotchError):
    """Ctrl-C: the partial plan of the last finished step is on disk."""


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
) -> Plan:
    """Search ``options.skips`` attention blocks to skip and their scales; write the plan to ``out``.

    A partial plan (``complete=False``) is written after every greedy step; ``resume``
    continues one. Raises :class:`HopscotchError` for anything the user can fix.
    """
    console = console or Console(stderr=True)
    out = Path(out)
    ref = source.model_ref()
    candidates = options.candidates(ref.n_layers)
    prior = _resumable(resume, ref, options) if resume is not None else None
    if prior is None or out.resolve() != Path(resume).resolve():  # type: ignore[arg-type]
        check_writable(out, force)
    data_file = None
    if options.data is None:
        data_file = _recorded_data_file(prior, resume) if prior else out.with_name(out.stem + ".calibration.jsonl")
        if prior is None:
            check_writable(data_file, force)
    state: SearchState | None = None
    try:
        ws = prepare(source, options, console, data_file=data_file, save_data=prior is None, force=force)
        if prior is not None and prior.provenance["data"]["hash"] != ws.calib.hash:
            raise HopscotchError(
                f"the calibration data differs from the run in {resume} (hash "
                f"{prior.provenance['data']['hash']} vs {ws.calib.hash}); resume with the same --data options"
            )
        if data_file is not None:
            ws.data["file"] = os.path.relpath(data_file, out.parent)
        state = _initial_state(prior, ref, options, ws.stack.device)
        with progress_bars(console) as bars:
            plan = search_workspace(ws, options, candidates, state, ref, out, RichSteps(bars))
    except KeyboardInterrupt:
        if state is not None and state.steps:
            raise SearchInterrupted(
                f"interrupted; the plan after {len(state.steps)} step(s) is in {out}, continue with --resume {out}"
            ) from None
        raise SearchInterrupted("interrupted before the first step finished; nothing was saved") from None
    for table in summary_tables(plan.provenance["search"]["steps"], plan.provenance["heldout"], options.objective):
        console.print(table)
    console.print(f"skip attention of layers {list(plan.skip)}; plan written to {out}")
    return plan


def prepare(
    source: ModelSource, options: SearchOptions, console: Console, *, data_file: Path | None,
    save_data: bool, force: bool,
) -> Workspace:  # fmt: skip
    """Load the model on the chosen device, build the calibration data, run the teacher."""
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    device, dtype, device_map = resolve_device(options.device)
    torch.manual_seed(options.seed)
    with console.status("loading the model"):
        model = source.load_torch(dtype, device_map=device_map)
        model.requires_grad_(False)
        model.eval()
        tokenizer = source.load_tokenizer()
    stack = Stack(model)
    seconds["load"] = time.perf_counter() - t
    t = time.perf_counter()
    with console.status("preparing calibration data"):
        if options.data is not None:
            records = read_records(options.data, options.data_config, options.data_split, options.data_field)
            data: dict[str, Any] = {
                "kind": "dataset", "source": options.data, "config": options.data_config,
                "split": options.data_split, "field": options.data_field,
            }  # fmt: skip
        elif save_data:
            records = generated_chats(
                model, tokenizer, seed=options.seed, max_new_tokens=options.max_new_tokens,
                batch_size=max(8, options.batch_size), device=stack.device,
            )  # fmt: skip
            data = {"kind": "generated", "prompts": "hopscotch_export/search/prompts.txt", "seed": options.seed}
        else:
            assert data_file is not None
            records = read_records(str(data_file), None, "train", "messages")
            data = {"kind": "generated", "prompts": "hopscotch_export/search/prompts.txt", "seed": options.seed}
        calib = build_calibration(records, tokenizer, options.samples, options.heldout, options.seq_len)
        if options.data is None and save_data:
            assert data_file is not None
            save_records(calib.records, data_file, force)
    data.update(calib.describe())
    seconds["data"] = time.perf_counter() - t
    t = time.perf_counter()
    with console.status("running the original model once (teacher)"):
        topk = teacher_topk(stack, calib, options.batch_size) if options.objective == "kl" else (None, None)
        seconds["teacher"] = time.perf_counter() - t
        t = time.perf_counter()
        held = teacher_heldout(stack, calib, options.batch_size)
        seconds["teacher_heldout"] = time.perf_counter() - t
    return Workspace(stack, calib, Teacher(*topk, held), data, describe_device(model, dtype), seconds)


def resolve_device(name: str) -> tuple[torch.device, torch.dtype, Any]:
    """(device, dtype, device_map): bf16 on GPUs (spread over all CUDA GPUs), fp32 on CPU."""
    name = device_name(name)
    if name == "cuda":
        if not torch.cuda.is_available():
            raise HopscotchError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")
        return torch.device("cuda"), torch.bfloat16, "auto"
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise HopscotchError("--device mps: Apple GPU not available; use --device cpu")
        return torch.device("mps"), torch.bfloat16, "mps"
    return torch.device("cpu"), torch.float32, None


def describe_device(model: Any, dtype: torch.dtype) -> str:
    devices = sorted({str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()})
    where = ", ".join(devices) if devices else str(next(model.parameters()).device)
    return f"{where} ({str(dtype).removeprefix('torch.')})"


def search_workspace(
    ws: Workspace, options: SearchOptions, candidates: list[int], state: SearchState, ref: ModelRef,
    out: Path, progress: Progress,
) -> Plan:  # fmt: skip
    """Greedy steps (saving a partial plan after each), final training, held-out report."""
    o = options

    def save_partial(s: SearchState) -> None:
        _plan(ref, s.order, s.scales, ws, o, candidates, s.steps, complete=False).save(out, force=True)

    if state.steps:  # resumed: the partial plan lives at ``out`` from now on
        save_partial(state)
    Selector(ws.stack, ws.calib, ws.teacher, o, candidates, progress).run(state, save_partial)
    t = time.perf_counter()
    final = final_training(ws, o, state.order, state.scales, progress)
    ws.seconds["final"] = time.perf_counter() - t
    t = time.perf_counter()
    heldout = evaluate(ws, state.order, final, o.batch_size)
    ws.seconds["eval"] = time.perf_counter() - t
    plan = _plan(ref, state.order, final, ws, o, candidates, state.steps, complete=True, heldout=heldout)
    plan.save(out, force=True)
    return plan


def final_training(
    ws: Workspace, o: SearchOptions, order: list[int], scales: BranchScales, progress: Progress
) -> BranchScales:
    """The longer training of every scale for the chosen blocks (``scales`` is left as is)."""
    final = copy.deepcopy(scales)
    progress.begin("final training", o.final_epochs * len(batches(o.samples, o.batch_size)))
    train_scales(
        ws.stack, final, order, ws.calib, ws.teacher, o.objective, lr=o.final_lr, epochs=o.final_epochs,
        batch_size=o.batch_size, seed=o.seed * 1_000_003, where="in the final training", on_batch=progress.advance,
    )  # fmt: skip
    return final


def evaluate(ws: Workspace, order: list[int], scales: BranchScales, batch_size: int) -> dict[str, dict[str, float]]:
    """Held-out metrics of the original model, of the skips alone, and of skips + scales."""
    ones = BranchScales(*scales.attn.shape).to(scales.attn.device)  # (layers,) or (layers, hidden)
    return {
        "original": heldout_metrics(ws.stack, ws.calib, ws.teacher, batch_size),
        "no_scales": plan_metrics(ws, order, ones, batch_size),
        "final": plan_metrics(ws, order, scales, batch_size),
    }


def plan_metrics(ws: Workspace, order: list[int], scales: BranchScales, batch_size: int) -> dict[str, float]:
    """Held-out metrics of the model with ``order`` skipped and ``scales`` applied."""
    with scaled_model(ws.stack.model, scales, order):
        return heldout_metrics(ws.stack, ws.calib, ws.teacher, batch_size)


def _plan(
    ref: ModelRef, order: list[int], scales: BranchScales, ws: Workspace, options: SearchOptions,
    candidates: list[int], steps: list[Step], *, complete: bool, heldout: dict[str, Any] | None = None,
) -> Plan:  # fmt: skip
    attn, mlp = scales.as_lists()
    step_json = [s.to_json() for s in steps]
    seconds = dict(ws.seconds, steps=round(sum(s.seconds for s in steps), 3))
    provenance: dict[str, Any] = {
        "tool": TOOL,
        "method": "Hopscotch greedy block selection with branch scales (arXiv 2506.03303)",
        "options": options.to_json(),
        "data": ws.data,
        "device": ws.device,
        "search": {"candidates": candidates, "order": list(order), "steps": step_json},
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    if heldout is not None:
        provenance["heldout"] = heldout
    return Plan(ref, tuple(sorted(order)), tuple(attn), tuple(mlp), provenance, complete)


def _resumable(resume: Path, ref: ModelRef, options: SearchOptions) -> Plan:
    """The partial plan to continue, after checking it belongs to this model and these options."""
    plan = load_plan(resume)
    if plan.complete:
        raise HopscotchError(f"{resume} is a finished plan; start a new search instead of --resume")
    prov = plan.provenance
    if prov.get("tool") != TOOL or "search" not in prov:
        raise HopscotchError(f"{resume} was not written by {TOOL}; it cannot be resumed")
    plan.check_model(ref)
    diff = options.selection_mismatch(prov["options"])
    if diff:
        raise HopscotchError(
            f"--resume {resume}: options differ from the interrupted run ({'; '.join(diff)}); rerun with the same ones"
        )
    done = len(prov["search"]["order"])
    if done > options.skips:
        raise HopscotchError(f"{resume} already skips {done} blocks, more than --skips {options.skips}")
    return plan


def _recorded_data_file(prior: Plan, resume: Path | None) -> Path:
    assert resume is not None
    path = Path(resume).parent / prior.provenance["data"]["file"]
    if not path.is_file():
        raise HopscotchError(f"the calibration data of {resume} ({path}) is missing; start a new search")
    return path


def _initial_state(prior: Plan | None, ref: ModelRef, options: SearchOptions, device: torch.device) -> SearchState:
    if prior is None:
        hidden = ref.hidden_size if options.granularity == "channel" else None
        return SearchState(BranchScales(ref.n_layers, hidden).to(device))
    steps = [Step.from_json(s) for s in prior.provenance["search"]["steps"]]
    return SearchState(BranchScales.from_plan(prior).to(device), steps)
