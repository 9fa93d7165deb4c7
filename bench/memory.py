"""Peak memory of every stage against the model's size and against the estimate printed
before the stage starts.

    .venv/bin/python bench/memory.py [--models smollm2,llama-3.2-1b,llama-3.2-3b] [--markdown docs/memory-benchmark.md]

For SmolLM2-135M (the bundled Q4_1 GGUF) and random-weight Hugging Face Llamas of the
shapes of Llama-3.2-1B and -3B (bf16 safetensors, built here with the Llama 3 tokenizer),
each stage runs in a fresh process that reports its peak resident memory (VmHWM):
  - search: bf16 on the CPU with a small budget (by default 8 x 64 training tokens, 1 or 2
    skips; --skips, --samples, --seq-len, ... set it),
  - convert: the plan folded into an f16 GGUF,
  - parity: the torch side of verify's parity check, layer by layer, measured as the rise
    of the peak over the process's memory once the llama.cpp model is loaded and warm,
  - verify: the whole verify with parity (the reference converted to f16, then each GGUF
    in llama.cpp in turn, perplexity and KL on two windows, no speed test),
  - export: the one command (search, convert and verify as above) in one process.
Goals (issue 8): search <= 1.3 x weights + teacher cache + activations; convert <= 2 x
its largest tensor (float32) + the process's own memory; parity <= one decoder layer in
float32 + activations + a constant; every estimate within 25% of the measurement.
Goals (issue 21): verify <= one model (the larger GGUF) + 1 GiB; the one command <= 1.5 x
the bf16 weights + 3 GiB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

PRELUDE = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import torch, transformers, accelerate, gguf, llama_cpp  # imported before any peak is taken: the constant
torch.set_num_threads({threads})
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
def reset_peak():  # Linux: writing 5 to clear_refs resets VmHWM to the current RSS
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
t0 = time.perf_counter()
result = {{}}
"""

SEARCH = """
from hopscotch_export.search import SearchOptions, run_search
from hopscotch_export.search.placement import plan_placement
from hopscotch_export.sources import open_source
from hopscotch_export.estimates import PROCESS_BASE
src = open_source({src!r})
o = SearchOptions(skips={skips}, device='cpu', dtype='bfloat16', data={data!r}, **{budget!r})
placement = plan_placement(src.spec, o, source_kind=src.kind)
need = placement.needs[0]
plan = run_search(src, o, Path({plan!r}), force=True)
steps = plan.provenance['search']['steps']
result = dict(estimate=need.bytes, parts=need.parts, process=PROCESS_BASE,
              step_seconds=[s['seconds'] for s in steps], seconds=plan.provenance['seconds'])
"""

CONVERT = """
from hopscotch_export.converters import convert
from hopscotch_export.converters.needs import convert_needs
from hopscotch_export.converters.outtypes import resolve_outtype
from hopscotch_export.plan import load_plan
from hopscotch_export.sources import open_source
src = open_source({src!r})
plan = load_plan({plan!r})
choice = resolve_outtype('f16', src.kind, next(src.tensors()).qtype)
need = [n for n in convert_needs(src, choice, Path({out!r}), plan=plan) if n.where == 'ram'][0]
base = status('VmRSS')
convert(src, plan, Path({out!r}), outtype='f16', force=True)
largest = max(t.n_elements for t in src.tensors()) * 4
result = dict(estimate=need.bytes, parts=need.parts, base=base, largest_f32=largest)
"""

PARITY = """
from hopscotch_export.verify.data import load_text
from hopscotch_export.verify.parity import parity_needs, torch_parity, _all_logits
from hopscotch_export.verify.perplexity import make_windows
from hopscotch_export.verify.llama_model import LlamaSession
from hopscotch_export.estimates import (attention_score_bytes, forward_activation_bytes, layer_bytes, logits_bytes,
                                      source_overhead)
from hopscotch_export.sources import open_source
src = open_source({src!r})
with LlamaSession(Path({gguf!r}), n_ctx=512, n_threads={threads}) as s:
    tokens = s.tokenize(load_text(None, None, 'test').text)
    windows = make_windows(tokens, 512, s.bos if s.add_bos else None, 2)
    _all_logits(s, windows[0])  # llama.cpp's pages resident before the peak is reset
    base = status('VmRSS')
    reset_peak()
    parity = torch_parity(s, {src!r}, Path({plan!r}), windows)
    peak = status('VmHWM')
need = parity_needs(src.spec, len(windows), len(windows[0]), src.kind)[0]
spec, n, t = src.spec, len(windows), len(windows[0])
# the windows through one layer (as parity_needs counts them) and three tokens x vocab
# float32 arrays: torch's and llama.cpp's logits of a window, and the KL's temporaries
activations = (forward_activation_bytes(spec, n * t, 'float32') + attention_score_bytes(spec, n, t, 'float32')
               + 3 * logits_bytes(t, spec.vocab_size))
result = dict(estimate=need.bytes - need.parts['process'], parts=need.parts, base=base, rise=peak - base,
              layer_f32=layer_bytes(spec, 'float32'), activations=activations, mean_kl=parity.mean_kl,
              metadata=sum(source_overhead(src.kind, spec.vocab_size).values()))
"""

VERIFY = """
from hopscotch_export.verify import VerifyOptions, run_verify
from hopscotch_export.verify.needs import verify_needs
opts = VerifyOptions(plan=Path({plan!r}), source={src!r}, speed=False, chunks=2, threads={threads})
need = [n for n in verify_needs(Path({gguf!r}), {src!r}, opts) if n.where == 'ram'][0]
report = run_verify(Path({gguf!r}), {src!r}, opts)
result = dict(estimate=need.bytes, parts=need.parts, mean_kl=report.divergence.mean_kl,
              largest_model=max(report.reference.file_bytes, report.model.file_bytes))
"""

EXPORT = """
import hopscotch_export.estimates as estimates, hopscotch_export.search.command as search_command
from hopscotch_export.export import export
from hopscotch_export.search import SearchOptions
from hopscotch_export.verify import VerifyOptions
o = SearchOptions(skips={skips}, device='cpu', dtype='bfloat16', data={data!r}, **{budget!r})
v = VerifyOptions(speed=False, chunks=2, threads={threads})
# the one command's --dry-run: each stage's largest RAM need as it prints it (a stage's RAM
# needs are phases one after another: verify converts the reference, then loads it)
printed = {{}}
def keep(console, needs, title):
    printed[title] = max(n.bytes for n in needs if n.where == 'ram')
    return True
estimates.print_report = search_command.print_report = keep
export({src!r}, Path({out!r}), o, v, outtype='f16', dry_run=True)
code = export({src!r}, Path({out!r}), o, v, outtype='f16', force=True)
result = dict(code=code, printed=printed)
"""

#: The search's budget (SearchOptions fields), small so a bf16 search runs on a CPU.
BUDGET = {"samples": 8, "heldout": 2, "seq_len": 64, "batch_size": 2, "final_epochs": 1, "shortlist": 1}

#: The "constant" of the parity goal: the model skeleton, the head chunk and allocator
#: slack (a GGUF source's parsed metadata is added as measured by its own estimate).
CONSTANT = 256 * 2**20

EPILOGUE = """
result.update(peak=status('VmHWM'), wall=time.perf_counter() - t0)
print('RESULT ' + json.dumps(result))
"""


def child(code: str, threads: int, log: Path, **fields: object) -> dict:
    """Run one stage in a fresh process; its stderr goes to ``log``, with the peak so far
    (VmHWM, read every few seconds) appended, so a run stopped early still says how high it got."""
    script = PRELUDE.format(tests=str(ROOT / "tests"), threads=threads) + code.format(threads=threads, **fields)
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", script + EPILOGUE], stdout=subprocess.PIPE, stderr=err,
                                text=True, cwd=ROOT)  # fmt: skip
        seen, t0 = 0, time.perf_counter()
        while proc.poll() is None:
            time.sleep(5)
            peak = vm_hwm(proc.pid)
            if peak > seen:
                seen = peak
                err.write(f"\n[bench] {time.perf_counter() - t0:.0f} s: peak so far {gib(peak)} GiB\n")
                err.flush()
        out = proc.stdout.read() if proc.stdout else ""
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child failed:\n{log.read_text()[-4000:]}")


def vm_hwm(pid: int) -> int:
    """A running process's peak resident memory in bytes (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM")), 0)
    except OSError:
        return 0


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def build(name: str, work: Path) -> str:
    """The model spec to pass to the stages; random-weight models are built once."""
    if name == "smollm2":
        return "bundled:smollm2"
    from models import make_shaped_model

    path = work / name
    if not (path / "config.json").exists():
        print(f"building {name} (random bf16 weights) in {path} ...", flush=True)
        make_shaped_model(path, name)
    return str(path)


def run_model(name: str, work: Path, threads: int, data: Path, stages: set[str], budget: dict[str, int],
              skips: int | None) -> list[dict]:  # fmt: skip
    from hopscotch_export.sources import open_source

    src = build(name, work)
    spec = open_source(src).spec
    plan, gguf = work / f"{name}.plan.json", work / f"{name}.gguf"
    skips = skips or (2 if name != "llama-3.2-3b" else 1)
    rows: list[dict] = []
    alone = stages == {"export"}  # the one command makes its own plan and GGUF
    if "search" in stages or (not plan.exists() and not alone):
        rows.append(search_row(name, src, spec, skips, data, plan, threads, budget))
    if "convert" in stages or (not gguf.exists() and not alone):
        rows.append(convert_row(name, src, plan, gguf, threads))
    if "parity" in stages:
        rows.append(parity_row(name, src, plan, gguf, threads))
    if "verify" in stages:
        rows.append(verify_row(name, src, plan, gguf, threads))
    if "export" in stages:
        rows.append(export_row(name, src, spec, skips, data, work, threads, budget))
    return rows


def search_row(name: str, src: str, spec: Any, skips: int, data: Path, plan: Path, threads: int,
               budget: dict[str, int]) -> dict:  # fmt: skip
    from hopscotch_export.estimates import weight_bytes

    print(f"[{name}] search ...", flush=True)
    s = child(SEARCH, threads, plan.parent / f"{name}-search.log", src=src, skips=skips, data=str(data),
              plan=str(plan), budget=budget)  # fmt: skip
    weights = weight_bytes(spec, "bfloat16")
    goal = 1.3 * weights + s["parts"]["teacher cache"] + s["parts"]["activations"] + s["process"]
    return dict(model=name, stage="search (bf16, CPU)", peak=s["peak"], estimate=s["estimate"], goal=goal,
                goal_text="1.3 x weights + teacher + activations + process",
                step_seconds=s["step_seconds"], seconds=s["seconds"])  # fmt: skip


def convert_row(name: str, src: str, plan: Path, gguf: Path, threads: int) -> dict:
    print(f"[{name}] convert ...", flush=True)
    c = child(CONVERT, threads, plan.parent / f"{name}-convert.log", src=src, plan=str(plan), out=str(gguf))
    return dict(model=name, stage="convert (f16)", peak=c["peak"], estimate=c["estimate"],
                goal=2 * c["largest_f32"] + c["base"], goal_text="2 x largest tensor (f32) + process")  # fmt: skip


def parity_row(name: str, src: str, plan: Path, gguf: Path, threads: int) -> dict:
    print(f"[{name}] parity ...", flush=True)
    p = child(PARITY, threads, plan.parent / f"{name}-parity.log", src=src, plan=str(plan), gguf=str(gguf))
    act = p["activations"] + p["metadata"] + CONSTANT
    return dict(model=name, stage="parity (rise, torch side)", peak=p["rise"], estimate=p["estimate"],
                goal=p["layer_f32"] + act, goal_text="one layer f32 + activations + GGUF metadata + 256 MiB",
                mean_kl=p["mean_kl"])  # fmt: skip


def verify_row(name: str, src: str, plan: Path, gguf: Path, threads: int) -> dict:
    print(f"[{name}] verify ...", flush=True)
    v = child(VERIFY, threads, plan.parent / f"{name}-verify.log", src=src, plan=str(plan), gguf=str(gguf))
    return dict(model=name, stage="verify with parity (whole)", peak=v["peak"], estimate=v["estimate"],
                goal=v["largest_model"] + 2**30, goal_text="one model (the larger GGUF) + 1 GiB",
                mean_kl=v["mean_kl"])  # fmt: skip


def export_row(name: str, src: str, spec: Any, skips: int, data: Path, work: Path, threads: int,
               budget: dict[str, int]) -> dict:  # fmt: skip
    """The one command (search, convert, verify with parity) in one process; its estimate is
    the largest stage's RAM as its ``--dry-run`` prints them (run first in the same process)."""
    from hopscotch_export.estimates import weight_bytes

    print(f"[{name}] the one command ...", flush=True)
    out = work / "export" / f"{name}.gguf"
    out.parent.mkdir(exist_ok=True)
    e = child(EXPORT, threads, work / f"{name}-export.log", src=src, skips=skips, data=str(data), out=str(out),
              budget=budget)  # fmt: skip
    return dict(model=name, stage="the one command (search, convert, verify)", peak=e["peak"],
                estimate=max(e["printed"].values()), goal=1.5 * weight_bytes(spec, "bfloat16") + 3 * 2**30,
                goal_text="1.5 x weights + 3 GiB", exit_code=e["code"], printed=e["printed"])  # fmt: skip


def markdown(rows: list[dict]) -> str:
    out = [
        "| model | stage | peak GiB | estimate GiB | estimate / peak | goal GiB | goal met |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        goal = "" if r["goal"] is None else gib(r["goal"])
        met = "" if r["goal"] is None else ("yes" if r["peak"] <= r["goal"] else "NO")
        estimate, ratio = ("", "") if r["estimate"] is None else (gib(r["estimate"]), f"{r['estimate'] / r['peak']:.2f}")
        out.append(f"| {r['model']} | {r['stage']} | {gib(r['peak'])} | {estimate} | {ratio} | {goal} | {met} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,llama-3.2-1b,llama-3.2-3b")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hopscotch-memory-bench"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stages", default="search,convert,parity,verify,export",
                    help="stages to measure; a missing plan or GGUF is made first")
    ap.add_argument("--skips", type=int, help="blocks the search removes (default: 2, or 1 for the 3B shape)")
    for flag, default in BUDGET.items():
        ap.add_argument(f"--{flag.replace('_', '-')}", type=int, default=default, help="search budget")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    from hopscotch_export.search.generate import builtin_prompts

    data = args.work / "text.txt"
    data.write_text("\n\n".join(builtin_prompts() * 3), encoding="utf-8")
    rows: list[dict] = []
    t0 = time.perf_counter()
    for name in args.models.split(","):
        budget = {k: getattr(args, k) for k in BUDGET}
        rows += run_model(name, args.work, args.threads, data, set(args.stages.split(",")), budget, args.skips)
        print(markdown(rows), flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s")
    for r in rows:
        if "step_seconds" in r:
            print(f"{r['model']}: greedy step seconds {r['step_seconds']}; stage seconds {r['seconds']}")
        if "printed" in r:
            print(f"{r['model']}: the one command's printed estimates (GiB): "
                  + ", ".join(f"{k}: {gib(v)}" for k, v in r["printed"].items()))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.markdown:
        args.markdown.write_text(markdown(rows) + "\n")


if __name__ == "__main__":
    main()
