"""The search's first stage: the model loaded, its calibration data, the teacher's outputs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ..decoder_stack import Stack
from ..estimates import check, one_line
from ..progress import progress_bars
from ..sources import ModelSource
from ..text_sources import read_records
from . import distributed
from .calibration import Calibration, build_calibration, save_records
from .generate import BASE_MODEL_NOTICE, describe_generation, generated_records
from .objective import Teacher, teacher_heldout, teacher_topk
from .options import SearchOptions
from .placement import plan_placement


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
