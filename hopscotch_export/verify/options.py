"""``VerifyOptions``: everything ``verify`` can be told, in a module of its own so that its
estimate (:mod:`.needs`) and its run (:mod:`.measure`) both take it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .tasks import DEFAULT_TEMPLATE


@dataclass(frozen=True)
class VerifyOptions:
    """Everything ``verify`` can be told; the defaults follow ``llama-perplexity``'s."""

    #: tokens per perplexity window (``llama-perplexity -c``) and context for every test
    ctx: int = 512
    #: at most this many windows (``--chunks``); None scores all of the text
    chunks: int | None = None
    #: held-out text: a text file or a dataset id with a ``text`` column; None = built-in
    data: str | None = None
    data_config: str | None = None
    data_split: str = "test"
    #: multiple-choice task: a JSONL file (question / choices / answer) or a dataset id
    task: str | None = None
    task_config: str | None = None
    task_split: str = "test"
    task_limit: int | None = None
    task_template: str = DEFAULT_TEMPLATE
    #: parity check: the plan the GGUF was made with, and its source (default: the reference)
    plan: Path | None = None
    source: str | None = None
    parity_windows: int = 2
    #: speed test: prompt length, generated tokens, interleaved rounds
    speed: bool = True
    speed_prompt: int = 512
    speed_gen: int = 64
    speed_rounds: int = 3
    #: KV cache type of the export's main row (``-ctk/-ctv``); the others are measured beside it
    cache_type: str = "f16"
    #: llama.cpp placement: layers offloaded to a GPU (-1 = all; None: all when llama.cpp
    #: has GPU offload, else 0) and CPU threads
    gpu_layers: int | None = None
    threads: int | None = None
    #: output type for a reference that must be converted (default: the model's own)
    reference_outtype: str | None = None
    #: folder for that conversion (a whole model) and for the reference's logits kept while
    #: the model is measured; default: beside the GGUF being verified
    work_dir: Path | None = None
    #: gates: mean KL from the reference, perplexity increase in percent
    max_kl: float | None = None
    max_ppl_increase: float | None = None
