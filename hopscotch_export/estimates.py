"""What a run will need, from the model's shapes alone, against what the machine has.

The one place for the byte arithmetic: each stage lists the parts it holds (which models,
tensors and buffers, in which dtype, how many) and asks this module for their bytes.
Every stage builds a list of :class:`Need` (bytes in RAM, on one GPU, or on the disk that
holds a path) before it reads a weight, prints it when it starts (``--dry-run`` prints it
and stops), and calls :func:`check`, which refuses in one line, naming the need, what is
available and the option that fixes it. A model that does not fit fails in a second,
not after an hour or by the kernel's OOM killer.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from rich.console import Console
from rich.table import Table

from .errors import HopscotchError
from .families import ModelSpec
from .kv_cache import type_bytes

Q = GGMLQuantizationType

GiB = 2**30

#: Resident memory of a Python process that has imported torch, transformers and
#: llama-cpp-python, before any model (measured 345 MiB), with room for the tokenizer and
#: the interpreter's own growth: part of every RAM estimate.
PROCESS_BASE = 400 * 2**20

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

#: Memory gguf-py's reader keeps for a GGUF file's metadata per vocabulary entry (token,
#: score, type and about one merge, each as numpy objects): measured 160 MiB for SmolLM2's
#: 49152 tokens. Held as long as the source is open, so part of every stage reading a GGUF.
GGUF_METADATA_PER_TOKEN = 3400

#: A transformers model with no weights (modules, rotary tables): measured 27 MiB for SmolLM2.
SKELETON_BYTES = 32 * 2**20

#: GGUF header beyond the tensor data: fixed part and per-tensor info (name, shape, offset,
#: alignment padding); tokenizer arrays are counted per vocabulary entry (token string,
#: score, type, and a merge) with room to spare.
_HEADER_BYTES, _PER_TENSOR_BYTES, _PER_TOKEN_BYTES = 2**20, 256, 96

#: float64 arrays of rows x vocabulary alive together while logits are compared (both
#: sides' log-softmax, the exponential, the difference)
KL_TEMPORARIES = 4


def source_overhead(kind: str, vocab_size: int) -> dict[str, int]:
    """Memory that opening a source costs beyond its weights: a GGUF's parsed metadata."""
    return {"GGUF metadata (gguf-py)": GGUF_METADATA_PER_TOKEN * vocab_size} if kind == "gguf" else {}


@dataclass(frozen=True)
class Need:
    """Bytes that one part of a run holds at once in one place."""

    #: ``ram``, ``cuda:N`` or ``disk:PATH`` (the folder a file is written in)
    where: str
    #: what the bytes are for, e.g. ``search (bfloat16)``
    what: str
    #: named parts, added up; the one-line refusal names the largest
    parts: dict[str, int] = field(default_factory=dict)
    #: the option(s) that lower the need, for the refusal
    fix: str = ""

    @property
    def bytes(self) -> int:
        return sum(self.parts.values())


def available(where: str) -> int | None:
    """Free bytes at ``where`` now; None when unknown (no such device, unreadable system)."""
    if where == "ram":
        return _mem_available()
    if where.startswith("cuda:"):
        try:
            import torch

            free, _total = torch.cuda.mem_get_info(int(where.split(":", 1)[1]))
            return int(free)
        except Exception:  # no CUDA build, no such device
            return None
    if where.startswith("disk:"):
        path = Path(where.split(":", 1)[1])
        while not path.exists() and path != path.parent:
            path = path.parent
        return shutil.disk_usage(path).free
    raise ValueError(where)


def _mem_available() -> int | None:
    """``MemAvailable`` from /proc/meminfo (Linux), else the physical total (macOS)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def shortfall(need: Need) -> str | None:
    """The one-line refusal for ``need``, or None when it fits (or the machine cannot tell)."""
    have = available(need.where)
    if have is None or need.bytes <= have:
        return None
    place = "free memory" if need.where == "ram" else (
        f"free on {need.where}" if need.where.startswith("cuda") else f"free disk in {need.where[5:]}"
    )  # fmt: skip
    top = max(need.parts, key=lambda k: need.parts[k]) if need.parts else need.what
    fix = f"; {need.fix}" if need.fix else ""
    return (
        f"{need.what} needs {human(need.bytes)} ({top} {human(need.parts.get(top, need.bytes))}) "
        f"but {human(have)} is {place}{fix}"
    )


def check(needs: Iterable[Need]) -> None:
    """Raise :class:`HopscotchError` (one line) for the first need that does not fit."""
    for need in needs:
        message = shortfall(need)
        if message is not None:
            raise HopscotchError(message)


def fits(needs: Iterable[Need]) -> bool:
    return all(shortfall(n) is None for n in needs)


def table(needs: Iterable[Need], title: str = "estimated need before starting") -> Table:
    """The estimate as a table: where, what, the parts, the total and what is free there."""
    t = Table(title=title)
    for col in ("where", "for", "parts", "total", "available"):
        t.add_column(col, justify="right" if col in ("total", "available") else "left")
    for n in needs:
        have = available(n.where)
        parts = ", ".join(f"{k} {human(v)}" for k, v in n.parts.items())
        t.add_row(n.where, n.what, parts, human(n.bytes), "?" if have is None else human(have))
    return t


def print_report(console: Console, needs: list[Need], title: str) -> bool:
    """``--dry-run``: the estimate as a table and the refusal of each need that would not
    fit; returns whether everything fits."""
    console.print(table(needs, title))
    problems = [m for m in map(shortfall, needs) if m]
    for message in problems:
        console.print(f"[bold red]will not fit:[/] {message}", highlight=False)
    return not problems


def one_line(needs: Iterable[Need]) -> str:
    """``ram 3.1 GiB, cuda:0 17.2 GiB``: the estimate for a progress line."""
    return ", ".join(f"{n.where} {human(n.bytes)}" for n in needs)


def human(n: int | float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def parameter_count(spec: ModelSpec) -> dict[str, int]:
    """Parameters by part: ``embed``, ``head`` (0 when tied), ``layer`` (one decoder layer), ``norm``."""
    h, hd = spec.hidden_size, spec.head_dim
    q, kv = spec.n_heads * hd, spec.n_kv_heads * hd
    attn = h * q + 2 * h * kv + q * h
    if spec.attention_bias:
        attn += q + 2 * kv
    mlp = 3 * h * spec.intermediate_size + (2 * spec.intermediate_size + h if spec.mlp_bias else 0)
    embed = spec.vocab_size * h
    return {
        "embed": embed,
        "head": 0 if spec.tie_embeddings else embed,
        "layer": attn + mlp + 2 * h,
        "attention": attn,
        "norm": h,
    }


def weight_bytes(spec: ModelSpec, dtype: str) -> int:
    """All weights of the model in ``dtype``."""
    p = parameter_count(spec)
    return (p["embed"] + p["head"] + spec.n_layers * p["layer"] + p["norm"]) * DTYPE_BYTES[dtype]


# Weights and tensors


def layer_bytes(spec: ModelSpec, dtype: str) -> int:
    """One decoder layer's weights in ``dtype``."""
    return parameter_count(spec)["layer"] * DTYPE_BYTES[dtype]


def largest_matrix_bytes(spec: ModelSpec, dtype: str) -> int:
    """A layer's biggest weight matrix (q, k/v or an MLP projection) in ``dtype``."""
    h, q, kv = spec.hidden_size, spec.n_heads * spec.head_dim, spec.n_kv_heads * spec.head_dim
    return max(h * q, h * kv, h * spec.intermediate_size) * DTYPE_BYTES[dtype]


def tensor_bytes(qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> int:
    """A tensor of ``shape`` stored as GGML type ``qtype`` (whole blocks)."""
    block, size = GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * size


def gguf_header_bytes(n_tensors: int, vocab_size: int) -> int:
    """A GGUF file's bytes beyond its tensor data, with room to spare."""
    return _HEADER_BYTES + _PER_TENSOR_BYTES * n_tensors + _PER_TOKEN_BYTES * vocab_size


def quantized_bound(shape: tuple[int, ...]) -> int:
    """Most bytes llama.cpp's quantizer may give one tensor: its K mixes go up to Q6_K
    (output, some attn_v / ffn_down), and rows that are not whole K blocks fall back to
    Q8_0 or F16; 1-D tensors stay F32."""
    if len(shape) == 1:
        return tensor_bytes(Q.F32, shape)
    for qtype in (Q.Q6_K, Q.Q8_0):
        if shape[-1] % GGML_QUANT_SIZES[qtype][0] == 0:
            return tensor_bytes(qtype, shape)
    return tensor_bytes(Q.F16, shape)


def quantizer_peak(shape: tuple[int, ...]) -> int:
    """llama.cpp's quantizer on one tensor: reads f16, converts to float32, writes into a work buffer."""
    return 10 * math.prod(shape)


def tensor_peak(
    shape: tuple[int, ...], out: GGMLQuantizationType, stored: GGMLQuantizationType, *, read_shape: tuple[int, ...],
    chunk: int, fitted: bool, requantized: bool, raw: bool, reordered: bool, scaled: bool,
) -> int:  # fmt: skip
    """Bytes held at once while the converter makes one tensor of ``shape`` as ``out`` from
    its ``stored`` form (``read_shape``), by blocks of at most ``chunk`` values.

    Raw path (``raw``: a GGUF's type kept): the stored bytes, a reordered or scaled copy, and
    float64 temporaries when a float tensor is scaled. Float path: the read form while it
    becomes float32, then float32 plus a transformed copy or the encoder's output and
    temporaries (measured: f16 = the output, bf16 and q8_0 = twice the output); a matrix
    whose rows keep their order goes by blocks of rows, so only its encoded output is whole.
    A ``fitted`` map (already in memory with the plan) becomes a scaled float32 copy, then is
    encoded; a ``requantized`` tensor holds float32 rows of the source and their kept columns.
    """
    n = math.prod(shape)
    size = tensor_bytes(out, shape)
    encoder = {Q.F32: 0, Q.F16: size}.get(out, 2 * size)
    if fitted:
        return 4 * n + encoder
    read = tensor_bytes(stored, read_shape)
    changed = reordered or scaled
    if requantized:
        return size + 4 * min(n, chunk) * 2 + read
    if raw:
        floats = 16 * n if scaled and stored in (Q.F32, Q.F16, Q.BF16) else 0
        return read + (read if changed else 0) + floats
    if not reordered and len(shape) == 2:
        block = min(n, chunk)
        return size + 4 * block + max(block * read // n, 4 * block if changed else 0, encoder * block // n)
    return 4 * n + max(read, 4 * n if changed else 0, encoder)


# Activations, logits and caches


def logits_bytes(rows: int, vocab_size: int, dtype: str = "float32") -> int:
    return rows * vocab_size * DTYPE_BYTES[dtype]


def kl_bytes(rows: int, vocab_size: int, read_back: int = 0) -> int:
    """Comparing ``rows`` positions' logits: the float64 temporaries, and ``read_back`` bytes
    per value of the rows read back for them."""
    return rows * vocab_size * (KL_TEMPORARIES * 8 + read_back)


def forward_activation_bytes(spec: ModelSpec, tokens: int, dtype: str) -> int:
    """One decoder layer run on ``tokens`` tokens without autograd: residual, normed input,
    branch output; q/k/v/o; gate, up, product; embeddings."""
    h, inter = spec.hidden_size, spec.intermediate_size
    q, kv = spec.n_heads * spec.head_dim, spec.n_kv_heads * spec.head_dim
    return tokens * (4 * h + 2 * q + 2 * kv + 3 * inter) * DTYPE_BYTES[dtype]


def attention_score_bytes(spec: ModelSpec, sequences: int, tokens: int, dtype: str) -> int:
    """One layer's attention scores for ``sequences`` sequences of ``tokens`` tokens."""
    return sequences * spec.n_heads * tokens * tokens * DTYPE_BYTES[dtype]


def head_chunk_bytes(spec: ModelSpec, rows: int, tokens: int) -> int:
    """``rows`` rows of the output head in float32 and in their stored form (2 bytes, or
    fewer for a GGUF's blocks), and the chunk's logits for ``tokens`` tokens."""
    return rows * spec.hidden_size * (4 + 2) + tokens * rows * 4


def kv_cache_bytes(spec: ModelSpec, cells: int, cache_type: str) -> int:
    """A KV cache of ``cells`` positions in ``cache_type`` for every layer (an upper bound
    for a file with removed blocks)."""
    return int(cells * spec.n_layers * 2 * spec.n_kv_heads * spec.head_dim * type_bytes(cache_type))


def llama_context_bytes(spec: ModelSpec, cells: int, cache_type: str, output_rows: int) -> int:
    """A llama.cpp context: its KV cache, and its logits buffer and graph output for the
    most rows one decode asks for."""
    return kv_cache_bytes(spec, cells, cache_type) + 2 * logits_bytes(output_rows, spec.vocab_size)


# The search


def teacher_cache_bytes(spec: ModelSpec, samples: int, heldout: int, seq_len: int, topk: int, dtype: str) -> int:
    """The teacher's cache: top-k ids (int64) and log-probabilities (float32) of every
    training token, the final hidden state (``dtype``) of every held-out token."""
    return samples * seq_len * topk * (8 + 4) + heldout * seq_len * spec.hidden_size * DTYPE_BYTES[dtype]


def search_activation_bytes(spec: ModelSpec, batch_size: int, seq_len: int, dtype: str) -> int:
    """The largest activations of one batch of the search, over its phases."""
    d = DTYPE_BYTES[dtype]
    h, v, s, layers = spec.hidden_size, spec.vocab_size, seq_len, spec.n_layers
    score_rows = max(batch_size, min(4 * batch_size, 2048 // s))
    # scoring: every layer's input cached for a batch, and its logits (dtype, float32, log-softmax)
    scoring = layers * score_rows * s * h * d + score_rows * s * v * (d + 8)
    # training: autograd keeps each layer's activations (norm inputs, q/k/v, attention
    # output, MLP gate/up/product) and the attention weights; logits and their gradient
    kv = spec.n_kv_heads * spec.head_dim
    per_layer = s * (6 * h + 2 * kv + 4 * spec.intermediate_size) * d + 2 * spec.n_heads * s * s * d
    training = batch_size * (layers * per_layer + s * v * (d + 12))
    # held-out report: student and teacher logits, both log-softmaxed, in float32
    heldout = batch_size * s * v * (d + 20)
    return max(scoring, training, heldout)


def linear_map_bytes(spec: ModelSpec, skips: int, fitted_together: int) -> int:
    """A step's linear maps (float32): every candidate's closed-form map, the plan's maps,
    the copies of the trials this process trained (two kinds' shortlists of 2 by default)
    and, while one trains, their gradients and Adam moments; and the float64 normal
    equations of the ``fitted_together`` layers of one fitting pass (fit and held-out sums)."""
    square = spec.hidden_size**2
    maps = (spec.n_layers + 8 * skips) * square * 4
    return maps + fitted_together * 4 * 8 * square
