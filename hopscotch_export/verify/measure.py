"""``run_verify``: the whole verification of one GGUF against its reference, in one call."""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from ..converters.reference import reference_gguf
from ..errors import HopscotchError
from ..estimates import check, one_line
from ..files import check_work_dir, temp_folder
from ..llama_lib import default_threads
from ..progress import progress_bars
from ..summary import gguf_summary
from .alternatives import Row, alternatives_for, check_cache_type, recommend, row_label
from .data import load_text
from .divergence import Divergence
from .heldout import score_candidate, score_reference
from .llama_model import (
    KvCacheInfo,
    LlamaModel,
    LlamaSession,
    Tokenized,
    gpu_layers_for,
    gpu_offload_available,
    tokenize_file,
)  # fmt: skip
from .logits_file import LogitsFile
from .needs import interleaves, logits_disk_need, verify_needs
from .options import VerifyOptions
from .parity import FLOOR_MULTIPLE, SLACK, floor_applies, record_logits, torch_parity
from .perplexity import Perplexity, first_scored, make_windows
from .report import LimitCheck, Side, TextInfo, VerifyReport
from .speed import Speed, measure_speed
from .tasks import Task, TaskScore, load_task, score_task


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
    console.print(f"verify: estimated need {one_line(needs)}; {needs[0].what}", highlight=False)
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
        vocab = _same_tokens(ref.path, model_gguf, text.text, reference)
        windows = make_windows(vocab.tokens, opts.ctx, vocab.bos if vocab.add_bos else None, opts.chunks)
        floor = opts.plan is not None and floor_applies(model_gguf, ref.path)
        folder = Path(opts.work_dir or model_gguf.parent)
        check([logits_disk_need(folder, len(windows), opts, vocab.n_vocab, floor=floor)])
        interleave = interleaves(needs)  # decided and printed with the estimate, before anything ran
        scratch = stack.enter_context(temp_folder(folder / _SCRATCH, fix="pass --work-dir on another disk"))
        base = stack.enter_context(LogitsFile(scratch / "reference.logits", vocab.n_vocab,
                                              "the reference's held-out logits"))  # fmt: skip
        progress = stack.enter_context(progress_bars(console))
        measure = _Measure(opts, threads, gpu_layers, windows, vocab.tokens, base, progress, task,
                           opts.speed and not interleave)  # fmt: skip
        parity_logits: dict[str, LogitsFile] = {}
        if opts.plan is not None:
            for name in ("export", "original") if floor else ("export",):
                parity_logits[name] = stack.enter_context(
                    LogitsFile(scratch / f"{name}.parity.logits", vocab.n_vocab, f"the {name}'s logits for parity")
                )
        for name, path, main_type in (("original", ref.path, "f16"), ("export", model_gguf, opts.cache_type)):
            measure.model(name, path, main_type, parity_logits.get(name))
        rows = measure.rows

        parity = None
        if opts.plan is not None:
            bar = progress.add_task("parity with torch", total=None)
            parity = torch_parity(
                parity_logits["export"], opts.source or str(reference), opts.plan, windows[: opts.parity_windows],
                lambda done, total: progress.update(bar, completed=done, total=total),
                reference=parity_logits.get("original"),
            )
        if interleave:
            _interleaved_speed(rows, {"original": ref.path, "export": model_gguf}, vocab.tokens, opts, threads,
                               gpu_layers, progress)  # fmt: skip

        # a converted reference lives in a temporary folder: name it by what the user passed
        ref_label = str(ref.path) if ref.converted_to is None else f"{reference} (converted to {ref.converted_to})"
        paths = {"original": ref_label, "export": str(model_gguf)}
        report_rows = [
            Row(r.model, paths[r.model], r.kv_cache, r.perplexity, r.divergence, r.speed, main=r.main and r.model == "export")
            for r in rows
        ]  # fmt: skip
        report_rows.sort(key=lambda r: (r.model != "original", -r.kv_cache.bytes))  # the reference first
        ref_row, main = (next(r for r in rows if r.main and r.model == m) for m in ("original", "export"))
        sides = [
            Side(label, path.stat().st_size, r.kv_cache, r.perplexity, measure.tasks.get(r.model), r.speed,
                 _layer_kinds(path))
            for label, path, r in ((ref_label, ref.path, ref_row), (str(model_gguf), model_gguf, main))
        ]  # fmt: skip
        report = VerifyReport(
            model=sides[1],
            reference=sides[0],
            reference_spec=str(reference),
            reference_converted_to=ref.converted_to,
            text=TextInfo(text.source, text.builtin, len(vocab.tokens), opts.ctx, len(windows),
                          len(windows) * (opts.ctx - 1 - first_scored(opts.ctx))),
            divergence=main.divergence,
            task_source=task.source if task else None,
            task_questions=len(task.questions) if task else 0,
            parity=parity,
            settings=_settings(opts, threads, gpu_layers, placement, interleave),
            rows=report_rows,
            unmeasured=measure.refused,
            recommendation=recommend(report_rows, opts.max_kl),
        )
    return dataclasses.replace(report, limits=list(_limits(report, opts)))


def alternative_rounds(rounds: int) -> int:
    """Speed rounds of an alternative row: half the main rows' (rounded up), to keep verify short."""
    return (rounds + 1) // 2


#: the work folder's scratch space: the reference's logits (named as files.temp_folder says)
_SCRATCH = "hopscotch-verify-logits"


@dataclass
class _Measured:
    """One model with one KV cache type, as measured (the report's Row, before labels)."""

    model: str
    main: bool
    kv_cache: KvCacheInfo
    perplexity: Perplexity
    divergence: Divergence | None
    speed: Speed | None = None


@dataclass
class _Measure:
    """Each model's pass, one model loaded at a time: every KV cache type's context in turn
    (one context at a time) scores the held-out windows, the main context the task and
    the parity windows, and, when the speed rounds are sequential, each context its speed."""

    opts: VerifyOptions
    threads: int
    gpu_layers: int
    windows: list[list[int]]
    tokens: list[int]
    base: LogitsFile
    progress: Progress
    task: Task | None
    #: speed measured here, row by row (sequential rounds), not interleaved afterwards
    speed: bool
    rows: list[_Measured] = field(default_factory=list)
    tasks: dict[str, TaskScore] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    def model(self, name: str, path: Path, main_type: str, parity: LogitsFile | None) -> None:
        """Load ``path``, measure it with each of its KV cache types, free it."""
        opts = self.opts
        cache_types = [main_type, *(t for n, t in alternatives_for(opts.cache_type) if n == name)]
        with LlamaModel(path, self.gpu_layers) as model:
            for cache_type in cache_types:
                main = cache_type == main_type
                try:
                    session = LlamaSession(path, n_ctx=opts.ctx, n_threads=self.threads, cache_type=cache_type,
                                           share=model)  # fmt: skip
                except HopscotchError as e:
                    if main:
                        raise
                    self.refused[row_label(name, cache_type)] = str(e)
                    continue
                with session:
                    self.rows.append(self._row(name, main, session, parity))

    def _row(self, name: str, main: bool, session: LlamaSession, parity: LogitsFile | None) -> _Measured:
        opts, progress = self.opts, self.progress
        label = row_label(name, session.kv_cache.type_k)
        bar = progress.add_task(f"perplexity and KL ({label})", total=len(self.windows))
        advance = lambda: progress.advance(bar)  # noqa: E731
        if self.base.rows == 0:  # the first row is the reference's
            row = _Measured(name, main, session.kv_cache, score_reference(session, self.windows, self.base, advance),
                            None)  # fmt: skip
        else:
            scored = score_candidate(session, self.windows, self.base, advance)
            row = _Measured(name, main, session.kv_cache, scored.perplexity, scored.divergence)
        if main and self.task is not None:
            bar = progress.add_task(f"task ({name})", total=len(self.task.questions))
            self.tasks[name] = score_task(session, self.task, lambda: progress.advance(bar))
        if main and parity is not None:
            record_logits(session, self.windows[: opts.parity_windows], parity)
        if self.speed:
            rounds = opts.speed_rounds if main else alternative_rounds(opts.speed_rounds)
            bar = progress.add_task(f"speed ({label}, sequential)", total=rounds)
            row.speed = _speed([session], self.tokens, opts, [rounds], lambda: progress.advance(bar))[0]
        return row


def _interleaved_speed(
    rows: list[_Measured], paths: dict[str, Path], tokens: list[int], opts: VerifyOptions, threads: int,
    gpu_layers: int, progress: Progress,
) -> None:  # fmt: skip
    """Both models loaded together and every measured row's context on them, the speed
    rounds interleaved (speed.py): only where the estimate chose it (:func:`needs.interleaves`)."""
    with contextlib.ExitStack() as stack:
        models = {m: stack.enter_context(LlamaModel(p, gpu_layers)) for m, p in paths.items()}
        sessions = [
            stack.enter_context(LlamaSession(paths[r.model], n_ctx=opts.ctx, n_threads=threads,
                                             cache_type=r.kv_cache.type_k, share=models[r.model]))
            for r in rows
        ]  # fmt: skip
        rounds = [opts.speed_rounds if r.main else alternative_rounds(opts.speed_rounds) for r in rows]
        bar = progress.add_task("speed (interleaved)", total=sum(rounds))
        for row, speed in zip(rows, _speed(sessions, tokens, opts, rounds, lambda: progress.advance(bar))):
            row.speed = speed


def _speed(
    sessions: list[LlamaSession], tokens: list[int], opts: VerifyOptions, rounds: list[int],
    advance: Callable[[], None],
) -> list[Speed]:  # fmt: skip
    prompt = min(opts.speed_prompt, opts.ctx - opts.speed_gen)
    return measure_speed(sessions, tokens, prompt_tokens=prompt, gen_tokens=opts.speed_gen, rounds=rounds,
                         advance=advance)  # fmt: skip


def _same_tokens(reference_path: Path, model_gguf: Path, text: str, reference: str | Path) -> Tokenized:
    """The held-out text's tokens, the same under both files' vocabularies (read without
    their weights, before either model is loaded)."""
    ref, mine = tokenize_file(reference_path, text), tokenize_file(model_gguf, text)
    if ref != mine:
        raise HopscotchError(
            f"{model_gguf} and the reference {reference} tokenize differently: not the same base model"
        )
    return mine


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


def _settings(
    opts: VerifyOptions, threads: int, gpu_layers: int, placement: str, interleaved: bool
) -> dict[str, object]:
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
        # both models loaded together for the speed rounds only when they fit (needs.interleaves)
        "speed_rounds": None if not opts.speed else "interleaved" if interleaved else "sequential",
    }
