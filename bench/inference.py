"""llama.cpp speed of SmolLM2 with 0, 4, 8 and 12 attention blocks skipped, with 4 and 8
attention blocks replaced by linear layers (`--linear`), and with as many KV groups removed
as 4 and 8 blocks hold (`--groups`), each with every KV cache type of `--cache-types`, in
one run.

Every variant, the 0-skip baseline included, is written by the converter (a `deci` file).
For each context length C all variants are loaded side by side (flash attention on) and
measured interleaved (forward order, then reverse, ...): a prompt of C - G tokens from
scratch, then G generated tokens (one position at a time, logits on) at depth C - G.
With `--prompt-once` each file decodes its prompt once (its prompt figure) and every round
only generates, the cache dropped back to the prompt first: at 8192 tokens a prompt costs
minutes and G generated tokens seconds, so many more generation rounds fit (the JSON rows
say `"prompt_once": true`; every row gives the spread of generation tokens per CPU-second
over its rounds, in the table as min-max).
Reported: median tokens/s by wall clock, ratios to 0 skips by wall clock and by CPU time
of this process (steadier on a shared machine), llama.cpp's KV cache at C, and the limit a
skip could reach: the share of work removed (compute for the prompt, compute and bytes
read per token for generation; skipped blocks remove their q/k/v/o weights, their
attention over the context and their K/V; a linear layer removes the same but for one
`n_embd x n_embd` matrix, stored as the source's `attn_output`; a removed KV group removes
its share of a block: its KV head, its query heads and their rows and columns). The file's
blocks are all the same size, so which blocks are removed does not matter for speed; they
are spread evenly (groups: one a layer over evenly spread layers, more a layer when there
are more groups than layers). A linear layer's map is random: its values do not change the
speed. With a quantized cache (`--cache-types f16 q8_0`) the ratios are to 0 skips with the
same cache type, so each row shows what removing attention adds on top of that cache.

    python bench/inference.py                 # about 20 minutes on one busy core
    python bench/inference.py --contexts 512 --skips 0 4 --linear --rounds 2   # a quick look
    python bench/inference.py --contexts 8192 --skips 0 8 --linear 8 --groups 8 \
        --cache-types f16 q8_0 --prompt-once --rounds 12   # the frontier's speed rows, about an hour
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hopscotch_export.converters.convert import convert  # noqa: E402
from hopscotch_export.plan import Plan  # noqa: E402
from hopscotch_export.sources import open_source  # noqa: E402
from hopscotch_export.verify.data import load_text  # noqa: E402
from hopscotch_export.verify.llama_model import LlamaSession  # noqa: E402
from hopscotch_export.verify.speed import measure_speed  # noqa: E402

_ATTN = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output")
SKIP, LINEAR, GROUP = "skip", "linear", "group"
#: a file to measure: what replaces the removed attention, and how many blocks' worth
Variant = tuple[str, int]
#: KV-cache bytes of one cached number, by llama.cpp cache type (blocks of 32 numbers)
CACHE_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
#: the percentiles 0, 25, 50, 75, 100 of a row's rates over its rounds: how noisy it was
SPREAD = ("min", "q1", "median", "q3", "max")


@dataclass(frozen=True)
class Costs:
    """Per-token work of the base model, split into what a skipped block removes."""

    n_layers: int
    attn_weight_elems: int  # q, k, v, o of one layer
    layer_weight_elems: int  # every matrix of one layer
    attn_weight_bytes: int  # as stored (quantized), one layer, incl. attn_norm
    layer_weight_bytes: int
    map_elems: int  # what a linear layer keeps: one attn_output-sized matrix
    map_bytes: int
    head_bytes: int  # output projection read per generated token (tied: token_embd)
    head_elems: int
    n_head: int
    head_dim: int
    kv_dim: int  # n_kv_head * head_dim
    n_kv_head: int

    @classmethod
    def of(cls, path: Path) -> Costs:
        reader = gguf.GGUFReader(path)
        arch = reader.fields["general.architecture"].contents()
        meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith(arch)}
        tensors = {t.name: t for t in reader.tensors}
        layer0 = [t for name, t in tensors.items() if name.startswith("blk.0.")]
        attn0 = [t for t in layer0 if t.name.split(".")[2] in _ATTN]
        head = tensors.get("output.weight", tensors["token_embd.weight"])
        out = tensors["blk.0.attn_output.weight"]
        n_head, n_kv = meta[f"{arch}.attention.head_count"], meta[f"{arch}.attention.head_count_kv"]
        head_dim = meta[f"{arch}.embedding_length"] // n_head

        def matrices(ts: list) -> int:
            return sum(int(t.n_elements) for t in ts if len(t.shape) == 2)

        return cls(
            n_layers=meta[f"{arch}.block_count"],
            attn_weight_elems=matrices(attn0),
            layer_weight_elems=matrices(layer0),
            attn_weight_bytes=sum(int(t.n_bytes) for t in attn0),
            layer_weight_bytes=sum(int(t.n_bytes) for t in layer0),
            map_elems=int(out.n_elements),
            map_bytes=int(out.n_bytes),
            head_bytes=int(head.n_bytes),
            head_elems=int(head.n_elements),
            n_head=n_head,
            head_dim=head_dim,
            kv_dim=n_kv * head_dim,
            n_kv_head=n_kv,
        )

    def attention_flops(self, span: float) -> float:
        """QK^T and AV for one query over ``span`` keys, one layer."""
        return 4.0 * span * self.n_head * self.head_dim

    def removed_flops(self, kind: str, span: float) -> float:
        """Compute one token's attention block gives up, over ``span`` keys, as ``kind`` (a
        block's worth of KV groups gives up what one skipped block does)."""
        kept = self.map_elems if kind == LINEAR else 0
        return 2.0 * (self.attn_weight_elems - kept) + self.attention_flops(span)

    def prompt_share(self, variant: Variant, n_prompt: int) -> float:
        """Share of prompt compute removed (logits for the last token only, as timed)."""
        kind, k = variant
        span = (n_prompt + 1) / 2
        per_layer = 2.0 * self.layer_weight_elems + self.attention_flops(span)
        return k * self.removed_flops(kind, span) / (self.n_layers * per_layer)

    def gen_shares(self, variant: Variant, depth: float, cache: str = "f16") -> tuple[float, float]:
        """(compute share, bytes-read share) removed per generated token at ``depth``."""
        kind, k = variant
        per_layer = 2.0 * self.layer_weight_elems + self.attention_flops(depth)
        compute = k * self.removed_flops(kind, depth) / (self.n_layers * per_layer + 2.0 * self.head_elems)
        kv_read = 2 * CACHE_BYTES[cache] * depth * self.kv_dim  # K and V
        bytes_total = self.n_layers * (self.layer_weight_bytes + kv_read) + self.head_bytes
        kept = self.map_bytes if kind == LINEAR else 0
        bytes_removed = k * (self.attn_weight_bytes - kept + kv_read)
        return compute, bytes_removed / bytes_total


def spread(n_layers: int, k: int) -> tuple[int, ...]:
    """``k`` layers spread evenly over 1..n_layers-1 (layer 0 must keep its attention)."""
    if k == 0:
        return ()
    return tuple(int(round(x)) for x in np.linspace(1, n_layers - 1, k + 2)[1:-1])


def spread_groups(n_layers: int, n_kv: int, k: int) -> dict[int, tuple[int, ...]]:
    """``k`` blocks' worth of KV groups removed: the groups each layer keeps, one group
    removed a layer over evenly spread layers (more a layer once every layer but 0 has lost
    one; a layer never loses its last group)."""
    per_layer = -(-k * n_kv // (n_layers - 1))  # ceil
    if per_layer >= n_kv:
        raise SystemExit(f"--groups {k}: more groups than layers 1..{n_layers - 1} can give while keeping one each")
    layers = spread(n_layers, k * n_kv // per_layer) if k * n_kv // per_layer < n_layers - 1 else tuple(range(1, n_layers))
    cut = dict.fromkeys(layers, per_layer)
    for i in range(1, n_layers):  # a remainder: one more group from the first layers that can give it
        if sum(cut.values()) >= k * n_kv:
            break
        if cut.get(i, 0) < n_kv - 1:
            cut[i] = cut.get(i, 0) + 1
    return {i: tuple(range(n_kv - c)) for i, c in cut.items() if c}


def plan_for(source: Any, n_layers: int, variant: Variant) -> Plan:
    """The plan of one variant: ``k`` spread blocks skipped, linear with random maps, or
    ``k`` blocks' worth of KV groups removed."""
    kind, k = variant
    layers = spread(n_layers, k)
    ref = source.model_ref()
    if kind == SKIP:
        return Plan.identity(ref, skip=layers)
    if kind == GROUP:
        return Plan.identity(ref).with_fields(kv_groups=spread_groups(n_layers, ref.n_kv_heads, k))
    rng = np.random.default_rng(0)
    maps = {i: rng.normal(0, 0.02, (ref.hidden_size, ref.hidden_size)).astype(np.float32) for i in layers}
    return Plan.identity(ref).with_fields(linear=layers, maps=maps)


def label(variant: Variant, cache: str = "f16") -> str:
    kind, k = variant
    what = "none" if k == 0 else f"{k} blocks' KV groups" if kind == GROUP else f"{k} {kind}"
    return what if cache == "f16" else f"{what}, {cache} cache"


def main() -> None:
    from models import smollm2_gguf

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="base GGUF (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--skips", type=int, nargs="+", default=[0, 4, 8, 12])
    ap.add_argument("--linear", type=int, nargs="*", default=[4, 8], help="linear-layer counts (none: no such rows)")
    ap.add_argument("--groups", type=int, nargs="*", default=[], help="KV groups removed, in blocks' worth")
    ap.add_argument("--cache-types", nargs="+", default=["f16"], choices=list(CACHE_BYTES), help="KV cache types")
    ap.add_argument("--contexts", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--gen", type=int, default=32, help="generated tokens per run")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per context (default: 5 at 512, 2 at 4096)")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (1: OpenMP stalls on a shared CPU)")
    ap.add_argument("--prompt-once", action="store_true",
                    help="decode each prompt once; every round only generates, on that prompt")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args()
    if 0 not in args.skips:
        ap.error("--skips must include 0, the baseline")
    console = Console(stderr=True)
    base = args.model or smollm2_gguf()
    source = open_source(base)
    costs = Costs.of(base)
    tokens: list[int] = []
    rows = []
    variants: list[Variant] = [(SKIP, k) for k in args.skips] + [(LINEAR, k) for k in args.linear if k]
    variants += [(GROUP, k) for k in args.groups if k]
    with tempfile.TemporaryDirectory(prefix="hopscotch-bench-") as tmp:
        paths = {}
        for v in variants:  # 0 too: the baseline is a converted `deci` file like the others
            paths[v] = Path(tmp) / f"{v[0]}{v[1]}.gguf"
            convert(source, plan_for(source, costs.n_layers, v), paths[v], outtype="source", console=console)
        for ctx in args.contexts:
            rounds = args.rounds or max(2, min(5, 8192 // ctx))
            # one loaded model per file; a context of its own for each cache type
            runs = [(v, c) for v in variants for c in args.cache_types]
            sessions: list[LlamaSession] = []
            try:
                for v, c in runs:
                    first = next((s for s, (v2, _) in zip(sessions, runs) if v2 == v), None)
                    sessions.append(LlamaSession(paths[v], n_ctx=ctx, n_threads=args.threads, cache_type=c,
                                                 share=first))  # fmt: skip
                if not tokens:
                    tokens = sessions[0].tokenize(load_text(None).text)
                with _progress(console) as progress:
                    steps = (rounds + args.prompt_once) * len(sessions)
                    bar = progress.add_task(f"ctx {ctx}: {rounds} rounds", total=steps)
                    speeds = measure_speed(
                        sessions, tokens, prompt_tokens=ctx - args.gen, gen_tokens=args.gen, rounds=rounds,
                        advance=lambda: progress.advance(bar), prompt_once=args.prompt_once,
                    )
                kv = [s.kv_cache.bytes for s in sessions]
            finally:
                for s in reversed(sessions):  # contexts that share a model before its owner
                    s.close()
            for (v, cache), sp, kv_bytes in zip(runs, speeds, kv):
                i0 = runs.index(((SKIP, 0), cache))  # the original with the same cache type
                base_speed, base_kv = speeds[i0], kv[i0]
                gen_compute, gen_bytes = costs.gen_shares(v, ctx - args.gen / 2, cache)
                rows.append(
                    {
                        "kind": v[0],
                        "removed": v[1],
                        "cache_type": cache,
                        "layers": list(spread(costs.n_layers, v[1])) if v[0] != GROUP else
                        {str(i): list(g) for i, g in spread_groups(costs.n_layers, costs.n_kv_head, v[1]).items()},
                        "ctx": ctx,
                        "rounds": rounds,
                        "prompt_once": args.prompt_once,
                        "prompt_tokens": ctx - args.gen,
                        "gen_tokens": args.gen,
                        "prompt_tps": sp.prompt_tps,
                        "gen_tps": sp.gen_tps,
                        "prompt_ratio": sp.prompt_tps / base_speed.prompt_tps,
                        "gen_ratio": sp.gen_tps / base_speed.gen_tps,
                        "prompt_cpu_ratio": sp.prompt_cpu_tps / base_speed.prompt_cpu_tps,
                        "gen_cpu_ratio": sp.gen_cpu_tps / base_speed.gen_cpu_tps,
                        "runs": [r._asdict() for r in sp.runs],
                        "gen_cpu_tps_spread": dict(zip(SPREAD, np.percentile([r.gen_cpu_tps for r in sp.runs],
                                                                              [0, 25, 50, 75, 100]).tolist())),
                        "kv_bytes": kv_bytes,
                        "kv_ratio": kv_bytes / base_kv,
                        # to the original with the first cache type: what removal and a quantized cache add up to
                        "kv_ratio_to_original": kv_bytes / kv[runs.index(((SKIP, 0), args.cache_types[0]))],
                        "prompt_compute_removed": costs.prompt_share(v, ctx - args.gen),
                        "gen_compute_removed": gen_compute,
                        "gen_bytes_removed": gen_bytes,
                    }
                )
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


def markdown(rows: list[dict]) -> str:
    """The table for docs/inference-benchmark.md: ratios to 0 skips, wall clock and CPU time."""
    head = (
        "| ctx | attention removed | prompt tok/s | prompt x wall | prompt x CPU | limit x | gen tok/s "
        "| gen x wall | gen x CPU | gen CPU tok/s min-max | limit x compute / bytes | KV cache MiB | KV x "
        "| KV x original |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['ctx']} | {label((r['kind'], r['removed']), r.get('cache_type', 'f16'))} | {r['prompt_tps']:.1f} | {r['prompt_ratio']:.3f} "
            f"| {r['prompt_cpu_ratio']:.3f} | {1 / (1 - r['prompt_compute_removed']):.3f} "
            f"| {r['gen_tps']:.1f} | {r['gen_ratio']:.3f} | {r['gen_cpu_ratio']:.3f} | {_spread(r)} "
            f"| {1 / (1 - r['gen_compute_removed']):.3f} / {1 / (1 - r['gen_bytes_removed']):.3f} "
            f"| {r['kv_bytes'] / 2**20:.2f} | {r['kv_ratio']:.3f} | {r.get('kv_ratio_to_original', r['kv_ratio']):.3f} |"
        )
    return "\n".join(lines)


def _spread(row: dict) -> str:
    """Lowest and highest generation tokens per CPU-second over the row's rounds."""
    rates = [run["gen_cpu_tps"] for run in row["runs"]]
    return f"{min(rates):.1f}-{max(rates):.1f}"


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    )


if __name__ == "__main__":
    main()
