"""What ``verify`` needs before it starts: memory for its largest stage (verify loads one
llama.cpp model at a time, with one context; parity's torch side runs after both are
freed), disk for the reference's logits kept between the models and for a reference that
must be converted first. Where both models fit in RAM at once (and no layers go to a GPU,
whose memory this does not count), the speed rounds run interleaved with both loaded: the
estimate then is that stage, chosen and printed before anything runs.

Verification runs late in a long job; refusing at its start (or at the start of the one
command) in one line beats the kernel's OOM killer halfway through.
"""

from __future__ import annotations

from pathlib import Path

from ..converters.reference import outtype_of, reference_needs
from ..estimates import PROCESS_BASE, Need, fits, kl_bytes, llama_context_bytes
from ..families import ModelSpec
from ..sources import ModelSource, open_source
from .alternatives import alternatives_for, check_cache_type
from .data import load_text
from .heldout import KL_ROWS
from .llama_model import gpu_layers_for, tokenize_file
from .logits_file import LogitsFile
from .options import VerifyOptions
from .parity import PARITY_TOKENS, parity_needs
from .perplexity import first_scored


def verify_needs(
    model_gguf: Path, reference: str | Path, opts: VerifyOptions, *, model_bytes: int | None = None,
    model_outtype: str | None = None,
) -> list[Need]:  # fmt: skip
    """Needs of :func:`run_verify` in the order its phases run: converting the reference
    (disk in ``opts.work_dir`` or beside ``model_gguf``; memory), then its largest stage:
    the reference or the model in llama.cpp, or the parity check's torch side; or, where it
    fits, both models together for interleaved speed rounds (:func:`interleaves`).

    Shapes come from the reference; the model is counted with every layer's KV cache, an
    upper bound for a file with skipped blocks. Before ``model_gguf`` exists (the one
    command's ``--dry-run``) pass its expected size and output type. The disk for the
    reference's logits counts the windows verify will score (:func:`scored_windows`).
    """
    model_gguf = Path(model_gguf)
    source = open_source(str(reference))
    spec = source.spec
    check_cache_type(opts.cache_type, spec.head_dim)  # the export's main row, before any model is scored
    conversion: list[Need] = []
    folder = Path(opts.work_dir or model_gguf.parent)
    if source.kind == "gguf":
        reference_bytes = source.path.stat().st_size
    else:
        conversion = reference_needs(source, opts.reference_outtype or model_outtype or outtype_of(model_gguf), folder)
        reference_bytes = next(v for n in conversion for k, v in n.parts.items() if k.startswith("reference.gguf"))
    model_size = model_gguf.stat().st_size if model_bytes is None else model_bytes
    stages = {
        "the reference in llama.cpp": _one_model(spec, opts, "reference", reference_bytes, "original"),
        "the model in llama.cpp": _one_model(spec, opts, "model", model_size, "export"),
    }
    if opts.plan is not None:
        parity = parity_needs(spec, opts.parity_windows, min(opts.ctx, PARITY_TOKENS), source.kind)[0]
        stages["parity's torch side"] = parity.parts
    both = _both_models(spec, opts, reference_bytes, model_size)
    interleave = opts.speed and gpu_layers_for(opts.gpu_layers)[0] == 0 and fits([both])
    if interleave:
        stages["both models for the speed rounds"] = both.parts
    stage, parts = max(stages.items(), key=lambda kv: sum(kv[1].values()))
    how = INTERLEAVED if interleave else "one model at a time"
    verify = Need("ram", f"verify ({how}; largest stage: {stage})", parts,
                  fix="lower --ctx or --parity-windows, or verify on a machine with more memory")
    # verify checks that both files tokenize alike: the reference's vocabulary where it is a GGUF
    vocab_file = source.path if source.kind == "gguf" else model_gguf if model_gguf.is_file() else None
    windows, unknown = scored_windows(opts, vocab_file, source)
    disk = logits_disk_need(folder, windows, opts, spec.vocab_size, floor=True, unknown=unknown)
    return [verify, *_merge_disk(conversion, [disk])]  # the conversion runs first, alone: its needs are checked apart


def scored_windows(opts: VerifyOptions, vocab_file: Path | None, source: ModelSource) -> tuple[int, str | None]:
    """The windows verify will score, known before any model is loaded: the built-in sample
    or a text file is read and tokenized (with ``vocab_file``'s vocabulary, as verify does;
    without a GGUF yet, the source's tokenizer), ``--chunks`` caps them. A dataset is not
    streamed for an estimate: then one window (or ``--chunks``) and, in words, why."""
    if opts.data is not None and not Path(opts.data).expanduser().is_file():
        if opts.chunks is not None:
            return opts.chunks, None
        return 1, "per window: a dataset's length is known once it is read (--chunks bounds it)"
    text = load_text(opts.data).text
    if vocab_file is not None:
        tokens = len(tokenize_file(vocab_file, text).tokens)
    else:
        tokens = len(source.load_tokenizer()(text, verbose=False)["input_ids"])
    windows = tokens // opts.ctx
    return (windows if opts.chunks is None else min(windows, opts.chunks)), None


#: how the estimate says verify will load both models for the speed rounds
INTERLEAVED = "speed rounds interleaved, both models loaded together"


def interleaves(needs: list[Need]) -> bool:
    """Whether :func:`verify_needs` chose interleaved speed rounds (both models loaded)."""
    return any(INTERLEAVED in n.what for n in needs)


def _both_models(spec: ModelSpec, opts: VerifyOptions, reference_bytes: int, model_bytes: int) -> Need:
    """Both GGUFs loaded together with a context for each measured row, for speed rounds
    measured side by side (steadier ratios on a shared machine); the model counted with
    every layer's KV cache, an upper bound."""
    types = ["f16", opts.cache_type, *(t for _, t in alternatives_for(opts.cache_type))]
    parts = {
        "process": PROCESS_BASE,
        "reference weights (mapped)": reference_bytes,
        "model weights (mapped)": model_bytes,
        f"{len(types)} llama.cpp contexts (KV cache types)": sum(_context(spec, opts, t) for t in types),
    }
    return Need("ram", INTERLEAVED, parts)


def logits_disk_need(
    folder: Path, windows: int, opts: VerifyOptions, n_vocab: int, *, floor: bool, unknown: str | None = None
) -> Need:  # fmt: skip
    """Disk in the work folder for the logits kept while their model is freed: the
    reference's at every scored position of ``windows`` windows (``unknown``: why the
    count is a single window's), and (with ``--plan``) each side's parity windows (the
    reference's too when ``floor``)."""
    row = LogitsFile.row_bytes(n_vocab)
    count = unknown or f"{windows} window{'s' * (windows != 1)}"
    label = f"reference's held-out logits ({count})"
    parts = {label: windows * (opts.ctx - 1 - first_scored(opts.ctx)) * row}
    if opts.plan is not None:
        parity_rows = min(windows, opts.parity_windows) * min(opts.ctx, PARITY_TOKENS)
        parts["parity logits"] = (2 if floor else 1) * parity_rows * row
    return Need(f"disk:{Path(folder).resolve()}", "verify's logits between models", parts,
                fix="pass --work-dir on a disk with more room, or lower --chunks")  # fmt: skip


def _one_model(spec: ModelSpec, opts: VerifyOptions, what: str, weights: int, model: str) -> dict[str, int]:
    """One model in llama.cpp with one context at a time (its largest KV cache type) and the
    held-out comparison's arrays."""
    types = ["f16" if model == "original" else opts.cache_type]
    types += [t for m, t in alternatives_for(opts.cache_type) if m == model]
    return {
        "process": PROCESS_BASE,
        f"{what} weights (mapped)": weights,
        "one llama.cpp context": max(_context(spec, opts, t) for t in types),
        # float64 temporaries and the reference's rows read back for them (float32)
        "held-out comparison": kl_bytes(KL_ROWS, spec.vocab_size, read_back=4),
    }


def _context(spec: ModelSpec, opts: VerifyOptions, cache_type: str) -> int:
    """A context of ``opts.ctx`` cells with a ``cache_type`` KV cache for every layer (an
    upper bound for a file with removed blocks), and llama.cpp's logits buffer and graph
    output for the most rows one decode asks for (half a window: the held-out positions,
    and parity.record_logits's pieces)."""
    return llama_context_bytes(spec, opts.ctx, cache_type, output_rows=opts.ctx - first_scored(opts.ctx))


def _merge_disk(conversion: list[Need], disk: list[Need]) -> list[Need]:
    """The conversion's disk need and the logits' in the same folder as one need: the
    converted reference stays there while the logits are written."""
    out = list(conversion)
    for need in disk:
        same = next((i for i, n in enumerate(out) if n.where == need.where), None)
        if same is None:
            out.append(need)
        else:
            out[same] = Need(need.where, f"{out[same].what} and {need.what}", out[same].parts | need.parts,
                             out[same].fix)  # fmt: skip
    return out
