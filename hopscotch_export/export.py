"""The one command: ``hopscotch-export MODEL --skips 4 -o model.gguf``.

Runs search, convert and verify in turn and writes beside ``model.gguf``: the plan
(``model.plan.json``), the verification report (``model.verify.json``), an Ollama
Modelfile (``model.Modelfile``) and a model card to publish (``model.README.md``); with
``--skips auto`` also the quality curve (``model.curve.json``, ``model.curve.png``). Every
option of the search and verify stages is available; its signature is assembled from theirs, so each option is declared once.
``--max-kl`` and ``--max-ppl-increase`` belong to both: they choose the count of removed
blocks (``--skips auto``) and are the limits verify checks the file against; with verify
on, the count is chosen by verify's measure of the converted file (gate.py), so the limit
that chose it cannot fail it. ``--tasks`` scores lm-eval tasks on the file and the original
(``model.eval.json``); with ``--skips auto``, on every count of the curve too (curve_tasks.py).
"""

from __future__ import annotations

import dataclasses
import inspect
import shutil
import typing
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from .card import model_card, upload_commands
from .converters.reference import check_reference_outtype
from .curve_tasks import files_to_score
from .errors import HopscotchError
from .evaluation.command import parse_limit, parse_tasks
from .evaluation.run import EvalOptions
from .families import gguf_help
from .files import atomic_output, check_writable, write_text_atomic
from .gate import NoCountPasses, gated, gated_count
from .plan import Plan, load_plan
from .run_commands import WHY_FLASH_ATTENTION, llama_cpp_command, ollama_environment
from .search import distributed
from .search.command import parse_layers, parse_shortlist, parse_skips, search_command
from .search.options import SearchOptions
from .sources import GgufFileSource, ModelSource, hub_ref, local_model, open_source
from .verify.alternatives import check_cache_type
from .verify.command import EXIT_LIMIT, verify_command
from .verify.options import VerifyOptions

console = Console(stderr=True)

#: Parameters of the stage commands that the one command sets itself.
_SEARCH_OWN = {"model", "output", "resume", "force"}
#: limits both stages take: declared once (by search), given to both
_LIMITS = {"max_kl", "max_ppl_increase"}
#: options both stages take
_SHARED = {*_LIMITS, "threads"}
_VERIFY_OWN = {"model", "reference", "plan", "source", "json_out", "force", "dry_run", *_SHARED}


@dataclasses.dataclass(frozen=True)
class Outputs:
    """Where the one command writes, all beside the GGUF."""

    gguf: Path

    @property
    def plan(self) -> Path:
        return self.gguf.with_suffix(".plan.json")

    @property
    def report(self) -> Path:
        return self.gguf.with_suffix(".verify.json")

    @property
    def modelfile(self) -> Path:
        return self.gguf.with_suffix(".Modelfile")

    @property
    def card(self) -> Path:
        """The model card, the README of the hub repository it is uploaded to."""
        return self.gguf.with_suffix(".README.md")

    @property
    def evaluation(self) -> Path:
        """lm-eval's results for ``--tasks``, the exported file beside the original."""
        return self.gguf.with_suffix(".eval.json")

    @property
    def curve(self) -> Path:
        """The quality curve's JSON (``--skips auto``); its plot is the same name in ``.png``."""
        return self.gguf.with_suffix(".curve.json")

    @property
    def counts(self) -> Path:
        """The search's plan of every count on the curve, until verify's measure has chosen one."""
        return self.gguf.with_suffix(".counts")


def export(
    model: str,
    output: Path,
    search: SearchOptions,
    verify: VerifyOptions | None,
    *,
    outtype: str = "auto",
    imatrix: Path | None = None,
    name: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    work_dir: Path | None = None,
    revision: str | None = None,
    tasks: tuple[str, ...] = (),
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    include_path: Path | None = None,
) -> int:
    """Search, convert, verify (and score lm-eval's ``tasks`` beside the original, with eval's
    ``limit``, ``num_fewshot`` and ``include_path``; with ``--skips auto``, every count of the
    curve too); returns the exit code: 1 when a gate fails (the file does not match torch under
    the plan, or a quality limit the user set is exceeded).

    ``dry_run`` prints what each stage will need and where it will run, and stops. A hub
    MODEL (at ``revision``) is fetched once; every stage then reads that local copy."""
    from .converters import convert
    from .converters.vocab import check_hf_tokenizer
    from .search.run import curve_paths, run_search, write_curve
    from .verify.measure import run_verify

    out = Outputs(Path(output))
    if distributed.launched():
        raise HopscotchError(
            f"the one command runs in one process; under torchrun run `-m hopscotch_export search MODEL "
            f"-o {out.plan} ...`, then this command again without torchrun (it reuses that plan)"
        )
    if out.gguf.suffix.lower() != ".gguf":
        raise HopscotchError(f"-o {output} should end in .gguf (the plan, report and Modelfile go beside it)")
    hub = hub_ref(model)
    model = local_model(model, revision)
    source = open_source(model)
    if not isinstance(source, GgufFileSource):  # a GGUF source brings its vocabulary as it is
        check_hf_tokenizer(source.path, source.spec.vocab_size)  # before hours of search
    if verify is not None:
        check_reference_outtype(source, verify.reference_outtype)  # before hours of search
        check_cache_type(verify.cache_type, source.spec.head_dim)  # llama.cpp's refusal, before hours of search
    given = [o for o, v in (("--limit", limit), ("--num-fewshot", num_fewshot), ("--include-path", include_path))
             if v is not None]  # fmt: skip
    if given and not tasks:
        raise HopscotchError(f"{', '.join(given)} set how --tasks are scored; add --tasks (or drop them)")
    cache_type = verify.cache_type if verify is not None else "f16"
    threads, gpu_layers = (verify.threads, verify.gpu_layers) if verify else (None, None)
    evaluation = EvalOptions(
        tasks, limit=limit, num_fewshot=num_fewshot, include_path=include_path, threads=threads,
        gpu_layers=gpu_layers, cache_type=cache_type, work_dir=work_dir,
    )  # fmt: skip
    if dry_run:
        _dry_run(source, model, out, search, verify, outtype, work_dir, imatrix is not None, tasks)
        return 0
    outputs = (out.gguf, out.modelfile, out.card, *((out.report,) if verify else ()), *((out.evaluation,) if tasks else ()))
    for path in outputs:
        check_writable(path, force)
    if tasks:
        from .evaluation.run import check_tasks

        check_tasks(tasks, include_path)  # before hours of search: lm-eval installed, the tasks and their data there
        if search.curve:
            console.print(f"--tasks with --skips auto: {files_to_score(search.for_spec(source.spec).skips)}")

    plan = _reusable_plan(out.plan, source, search, force)
    by_gate = search.curve and verify is not None
    # the plan of every count, kept while the gate measures them or the tasks score them
    keep_counts = search.curve and (by_gate or bool(tasks))
    if plan is None:
        console.rule("[bold]1/3 search")
        resume = out.plan if out.plan.exists() and not force else None
        if keep_counts:
            if out.counts.exists() and not out.counts.is_dir():
                raise HopscotchError(f"{out.counts} is in the way of the search's plans per count; move it away")
            if resume is None and not force and out.counts.is_dir() and any(out.counts.iterdir()):
                raise HopscotchError(
                    f"{out.counts} already exists and is not from this search; move it away or pass --force"
                )
            out.counts.mkdir(exist_ok=True)
        try:
            plan = run_search(
                source, search, out.plan, resume=resume, force=force, console=console, curve_out=out.curve,
                resume_hint="run the same command again to continue", count_plans=out.counts if keep_counts else None,
            )
        except BaseException:  # the count plans are written at the search's end: none is of use
            shutil.rmtree(out.counts, ignore_errors=True)
            raise
    else:
        console.print(f"reusing the complete plan in {out.plan} (pass --force to search again)")

    curve_tasks = None
    if tasks and "curve" in plan.provenance:
        from .curve_tasks import CurveTasks, already_scored, task_settings

        if not already_scored(plan.provenance["curve"], task_settings(evaluation, outtype, imatrix)):
            curve_tasks = CurveTasks(
                source, model, plan.provenance["curve"], out.counts, evaluation, outtype=outtype, imatrix=imatrix,
                name=name, work_dir=work_dir, console=console,
            )  # fmt: skip
    if by_gate and not gated(plan, verify, outtype, imatrix):  # type: ignore[arg-type]
        assert verify is not None
        console.rule("[bold]2/3 convert the counts near the limit, measured as verify measures")
        try:
            with gated_count(
                source, model, plan, out.counts, verify, outtype=outtype, name=name, work_dir=work_dir,
                near=out.gguf, console=console, imatrix=imatrix,
                measured_file=curve_tasks.score if curve_tasks is not None else None,
            ) as (plan, converted):  # fmt: skip
                plan.save(out.plan, force=True)
                write_curve(plan.provenance["curve"], curve_paths(out.plan, out.curve), console, force=True)
                with atomic_output(out.gguf, force) as tmp:
                    shutil.move(converted, tmp)
        except NoCountPasses:  # the plans per count are of no further use (an interrupt keeps them to resume)
            shutil.rmtree(out.counts, ignore_errors=True)
            raise
        if curve_tasks is None:
            shutil.rmtree(out.counts, ignore_errors=True)
    else:
        console.rule("[bold]2/3 convert")
        convert(
            source, plan, out.gguf, outtype=outtype, force=force, name=name, console=console, work_dir=work_dir,
            imatrix=imatrix,
        )
    write_text_atomic(out.modelfile, _modelfile_text(out.gguf, cache_type), force=force)

    report = None
    if verify is not None:
        console.rule("[bold]3/3 verify")
        report = run_verify(out.gguf, model, dataclasses.replace(verify, plan=out.plan, source=model), console)
        report.render(console)
        report.save(out.report, force=force)
        _plot_frontier(out, plan, report)

    shown_name = name or out.gguf.stem.lower()
    curve_png = out.curve.with_suffix(".png") if "curve" in plan.provenance else None
    card = model_card(out.gguf, out.modelfile, plan, report, source, hub, cache_type, shown_name, curve_png)
    write_text_atomic(out.card, card, force=force)
    if tasks:
        if curve_tasks is not None:  # every count, the original once; the exported count's scores are reused
            console.rule("[bold]lm-eval tasks on every count of the curve")
            curve = {**plan.provenance["curve"], "tasks": curve_tasks.finish(plan.provenance["curve"], out.gguf)}
            plan = plan.with_fields(provenance={**plan.provenance, "curve": curve})
            plan.save(out.plan, force=True)
            write_curve(curve, curve_paths(out.plan, out.curve), console, force=True)
            if report is not None:
                _plot_frontier(out, plan, report)
            shutil.rmtree(out.counts, ignore_errors=True)
            scores = curve_tasks.report(curve["chosen"], out.gguf)
        else:
            from .evaluation import run_eval

            console.rule("[bold]lm-eval tasks")
            scores = run_eval(out.gguf, model, evaluation, console)
        scores.render(Console())
        scores.save(out.evaluation, force=force)
    _summary(out, plan, out.gguf.stat().st_size, report, source, cache_type, evaluated=bool(tasks))
    if report is not None and report.passed is False:
        failed = "; ".join(f"{c.name}: {c.value:.4g} > {c.limit:.4g}" for c in report.limits if not c.passed)
        console.print(f"[bold red]failed:[/] {failed} (figures in {out.report})", highlight=False, soft_wrap=True)
        return EXIT_LIMIT
    return 0


def _dry_run(
    source: ModelSource, model: str, out: Outputs, search: SearchOptions, verify: VerifyOptions | None,
    outtype: str, work_dir: Path | None, imatrix: bool = False, tasks: tuple[str, ...] = (),
) -> None:  # fmt: skip
    """Each stage's estimate, as it will be checked when the stage starts."""
    from .converters.convert import choose_outtype
    from .converters.needs import convert_needs
    from .estimates import print_report
    from .search.command import print_estimate
    from .verify.needs import verify_needs

    shown = Console()
    print_estimate(source, search, shown)
    choice = choose_outtype(source, outtype, imatrix)
    conversion = convert_needs(source, choice, out.gguf, work_dir)
    print_report(shown, conversion, f"convert to {choice.name}")
    if verify is not None:
        size = next(v for n in conversion for k, v in n.parts.items() if k.startswith(out.gguf.name))
        direct = choice.direct.name.lower() if choice.direct is not None else None
        kind = choice.name if choice.name not in ("auto", "source") else direct
        opts = dataclasses.replace(verify, plan=out.plan, source=model, work_dir=work_dir)
        print_report(shown, verify_needs(out.gguf, model, opts, model_bytes=size, model_outtype=kind), "verify")
    if tasks:
        files = files_to_score(search.for_spec(source.spec).skips) if search.curve else (
            "2 files scored on the tasks: the exported file and the original"
        )  # fmt: skip
        shown.print(f"lm-eval tasks ({', '.join(tasks)}): {files}", highlight=False, soft_wrap=True)


def _reusable_plan(path: Path, source: ModelSource, search: SearchOptions, force: bool) -> Plan | None:
    """A complete plan from an earlier run that removed as many blocks (or, with
    ``--skips auto``, chose its count under the same limits), so a rerun is cheap."""
    if force or not path.exists():
        return None
    plan = load_plan(path)
    plan.check_model(source.model_ref(), fix="pass --force to search again on this model")
    if not plan.complete:
        return None
    removed = len(plan.skip) + len(plan.linear)
    curve = plan.provenance.get("curve")
    unit = plan.provenance.get("options", {}).get("unit", "block")
    if search.curve:
        limits = {"max_kl": search.max_kl, "max_ppl_increase": search.max_ppl_increase}
        same = curve is not None and curve["limits"] == limits and unit == search.unit
        wanted = "a count chosen under these limits"
    else:
        n, kv = plan.model.n_layers, plan.model.n_kv_heads or 1
        saved = round((plan.kv_saving() or 0.0) * n * kv)  # KV groups; blocks when the plan predates n_kv_heads
        same = curve is None and unit == search.unit and saved == search.for_model(n).kv_target(n, kv)
        wanted = f"{search.skips} blocks removed" if search.kv_saving is None else f"--kv-saving {search.kv_saving:g}"
        wanted += "" if search.unit == "block" else f" with --unit {search.unit}"
    if not same:
        what = f"{removed} blocks" if not plan.kv_groups else f"{plan.kv_saving():.1%} of the KV cache"
        raise HopscotchError(
            f"{path} holds a finished plan that removes {what}{' (--skips auto)' if curve else ''}, "
            f"not {wanted}; pass --force to search again"
        )
    return plan


def _modelfile_text(gguf_path: Path, cache_type: str) -> str:
    """Modelfile with the chat format and stop tokens read from the written GGUF."""
    from .ollama import modelfile
    from .verify.llama_model import chat_format

    template, eos = chat_format(gguf_path)
    return modelfile(gguf_path.name, template, eos, cache_type)


def _summary(
    out: Outputs, plan: Plan, size: int, report: Any, source: ModelSource, cache_type: str, evaluated: bool = False
) -> None:
    from .ollama import ollama_create_command

    table = Table(title="hopscotch-export", show_header=True)
    table.add_column("")
    table.add_column("original", justify="right")
    table.add_column("exported", justify="right")
    n = plan.model.n_layers
    name = out.gguf.stem.lower()
    removed = [f"skipped {', '.join(map(str, plan.skip))}"] if plan.skip else []
    removed += [f"linear {', '.join(map(str, plan.linear))}"] if plan.linear else []
    kept = n - len(plan.skip) - len(plan.linear)
    table.add_row("attention blocks", str(n), f"{kept} ({'; '.join(removed) or 'none removed'})")
    if plan.kv_groups:
        kv = plan.model.n_kv_heads or 0  # a plan cutting groups always records it
        cut = sum(kv - len(g) for g in plan.kv_groups.values())
        table.add_row(
            "KV groups (KV head + its query heads)", str(n * kv),
            f"{n * kv - round(plan.kv_saving() * n * kv)} ({cut} cut from layers "
            f"{', '.join(map(str, sorted(plan.kv_groups)))}; KV cache -{plan.kv_saving():.1%})",
        )  # fmt: skip
    if report is not None:
        ref, mod = report.reference, report.model
        table.add_row("file size", _mib(ref.file_bytes), _mib(mod.file_bytes))
        table.add_row(f"KV cache at {report.text.ctx} tokens", _mib(ref.kv_cache.bytes), _mib(mod.kv_cache.bytes))
        if ref.speed and mod.speed:
            table.add_row(
                "prompt / generation tok/s",
                f"{ref.speed.prompt_tps:.0f} / {ref.speed.gen_tps:.0f}",
                f"{mod.speed.prompt_tps:.0f} / {mod.speed.gen_tps:.0f} "
                f"(x{mod.speed.prompt_tps / ref.speed.prompt_tps:.2f} / x{mod.speed.gen_tps / ref.speed.gen_tps:.2f})",
            )
        table.add_row(
            "perplexity", f"{ref.perplexity.ppl:.3f}",
            f"{mod.perplexity.ppl:.3f} ({report.ppl_increase_pct:+.1f}%)",
        )  # fmt: skip
        curve = "curve" in plan.provenance  # the count was chosen on the search's estimate, then by verify's
        estimate = f" (search's estimate {plan.provenance['heldout']['final']['kl']:.4f})" if curve else ""
        table.add_row("mean KL to original", "", f"{report.divergence.mean_kl:.4f}{estimate}")
    else:
        table.add_row("file size", _mib(source.path.stat().st_size) if source.kind == "gguf" else "", _mib(size))
    Console().print(table)
    lines = [
        f"GGUF:      {out.gguf}",
        f"plan:      {out.plan}",
        *([f"report:    {out.report}"] if report is not None else []),
        *([f"lm-eval:   {out.evaluation}"] if evaluated else []),
        *([f"curve:     {out.curve}, {out.curve.with_suffix('.png')}"] if "curve" in plan.provenance else []),
        f"Modelfile: {out.modelfile}",
        f"card:      {out.card}",
        "",
        f"llama.cpp: {llama_cpp_command(out.gguf, cache_type)}",
        f"Ollama:    {ollama_environment(cache_type)} ollama serve",
        f"           {ollama_create_command(out.modelfile, name)} && ollama run {name}",
        f"({WHY_FLASH_ATTENTION})",
        "",
        "publish (the card becomes the repository's README.md):",
        *(f"           {c}" for c in upload_commands(_published(out, plan), out.card, f"YOUR_NAME/{out.gguf.stem}")),
    ]
    Console().print("\n".join(lines), highlight=False, soft_wrap=True)


def _published(out: Outputs, plan: Plan) -> list[Path]:
    """The files the card refers to, uploaded beside it."""
    curve = [out.curve.with_suffix(".png")] if "curve" in plan.provenance else []
    return [out.gguf, out.modelfile, *curve]


def _plot_frontier(out: Outputs, plan: Plan, report: Any) -> None:
    """Redraw the curve's plot (this run's own output) with what verify measured beside the
    export: the KV-cache alternatives as points, and the curve with a q8_0 cache as a line."""
    from .search.curve_plot import Combined, VerifyPoint, plot_curve

    curve = plan.provenance.get("curve")
    rows = {(r.model, r.kv_cache.type_k): r for r in report.rows}
    ref = rows.get(("original", "f16"))
    if curve is None or ref is None or len(rows) < 3:
        return
    measured = [
        VerifyPoint(r.label, 100 * (1 - r.kv_cache.bytes / ref.kv_cache.bytes), r.mean_kl) for r in report.rows if r is not ref
    ]  # fmt: skip
    combined = None
    q8, f16, export_q8 = rows.get(("original", "q8_0")), rows.get(("export", "f16")), rows.get(("export", "q8_0"))
    if q8 is not None and f16 is not None and export_q8 is not None:
        combined = Combined("q8_0", q8.kv_cache.bytes / ref.kv_cache.bytes, export_q8.mean_kl - f16.mean_kl)
    plot_curve(curve, out.curve.with_suffix(".png"), force=True, measured=measured, combined=combined)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


# --- the typer command, its signature assembled from the stage commands (docs/design.md, 6) --


def _stage_params(func: Any, own: set[str], prefix: str = "", taken: set[str] = frozenset()) -> list[inspect.Parameter]:
    """A stage command's parameters, minus those the one command sets; a name in ``taken`` gets ``prefix``.

    The stage's typer options are used as they are: a renamed one declares no flags of its own,
    so typer names it after its new parameter (``verify_data``: ``--verify-data``)."""
    hints = typing.get_type_hints(func)
    return [
        p.replace(name=prefix + p.name if p.name in taken else p.name, annotation=hints[p.name])
        for p in inspect.signature(func).parameters.values()
        if p.name not in own
    ]


def export_command(**kwargs: Any) -> None:
    """Search, convert and verify in one go: MODEL --skips N -o model.gguf."""
    search_fields = {f.name for f in dataclasses.fields(SearchOptions)}
    search_kw = {k: v for k, v in kwargs.items() if k in search_fields}
    search_kw |= parse_skips(kwargs["skips"], kwargs["max_skips"], kwargs["kv_saving"])
    search_kw["shortlist"] = parse_shortlist(search_kw["shortlist"])
    search_kw["protect"] = parse_layers(search_kw["protect"])
    if not search_kw["curve"]:  # a fixed count: the limits are verify's alone
        search_kw |= dict.fromkeys(_LIMITS)
    verify_fields = {f.name for f in dataclasses.fields(VerifyOptions)}
    verify_kw = {k.removeprefix("verify_"): v for k, v in kwargs.items() if k.startswith("verify_")}
    verify_kw |= {k: v for k, v in kwargs.items() if k in verify_fields and (k not in search_fields or k in _SHARED)}
    code = export(
        kwargs["model"],
        kwargs["output"],
        SearchOptions.sized_for_device(**search_kw),
        None if kwargs["no_verify"] else VerifyOptions(**verify_kw),
        outtype=kwargs["outtype"],
        imatrix=kwargs["imatrix"],
        name=kwargs["name"],
        force=kwargs["force"],
        dry_run=kwargs["dry_run"],
        work_dir=kwargs["work_dir"],
        revision=kwargs["revision"],
        tasks=parse_tasks(kwargs["tasks"] or ""),
        limit=parse_limit(kwargs["limit"]),
        num_fewshot=kwargs["num_fewshot"],
        include_path=kwargs["include_path"],
    )
    raise typer.Exit(code)


def _export_signature() -> inspect.Signature:
    P = inspect.Parameter.POSITIONAL_OR_KEYWORD
    own = [
        inspect.Parameter("model", P, annotation=str, default=typer.Argument(
            ..., help=f"Hugging Face folder, hub id, GGUF file ({gguf_help()}), hub GGUF (org/repo:Q4_K_M, "
            "org/repo/file.gguf), or bundled:smollm2.")),
        inspect.Parameter("output", P, annotation=Path, default=typer.Option(
            ..., "-o", "--output", help="GGUF to write; plan, report, Modelfile and card go beside it.")),
        inspect.Parameter("outtype", P, annotation=str, default=typer.Option(
            "auto", "--outtype", help="GGUF output type (see `convert --help`).")),
        inspect.Parameter("imatrix", P, annotation=Optional[Path], default=typer.Option(
            None, "--imatrix", help="Importance matrix for a quantized --outtype (see `convert --help`).")),
        inspect.Parameter("name", P, annotation=Optional[str], default=typer.Option(
            None, "--name", help="general.name written into the GGUF.")),
        inspect.Parameter("no_verify", P, annotation=bool, default=typer.Option(
            False, "--no-verify", help="Skip the llama.cpp verification.")),
        inspect.Parameter("tasks", P, annotation=Optional[str], default=typer.Option(
            None, "--tasks", help="Also score lm-eval tasks (arc_easy,hellaswag,...) on the file and the original; "
            "with --skips auto, on every count of the curve too.")),
        inspect.Parameter("limit", P, annotation=Optional[float], default=typer.Option(
            None, "--limit", help="--tasks: documents per task (a fraction if below 1).")),
        inspect.Parameter("num_fewshot", P, annotation=Optional[int], default=typer.Option(
            None, "--num-fewshot", help="--tasks: few-shot examples (default: the task's).")),
        inspect.Parameter("include_path", P, annotation=Optional[Path], default=typer.Option(
            None, "--include-path", help="--tasks: folder of task YAML files of your own (lm-eval's --include_path).")),
        inspect.Parameter("force", P, annotation=bool, default=typer.Option(
            False, "--force", help="Overwrite outputs and search again even if a plan exists.")),
    ]  # fmt: skip
    search = _stage_params(search_command, _SEARCH_OWN)
    taken = {p.name for p in own + search}
    verify = _stage_params(verify_command, _VERIFY_OWN, prefix="verify_", taken=taken)
    return inspect.Signature(own + search + verify)


export_command.__signature__ = _export_signature()  # type: ignore[attr-defined]
export_command.__annotations__ = {p.name: p.annotation for p in export_command.__signature__.parameters.values()}

export_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
export_app.command(
    help="Search, convert and verify in one go. Subcommands: search, convert, verify, inspect "
    "(see hopscotch-export --help)."
)(export_command)
