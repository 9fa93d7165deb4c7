"""Where and in which dtype the search runs, decided from the model's shapes before loading.

The estimate counts what the search holds at its peak: the weights in the chosen dtype,
the teacher's cache (top-k ids and log-probabilities of every training token, the final
hidden state of every held-out token) and the largest activations of one batch (scoring
caches every layer's input; training keeps every layer's activations for the backward
pass; each holds a batch of logits over the vocabulary). On a GPU the weights go to the
first GPUs that have room (accelerate's ``device_map="sequential"`` with ``max_memory``),
what does not fit stays on the CPU, and a large teacher cache stays in RAM. A GGUF source
is first built whole in RAM before it moves to a GPU: that load is a need of its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import HopscotchError
from ..estimates import (
    PROCESS_BASE,
    Need,
    available,
    fits,
    human,
    linear_map_bytes,
    search_activation_bytes,
    source_overhead,
    teacher_cache_bytes,
    weight_bytes,
)
from ..families import ModelSpec
from .linear import groups
from .objective import TOPK
from .options import SearchOptions, device_name

#: The teacher cache stays on the GPU only below this size; above, it is kept in RAM and a
#: batch's share is copied over when the loss needs it (a few MB per batch).
TEACHER_ON_GPU_MAX = 1 * 2**30

#: Bytes of a GPU that accelerate may not fill with weights: CUDA context and allocator slack.
GPU_MARGIN = 2 * 2**30

FIX = (
    "lower --samples / --seq-len / --batch-size, pass --dtype bfloat16, or search on a GPU (--device cuda); "
    "--dry-run shows the estimate"
)

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Placement:
    """The device, dtype and accelerate placement of one search, and what it will need."""

    device: torch.device
    dtype: str
    #: ``from_pretrained``'s device_map (None: plain CPU) and max_memory (None: no limit)
    device_map: Any
    max_memory: dict[Any, int] | None
    needs: list[Need]
    #: where the teacher's cache lives
    cache_device: torch.device
    #: said to the user when the choice is not what they might expect (bf16 on CPU)
    notice: str | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[self.dtype]

    def describe(self) -> str:
        """``cpu (float32)``, ``cuda:0 (bfloat16)``, ``cuda:0-3 + CPU offload (bfloat16)``."""
        if not self.max_memory:
            return f"{self.device} ({self.dtype})"
        gpus = [k for k in self.max_memory if k != "cpu"]
        offload = " + CPU offload" if "cpu" in self.max_memory else ""
        return f"cuda:{gpus[0]}-{gpus[-1]}{offload} ({self.dtype})"


def search_parts(spec: ModelSpec, options: SearchOptions, dtype: str) -> dict[str, int]:
    """Bytes by part: ``weights``, ``teacher cache``, ``activations`` (the largest phase),
    and with ``--replace linear|auto`` the ``linear maps`` (the layers of one fitting pass
    are :func:`.linear.groups`' first group)."""
    parts = {
        "weights": weight_bytes(spec, dtype),
        "teacher cache": teacher_cache_bytes(spec, options.samples, options.heldout, options.seq_len, TOPK, dtype),
        "activations": search_activation_bytes(spec, options.batch_size, options.seq_len, dtype),
    }
    if options.replace != "skip":
        fitted_together = len(groups(list(range(spec.n_layers)), spec.hidden_size)[0])
        parts["linear maps"] = linear_map_bytes(spec, options.skips, fitted_together)
    return parts


def plan_placement(
    spec: ModelSpec, options: SearchOptions, gpus: list[int] | None = None, processes: int = 1, source_kind: str = "hf"
) -> Placement:
    """The placement for ``options.device`` / ``options.dtype`` on the GPUs ``gpus`` (default: all),
    with ``processes`` copies of the search sharing this machine's RAM (torchrun), for a
    source of ``source_kind`` (``hf`` or ``gguf``, whose metadata takes RAM)."""
    host = source_overhead(source_kind, spec.vocab_size)
    placement = _placement(spec, options, gpus, host)
    if source_kind == "gguf" and placement.device.type != "cpu":
        placement = dataclasses.replace(placement, needs=[*placement.needs, _gguf_load(spec, placement, host)])
    if processes > 1:  # each process holds its own model and cache in RAM
        needs = [
            Need(n.where, f"{n.what} x {processes} processes", {k: v * processes for k, v in n.parts.items()}, n.fix)
            if n.where == "ram" else n
            for n in placement.needs
        ]  # fmt: skip
        placement = dataclasses.replace(placement, needs=needs)
    return placement


def _gguf_load(spec: ModelSpec, placement: Placement, host: dict[str, int]) -> Need:
    """A GGUF source is built whole in RAM, in the search's dtype, and only then moved to the
    GPU (``GgufFileSource.load_torch``): a peak of its own, before the search holds anything."""
    return Need(
        "ram", f"loading the GGUF source ({placement.dtype}) before it moves to {placement.device}",
        {"process": PROCESS_BASE, **host, "weights, whole in RAM first": weight_bytes(spec, placement.dtype)},
        "free memory, or search the Hugging Face folder of the model (it loads straight to the GPU)",
    )  # fmt: skip


def _placement(spec: ModelSpec, options: SearchOptions, gpus: list[int] | None, host: dict[str, int]) -> Placement:
    name = device_name(options.device)
    if name == "cuda":
        if not torch.cuda.is_available():
            raise HopscotchError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")
        ids = list(range(torch.cuda.device_count())) if gpus is None else gpus
        return _gpus(spec, options, "bfloat16" if options.dtype == "auto" else options.dtype, ids, host)
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise HopscotchError("--device mps: Apple GPU not available; use --device cpu")
        dtype = "bfloat16" if options.dtype == "auto" else options.dtype
        parts = {**search_parts(spec, options, dtype), "process": PROCESS_BASE, **host}
        needs = [Need("ram", f"search on mps ({dtype})", parts, FIX)]
        dev = torch.device("mps")
        return Placement(dev, dtype, "mps", None, needs, dev)
    return _cpu(spec, options, host)


def _cpu(spec: ModelSpec, options: SearchOptions, host: dict[str, int]) -> Placement:
    """float32 when it fits (and ``--dtype auto``), else bfloat16 with a notice."""

    def needs(dtype: str) -> list[Need]:
        parts = {**search_parts(spec, options, dtype), "process": PROCESS_BASE, **host}
        return [Need("ram", f"search on CPU ({dtype})", parts, FIX)]

    cpu = torch.device("cpu")
    notice = None
    dtype = options.dtype
    if dtype == "auto":
        dtype = "float32"
        if not fits(needs("float32")):
            dtype = "bfloat16"
            notice = (
                f"float32 would need {human(needs('float32')[0].bytes)}, more than the "
                f"{human(available('ram') or 0)} free: searching in bfloat16"
            )
    return Placement(cpu, dtype, None, None, needs(dtype), cpu, notice)


def _gpus(spec: ModelSpec, options: SearchOptions, dtype: str, gpus: list[int], host: dict[str, int]) -> Placement:
    """All of the first GPU when the model fits there, else the GPUs in order, then CPU offload."""
    parts = search_parts(spec, options, dtype)
    # the linear maps sit beside a batch's activations, on the GPU that runs their layer
    act, weights, teacher = parts["activations"] + parts.get("linear maps", 0), parts["weights"], parts["teacher cache"]
    cache_on_gpu = teacher <= TEACHER_ON_GPU_MAX
    free = {i: available(f"cuda:{i}") or 0 for i in gpus}
    first_gpu = gpus[0]
    ram_parts = {"process": PROCESS_BASE, **host, **({} if cache_on_gpu else {"teacher cache": teacher})}
    first = {"weights": weights, "activations": act, **({"teacher cache": teacher} if cache_on_gpu else {})}
    gpu = torch.device("cuda", first_gpu)
    if sum(first.values()) + GPU_MARGIN // 2 <= free[first_gpu]:
        needs = [Need(str(gpu), f"search on {gpu} ({dtype})", first, FIX), Need("ram", "search (host side)", ram_parts, FIX)]
        return Placement(gpu, dtype, {"": first_gpu}, None, needs, gpu if cache_on_gpu else torch.device("cpu"))
    # Spread: every GPU keeps room for one batch's activations; the rest of RAM takes the overflow.
    max_memory: dict[Any, int] = {i: max(0, f - act - GPU_MARGIN) for i, f in free.items()}
    on_gpus = min(weights, sum(max_memory.values()))
    offload = weights - on_gpus
    ram = available("ram") or 0
    if offload:
        max_memory["cpu"] = max(0, ram - sum(ram_parts.values()) - GPU_MARGIN)
        ram_parts["offloaded weights"] = offload
    needs = [
        Need(f"cuda:{i}", f"search on cuda:{i} ({dtype})", {"weights": min(max_memory[i], weights), "activations": act}, FIX)
        for i in free
        if max_memory[i] > 0
    ]
    needs.append(Need("ram", "search (host side)", ram_parts, FIX))
    return Placement(gpu, dtype, "sequential", max_memory, needs, torch.device("cpu"))
