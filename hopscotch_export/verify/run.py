"""``run_verify``: the whole verification of one GGUF against its reference, in one call."""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ..converters.convert import check_work_dir
from ..errors import HopscotchError
from ..inspect import gguf_summary
from ..llama_lib import default_threads
from ..progress import progress_bars
from ..resources import check, one_line
from .alternatives import Row, alternatives_for, check_cache_type, recommend, row_label
from .data import load_text
from .heldout import compare_windows
from .needs import verify_needs
from .parity import FLOOR_MULTIPLE, SLACK, floor_applies, torch_parity
from .perplexity import first_scored, make_windows
from .reference import reference_gguf
from .report import LimitCheck, Side, TextInfo, VerifyReport
from .runner import LlamaSession, gpu_offload_available
from .speed import Speed, measure_speed
from .tasks import DEFAULT_TEMPLATE, TaskScore, load_task, score_task


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
    #: folder for that conversion (a whole model), default: beside the GGUF being verified
    work_dir: Path | None = None
    #: gates: mean KL from the reference, perplexity increase in percent
    max_kl: float | None = None
    max_ppl_increase: float | None = None


def run_verify(
    model_gguf: Path, reference: str | Path, options: VerifyOptions | None = None, console: Console | None = None
) -> VerifyReport:
    """Measure ``model_gguf`` against ``reference`` in llama.cpp and return the report.

    User mistakes (missing files, too little text, bad task file) raise
    :class:`HopscotchError`; the gates (parity, and the limits set) are reported in
    ``report.limits``, not raised.
    """
    opts = options or VerifyOptions()
    console = console or Console(stderr=True)
    model_gguf = Path(model_gguf)
    _check_inputs(model_gguf, opts)
    needs = verify_needs(model_gguf, reference, opts)
    console.print(f"verify: estimated need {one_line(needs)}", highlight=False)
    check(needs)
    text = load_text(opts.data, opts.data_config, opts.data_split)
    task = (
        load_task(opts.task, config=opts.task_config, split=opts.task_split, limit=opts.task_limit,
                  template=opts.task_template)
        if opts.task
        else None
    )
    threads = opts.threads or default_threads()
    gpu_layers, placement = gpu_layers_for(opts.gpu_layers)
    with contextlib.ExitStack() as stack:
        ref = stack.enter_context(
            reference_gguf(str(reference), model_gguf, opts.reference_outtype, console, opts.work_dir)
        )
        ref_s, model_s = (
            stack.enter_context(
                LlamaSession(p, n_ctx=opts.ctx, n_threads=threads, gpu_layers=gpu_layers, cache_type=c)
            )
            for p, c in ((ref.path, "f16"), (model_gguf, opts.cache_type))
        )
        tokens = model_s.tokenize(text.text)
        if ref_s.n_vocab != model_s.n_vocab or ref_s.tokenize(text.text) != tokens:
            raise HopscotchError(
                f"{model_gguf} and the reference {reference} tokenize differently: not the same base model"
            )
        windows = make_windows(tokens, opts.ctx, model_s.bos if model_s.add_bos else None, opts.chunks)
        alternatives, unmeasured = _alternative_sessions(stack, {"original": ref_s, "export": model_s}, opts, threads)
        sessions = [ref_s, model_s, *(s for _, s in alternatives)]

        with progress_bars(console) as progress:
            bar = progress.add_task(f"perplexity and KL ({len(sessions)} rows)", total=len(windows))
            heldout = compare_windows(ref_s, sessions[1:], windows, lambda: progress.advance(bar))

            task_scores: list[TaskScore | None] = [None, None]
            if task is not None:
                for i, (name, s) in enumerate((("reference", ref_s), ("model", model_s))):
                    bar = progress.add_task(f"task ({name})", total=len(task.questions))
                    task_scores[i] = score_task(s, task, lambda b=bar: progress.advance(b))

            parity = None
            if opts.plan is not None:
                bar = progress.add_task("parity with torch", total=None)
                parity = torch_parity(
                    model_s, opts.source or str(reference), opts.plan, windows[: opts.parity_windows],
                    lambda done, total: progress.update(bar, completed=done, total=total),
                    reference=ref_s if floor_applies(model_gguf, ref.path) else None,
                )

            speeds: list[Speed | None] = [None] * len(sessions)
            if opts.speed:
                prompt = min(opts.speed_prompt, opts.ctx - opts.speed_gen)
                rounds = [opts.speed_rounds] * 2 + [alternative_rounds(opts.speed_rounds)] * len(alternatives)
                bar = progress.add_task("speed (interleaved)", total=sum(rounds))
                speeds[:] = measure_speed(
                    sessions, tokens, prompt_tokens=prompt, gen_tokens=opts.speed_gen,
                    rounds=rounds, advance=lambda: progress.advance(bar),
                )

        # a converted reference lives in a temporary folder: name it by what the user passed
        ref_label = str(ref_s.path) if ref.converted_to is None else f"{reference} (converted to {ref.converted_to})"
        main = heldout.candidates[0]
        sides = [
            Side(label, s.file_bytes, s.kv_cache, ppl, task_scores[i], speeds[i], _layer_kinds(s.path))
            for i, (label, s, ppl) in enumerate(
                ((ref_label, ref_s, heldout.reference), (str(model_s.path), model_s, main.perplexity))
            )
        ]
        rows = [
            Row("original", ref_label, ref_s.kv_cache, heldout.reference, None, speeds[0]),
            Row("export", str(model_s.path), model_s.kv_cache, main.perplexity, main.divergence, speeds[1], main=True),
            *(
                Row(name, str(s.path) if name == "export" else ref_label, s.kv_cache, scored.perplexity,
                    scored.divergence, speed)
                for (name, s), scored, speed in zip(alternatives, heldout.candidates[1:], speeds[2:])
            ),
        ]  # fmt: skip
        rows.sort(key=lambda r: (r.model != "original", -r.kv_cache.bytes))  # the reference first
        report = VerifyReport(
            model=sides[1],
            reference=sides[0],
            reference_spec=str(reference),
            reference_converted_to=ref.converted_to,
            text=TextInfo(text.source, text.builtin, len(tokens), opts.ctx, len(windows),
                          len(windows) * (opts.ctx - 1 - first_scored(opts.ctx))),
            divergence=main.divergence,
            task_source=task.source if task else None,
            task_questions=len(task.questions) if task else 0,
            parity=parity,
            settings=_settings(opts, threads, gpu_layers, placement),
            rows=rows,
            unmeasured=unmeasured,
            recommendation=recommend(rows, opts.max_kl),
        )
    return dataclasses.replace(report, limits=list(_limits(report, opts)))


def alternative_rounds(rounds: int) -> int:
    """Speed rounds of an alternative row: half the main rows' (rounded up), to keep verify short."""
    return (rounds + 1) // 2


def _alternative_sessions(
    stack: contextlib.ExitStack, models: dict[str, LlamaSession], opts: VerifyOptions, threads: int
) -> tuple[list[tuple[str, LlamaSession]], dict[str, str]]:
    """A context per alternative on the model already loaded, closed before it; those llama.cpp
    refuses (a head size its quantized cache cannot hold) are listed with its reason."""
    sessions, refused = [], {}
    for name, cache_type in alternatives_for(opts.cache_type):
        base = models[name]
        try:
            session = LlamaSession(base.path, n_ctx=opts.ctx, n_threads=threads, cache_type=cache_type, share=base)
        except HopscotchError as e:
            refused[row_label(name, cache_type)] = str(e)
            continue
        sessions.append((name, stack.enter_context(session)))
    return sessions, refused


def _layer_kinds(path: Path) -> dict[str, int]:
    """How many layers keep their attention (whole, or some KV groups), skip it, or hold a
    linear map instead."""
    summary = gguf_summary(path)
    kinds = Counter(summary["layer_kinds"])
    partly = len(summary.get("kv_groups", {}))
    if partly:
        kinds["keep"] -= partly
        kinds["keep some KV groups"] = partly
    return {k: n for k, n in kinds.items() if n}


def _check_inputs(model_gguf: Path, opts: VerifyOptions) -> None:
    """Fail on user mistakes before any model is loaded."""
    if not model_gguf.is_file():
        raise HopscotchError(f"{model_gguf} not found; pass the GGUF written by `hopscotch-export convert`")
    if model_gguf.suffix.lower() != ".gguf":
        raise HopscotchError(f"{model_gguf} is not a .gguf file")
    if opts.ctx < 8:
        raise HopscotchError(f"--ctx {opts.ctx}: use at least 8 tokens")
    if opts.chunks is not None and opts.chunks < 1:
        raise HopscotchError("--chunks must be at least 1")
    if opts.plan is not None and not Path(opts.plan).is_file():
        raise HopscotchError(f"--plan {opts.plan} not found")
    if opts.source is not None and opts.plan is None:
        raise HopscotchError("--source is only used for the parity check; pass --plan with it")
    if opts.parity_windows < 1:
        raise HopscotchError("--parity-windows must be at least 1")
    if opts.speed and opts.speed_gen + 1 > opts.ctx:
        raise HopscotchError(f"--speed-gen {opts.speed_gen} does not fit in --ctx {opts.ctx}")
    if opts.task_limit is not None and opts.task_limit < 1:
        raise HopscotchError("--task-limit must be at least 1")
    check_cache_type(opts.cache_type)
    check_work_dir(opts.work_dir)


def _limits(report: VerifyReport, opts: VerifyOptions) -> Iterator[LimitCheck]:
    """The gates: parity whenever it was measured (a file that does not compute what its plan
    says is a fault, not a trade-off), and the quality limits the user set."""
    parity = report.parity
    if parity is not None and parity.limit is not None:
        yield LimitCheck(
            f"parity with torch under the plan: mean KL (at most {FLOOR_MULTIPLE:g} x the unmodified file's "
            f"{parity.floor:.3g} + {SLACK:g})", parity.mean_kl, parity.limit,
        )  # fmt: skip
    if opts.max_kl is not None:
        yield LimitCheck("mean KL (--max-kl)", report.divergence.mean_kl, opts.max_kl)
    if opts.max_ppl_increase is not None:
        yield LimitCheck("perplexity increase % (--max-ppl-increase)", report.ppl_increase_pct, opts.max_ppl_increase)


def gpu_layers_for(asked: int | None) -> tuple[int, str]:
    """Layers llama.cpp offloads (-1: all) and, in words, where it runs and why: ``asked``
    (``--gpu-layers``), or by default all when llama.cpp was built with GPU offload, else none."""
    if asked is not None:
        where = "all layers" if asked < 0 else f"{asked} layer(s)"
        return asked, f"{where} on the GPU (--gpu-layers {asked})" if asked else "CPU only (--gpu-layers 0)"
    if gpu_offload_available():
        return -1, "all layers on the GPU (default: this llama.cpp has GPU offload)"
    return 0, "CPU only (default: this llama-cpp-python was built without GPU offload)"


def _settings(opts: VerifyOptions, threads: int, gpu_layers: int, placement: str) -> dict[str, object]:
    import llama_cpp

    return {
        "llama_cpp_python": llama_cpp.__version__,
        "gpu_offload_available": gpu_offload_available(),
        "gpu_layers": gpu_layers,
        "placement": placement,
        "threads": threads,
        "flash_attention": True,
        "cache_type": opts.cache_type,
        "ctx": opts.ctx,
    }
