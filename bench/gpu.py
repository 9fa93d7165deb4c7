"""The search at real size on CUDA: time per stage and peak GPU memory, default search
against the paper's exhaustive one (``--shortlist all``), then convert and verify.

    bash bench/gpu.sh            # or: python bench/gpu.py --models llama-3.2-1b,llama-3.1-8b

Models: ``--models`` takes Hugging Face folders, or shape names from tests/models.py
(``llama-3.2-1b``, ``llama-3.2-3b``, ``llama-3.1-8b``), which are built with random bf16
weights when no real model is at hand (a GPU machine here reaches no hub). Calibration is
the built-in prompts as plain text, so the run needs no generation step. Prints one table
and writes it as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))


def peak_gpu() -> int:
    import torch

    return sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))


def reset_gpu() -> None:
    import torch

    for i in range(torch.cuda.device_count()):
        torch.cuda.reset_peak_memory_stats(i)


def model_path(name: str, work: Path) -> str:
    if Path(name).is_dir():
        return name
    from models import make_shaped_model

    path = work / name
    if not (path / "config.json").exists():
        print(f"building {name} with random bf16 weights ...", flush=True)
        make_shaped_model(path, name)
    return str(path)


def search_row(src: str, label: str, shortlist: int | None, args: argparse.Namespace, data: Path) -> dict:
    from rich.console import Console

    from hopscotch_export.search import SearchOptions, run_search
    from hopscotch_export.search.placement import plan_placement
    from hopscotch_export.sources import open_source

    source = open_source(src)
    o = SearchOptions.sized_for_device(skips=args.skips, device="cuda", data=str(data), shortlist=shortlist)
    placement = plan_placement(source.spec, o)
    reset_gpu()
    t = time.perf_counter()
    out = args.work / f"{Path(src).name}.{label}.plan.json"
    plan = run_search(source, o, out, force=True, console=Console(file=io.StringIO()))
    return {
        "model": Path(src).name, "run": label, "wall_s": round(time.perf_counter() - t, 1),
        "seconds": plan.provenance["seconds"], "skip": list(plan.skip), "placement": placement.describe(),
        "estimate_gib": {n.where: round(n.bytes / 2**30, 2) for n in placement.needs},
        "peak_gpu_gib": round(peak_gpu() / 2**30, 2), "heldout_kl": plan.provenance["heldout"]["final"]["kl"],
        "plan": str(out),
    }  # fmt: skip


def export_row(src: str, plan: str, args: argparse.Namespace) -> dict:
    from rich.console import Console

    from hopscotch_export.converters import convert
    from hopscotch_export.plan import load_plan
    from hopscotch_export.sources import open_source
    from hopscotch_export.verify import VerifyOptions, run_verify

    gguf = args.work / f"{Path(src).name}.gguf"
    t = time.perf_counter()
    convert(open_source(src), load_plan(plan), gguf, outtype="f16", force=True, console=Console(file=io.StringIO()))
    t_convert = time.perf_counter() - t
    t = time.perf_counter()
    opts = VerifyOptions(plan=Path(plan), source=src, chunks=2, speed_rounds=1, gpu_layers=-1)
    report = run_verify(gguf, src, opts, Console(file=io.StringIO()))
    return {
        "model": Path(src).name, "convert_s": round(t_convert, 1), "verify_s": round(time.perf_counter() - t, 1),
        "parity_kl": report.parity.mean_kl if report.parity else None, "mean_kl": report.divergence.mean_kl,
        "kv_bytes": [report.reference.kv_cache.bytes, report.model.kv_cache.bytes],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="llama-3.2-1b,llama-3.1-8b")
    ap.add_argument("--skips", type=int, default=4)
    ap.add_argument("--work", type=Path, default=Path("bench-gpu"))
    ap.add_argument("--no-exhaustive", action="store_true", help="skip the --shortlist all comparison")
    ap.add_argument("--no-export", action="store_true", help="skip convert + verify")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    args.work.mkdir(parents=True, exist_ok=True)
    from hopscotch_export.search.generate import builtin_prompts

    data = args.work / "prompts.txt"
    data.write_text("\n\n".join(builtin_prompts() * 20), encoding="utf-8")
    rows: list[dict] = []
    for name in args.models.split(","):
        src = model_path(name, args.work)
        runs = [("default", 2)] + ([] if args.no_exhaustive else [("exhaustive", None)])
        for label, shortlist in runs:
            rows.append(search_row(src, label, shortlist, args, data))
            print(json.dumps(rows[-1]), flush=True)
        if not args.no_export:
            rows.append(export_row(src, rows[-len(runs)]["plan"], args))
            print(json.dumps(rows[-1]), flush=True)
    (args.json or args.work / "gpu-bench.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
