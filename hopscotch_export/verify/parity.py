"""Parity: the GGUF against the torch model with the plan applied, on the same tokens.

This checks the conversion (skips dropped, scales folded, q/k permuted), not the quality
of the plan: a correct file differs from torch only by llama.cpp's arithmetic and the
file's quantization, a wrong fold by orders of magnitude more. How much the arithmetic and
quantization alone cost is measured in the same run, on the same tokens: the unmodified
reference file against the torch model with no plan (the *floor*). The check passes when
the parity KL is within :data:`FLOOR_MULTIPLE` times the floor plus :data:`SLACK` (for
float32 files, whose floor is ~1e-9, below what matters); docs/design.md section 4.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HopscotchError
from ..estimates import (
    PROCESS_BASE,
    SKELETON_BYTES,
    Need,
    attention_score_bytes,
    check,
    forward_activation_bytes,
    head_chunk_bytes,
    kl_bytes,
    largest_matrix_bytes,
    layer_bytes,
    logits_bytes,
    source_overhead,
)
from ..families import ModelSpec
from ..plan import Plan, load_plan
from ..sources import ModelSource, open_source
from ..sources.gguf_file import scan_gguf
from .divergence import log_softmax, same_top, token_kl
from .layerwise import HEAD_ROWS, planned_logits
from .llama_model import LlamaSession
from .logits_file import LogitsFile

#: Tokens per window compared: conversion bugs show at any length, and torch's full
#: logits (tokens x vocabulary) for a long window would take gigabytes.
PARITY_TOKENS = 512

#: Positions per KL step: bounds the float64 log-softmax temporaries (rows x vocabulary).
_KL_ROWS = 64

#: A converted file may differ from torch under its plan by this many times what the
#: unmodified file differs from torch with no plan (same tokens, same quantization), plus
#: SLACK: the plan changes which tensors are quantized and how large they are, not how well.
FLOOR_MULTIPLE = 4.0
#: nats of mean KL always allowed: a float32 floor is ~1e-9; a wrong fold costs 1e-2 or more
SLACK = 5e-4


@dataclass(frozen=True)
class Parity:
    """Mean KL(torch || GGUF) and top-1 agreement over every position of the windows."""

    source: str
    plan: str
    mean_kl: float
    same_top: float
    tokens: int
    #: mean KL of the unmodified reference file against torch with no plan, same tokens
    floor: float | None = None

    @property
    def limit(self) -> float | None:
        """The most parity KL a correct conversion shows (None: no floor measured)."""
        return None if self.floor is None else FLOOR_MULTIPLE * self.floor + SLACK

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "plan": self.plan,
            "mean_kl": self.mean_kl,
            "same_top": self.same_top,
            "tokens": self.tokens,
            "floor": self.floor,
            "limit": self.limit,
            "rule": f"mean_kl <= {FLOOR_MULTIPLE:g} x floor + {SLACK:g}",
        }


#: The llama.cpp side of a comparison: a loaded model, or its logits recorded by
#: :func:`record_logits` before it was freed (verify holds one model at a time).
LlamaSide = LlamaSession | LogitsFile


def torch_parity(
    session: LlamaSide,
    source_spec: str | Path,
    plan_path: Path,
    windows: Sequence[Sequence[int]],
    progress: Callable[[int, int], None] = lambda done, total: None,
    reference: LlamaSide | None = None,
) -> Parity:
    """Compare ``session`` with ``source`` under ``plan`` on the first ``PARITY_TOKENS`` of
    each window; with ``reference`` (the unmodified file), also the floor: ``reference``
    against ``source`` with no plan, on the same tokens.

    torch runs layer by layer (:mod:`.layerwise`); ``progress(done, total)`` counts the
    decoder layers, then the windows compared, of each comparison.
    """
    plan = load_plan(plan_path)
    source = open_source(source_spec)
    ref = source.model_ref()
    plan.check_model(ref, accept_foreign=True)  # shape checks; the fingerprint gets its own message
    if plan.model.fingerprint != ref.fingerprint:
        raise HopscotchError(
            f"--plan {plan_path} was made for other weights than --source {source_spec} "
            "(fingerprint mismatch); pass the model the plan was searched on"
        )
    cut = parity_windows(windows)
    check(parity_needs(source.spec, len(cut), max(map(len, cut)), source.kind))
    steps = itertools.count(1)
    total = (source.spec.n_layers + len(cut)) * (1 if reference is None else 2)

    def advance() -> None:
        progress(next(steps), total)

    kl, top = _compare(session, source, plan, cut, advance)
    floor = None
    if reference is not None:
        floor = float(_compare(reference, source, Plan.identity(ref), cut, advance)[0].mean())
    return Parity(str(source_spec), str(plan_path), float(kl.mean()), float(top.mean()), len(kl), floor)


def parity_windows(windows: Sequence[Sequence[int]]) -> list[list[int]]:
    """The tokens compared: the first :data:`PARITY_TOKENS` of each window."""
    return [list(w[:PARITY_TOKENS]) for w in windows]


def record_logits(session: LlamaSession, windows: Sequence[Sequence[int]], store: LogitsFile) -> None:
    """Write ``session``'s logits at every compared position to ``store``, for a
    :func:`torch_parity` run after the model is freed. Half a batch per decode: llama.cpp's
    output buffer then grows no larger than the held-out pass made it (half a window)."""
    step = max(1, session.n_batch // 2)
    for window in parity_windows(windows):
        session.clear()
        for start in range(0, len(window), step):
            piece = window[start : start + step]
            store.append(session.decode(piece, start, [True] * len(piece), copy=False))


def _compare(
    side: LlamaSide, source: ModelSource, plan: Plan, cut: list[list[int]], advance: Callable[[], None]
) -> tuple[np.ndarray, np.ndarray]:
    """Per position: KL(torch under ``plan`` || ``side``) and whether their top tokens agree."""
    kls, tops = [], []
    starts = itertools.accumulate(map(len, cut), initial=0)
    for window, start, expected in zip(cut, starts, planned_logits(source, plan, cut, side.n_vocab, advance)):
        got = _all_logits(side, window) if isinstance(side, LlamaSession) else side.read(start, len(window))
        for r in range(0, len(got), _KL_ROWS):  # bounds the float64 temporaries
            rows = slice(r, r + _KL_ROWS)
            kls.append(token_kl(log_softmax(expected[rows]), log_softmax(got[rows])))
            tops.append(same_top(expected[rows], got[rows]))
        del expected, got  # before the generator makes the next window's logits
        advance()
    return np.concatenate(kls), np.concatenate(tops)


def floor_applies(model: Path, reference: Path) -> bool:
    """Whether the reference's floor bounds the model's parity: every tensor the plan
    rewrites is stored in the model with at least as many bits per weight as in the
    reference (an f16 reference's floor would fail a correct q4_k_m file; a q4_1
    reference's floor is generous to an f32 one). Read from the tensors themselves:
    ``general.file_type`` names no K-quant mix that lacks a ``MOSTLY_`` type, and says
    nothing of a mix's raised tensors."""
    mine, theirs = _rewritten_bits(model), _rewritten_bits(reference)
    shared = mine.keys() & theirs.keys()
    return bool(shared) and all(mine[name] >= theirs[name] for name in shared)


#: The tensors a plan rewrites: the branch scales fold into attn_output and ffn_down, and a
#: linear layer's map replaces attn_output.
_REWRITTEN = re.compile(r"^blk\.\d+\.(attn_output|ffn_down)\.weight$")


def _rewritten_bits(path: Path) -> dict[str, float]:
    """Bits per weight of each tensor of ``path`` that a plan rewrites."""
    return {
        name: 8 * nbytes / math.prod(dims)
        for name, (_, dims, _, nbytes) in scan_gguf(path).tensors.items()
        if _REWRITTEN.match(name)
    }


def parity_needs(spec: ModelSpec, windows: int, tokens: int, source_kind: str = "hf") -> list[Need]:
    """Memory of :func:`torch_parity` from the model's shapes: one decoder layer in float32,
    the windows' activations through it, one window's logits and one chunk of head rows.

    ``tokens`` is the window length (at most :data:`PARITY_TOKENS` are compared). No
    llama.cpp model is included: verify runs parity after freeing them (their logits
    recorded), and other callers hold theirs open anyway.
    """
    tokens = min(tokens, PARITY_TOKENS)
    return [
        Need(
            "ram",
            "parity with torch (float32, one layer at a time)",
            {
                "process": PROCESS_BASE,
                **source_overhead(source_kind, spec.vocab_size),
                "model skeleton (no weights)": SKELETON_BYTES,
                "one decoder layer": layer_bytes(spec, "float32"),
                # the stored form of the tensor being read (f16/bf16, or a GGUF's blocks while
                # they are dequantized), beside its float32 copy counted in the layer
                "reading a weight": largest_matrix_bytes(spec, "float32"),
                "activations": forward_activation_bytes(spec, windows * tokens, "float32"),
                "attention scores": attention_score_bytes(spec, windows, tokens, "float32"),
                "logits (torch and llama.cpp, one window)": 2 * logits_bytes(tokens, spec.vocab_size),
                "KL temporaries": kl_bytes(_KL_ROWS, spec.vocab_size),
                "head chunk": head_chunk_bytes(spec, HEAD_ROWS, tokens),
            },
            fix="lower --parity-windows, or verify without --plan (no parity check)",
        )
    ]


def _all_logits(session: LlamaSession, window: Sequence[int]) -> np.ndarray:
    session.clear()
    parts = []
    for start in range(0, len(window), session.n_batch):
        piece = window[start : start + session.n_batch]
        parts.append(session.decode(piece, start, [True] * len(piece)))
    return np.concatenate(parts)
