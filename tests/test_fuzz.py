"""Damaged files fed to what a user feeds them to: every case ends in a clean load or a
one-line :class:`HopscotchError`, never another exception, a hang or a crashed process.

GGUF files (a tiny ``llama`` source and the ``deci`` file our converter makes of it) are
truncated at many offsets and have bytes and integer fields (lengths, counts, types,
dimensions, offsets) changed in the header, metadata and tensor-info regions; plan files
(with and without their linear maps) get random text, JSON and maps-file mutations. The
cases run in a child process (``python tests/test_fuzz.py KIND ...``), so a crash in
native code fails the test with the case that caused it instead of killing pytest; each
case has a time limit. Seeded: ``HOPSCOTCH_FUZZ_SEED`` (default 0); bounded:
``HOPSCOTCH_FUZZ_SECONDS`` per kind (default 3; raise it for a longer run).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import save_gguf

SECONDS = float(os.environ.get("HOPSCOTCH_FUZZ_SECONDS", "3"))
SEED = int(os.environ.get("HOPSCOTCH_FUZZ_SEED", "0"))
#: a case running longer than this is a hang
CASE_LIMIT_S = 20.0


# --- the files to damage ---------------------------------------------------------------


def tiny_llama_gguf(path: Path) -> Path:
    """A 2-layer ``llama`` GGUF with a 16-token vocabulary (F32, F16 and Q8_0 tensors):
    small, so that each damaged copy parses in milliseconds."""
    import gguf

    rng = np.random.default_rng(0)
    hidden, ff, vocab = 32, 64, 16
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("fuzz")
    w.add_block_count(2)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ff)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(vocab)])
    w.add_token_types([1] * vocab)
    w.add_token_merges(["t 1", "t 2"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def matrix(rows: int, cols: int) -> np.ndarray:
        return rng.standard_normal((rows, cols)).astype(np.float32)

    w.add_tensor("token_embd.weight", gguf.quants.quantize(matrix(vocab, hidden), gguf.GGMLQuantizationType.Q8_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)  # fmt: skip
    for i in range(2):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(hidden, np.float32))
        for name, rows in (("attn_q", hidden), ("attn_k", 16), ("attn_v", 16), ("attn_output", hidden)):
            w.add_tensor(p + name + ".weight", matrix(rows, hidden).astype(np.float16))
        w.add_tensor(p + "ffn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(p + "ffn_gate.weight", matrix(ff, hidden))
        w.add_tensor(p + "ffn_up.weight", matrix(ff, hidden))
        w.add_tensor(p + "ffn_down.weight", matrix(hidden, ff))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("output.weight", matrix(vocab, hidden))
    save_gguf(w)
    return path


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The tiny llama source, and the deci file our converter writes from it (layer 1 skipped)."""
    from hopscotch_export.converters import convert
    from hopscotch_export.plan import Plan
    from hopscotch_export.sources import open_source

    folder = tmp_path_factory.mktemp("fuzz_gguf")
    llama = tiny_llama_gguf(folder / "llama.gguf")
    source = open_source(llama)
    deci = folder / "deci.gguf"
    convert(source, Plan.identity(source.model_ref(), skip=(1,)), deci, outtype="source")
    return [llama, deci]


@pytest.fixture(scope="module")
def plan_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A layer-granularity plan, and a channel plan with a linear layer (maps file beside it)."""
    from hopscotch_export.plan import ModelRef, Plan

    folder = tmp_path_factory.mktemp("fuzz_plan")
    ref = ModelRef("LlamaForCausalLM", 4, 8, "0123456789abcdef")
    layer = Plan.identity(ref, skip=(2,)).with_fields(attn=(1.0, 0.9, 1.0, 1.1), provenance={"options": {"skips": 1}})
    layer.save(folder / "layer.json")
    channel = [[1.0 + k / 100 for k in range(8)] for _ in range(4)]
    linear = Plan(ref, (3,), tuple(channel), tuple(channel), {}, False, (1,), {1: np.eye(8, dtype=np.float32)})
    linear.save(folder / "linear.json")
    return [folder / "layer.json", folder / "linear.json"]


# --- the tests: run the cases in a child process ------------------------------------------


def run_child(kind: str, files: list[Path], work: Path) -> dict[str, Any]:
    """Run ``kind`` cases in a child; a crash or a hang of the whole child names its last case."""
    cmd = [sys.executable, __file__, kind, str(SEED), str(SECONDS), str(work), *map(str, files)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS + CASE_LIMIT_S + 120)
    current = work / "current.txt"
    last = current.read_text() if current.exists() else "?"
    assert proc.returncode == 0, f"the child died ({proc.returncode}) on case {last}:\n{proc.stderr[-3000:]}"
    result = json.loads(proc.stdout.splitlines()[-1])
    print(f"\n{kind} fuzz: {result['cases']} cases, seed {SEED}, {SECONDS} s; outcomes:")
    for target, counts in result["outcomes"].items():
        print(f"  {target}: {counts}")
    return result


def test_fuzz_gguf_readers(gguf_files, tmp_path):
    result = run_child("gguf", gguf_files, tmp_path)
    assert result["bad"] == [], "\n".join(map(str, result["bad"]))
    assert result["cases"] >= 20  # it really ran
    assert any("refused" in k for k in result["outcomes"]["open_source"])  # and really damaged


def test_fuzz_plan_readers(plan_files, tmp_path):
    result = run_child("plan", plan_files, tmp_path)
    assert result["bad"] == [], "\n".join(map(str, result["bad"]))
    assert result["cases"] >= 20
    assert any("refused" in k for k in result["outcomes"]["load_plan"])


def test_undamaged_files_load(gguf_files, plan_files):
    """The bases are sound, so a refusal in the fuzz is the damage's doing."""
    from hopscotch_export.summary import summarize
    from hopscotch_export.plan import load_plan
    from hopscotch_export.sources import open_source

    assert open_source(gguf_files[0]).spec.n_layers == 2
    assert summarize(gguf_files[1])["skipped_attention"] == [1]
    assert [len(load_plan(p).linear) for p in plan_files] == [0, 1]


# --- the child: cases and their outcomes ------------------------------------------------


class Hang(Exception):
    """A case ran past :data:`CASE_LIMIT_S`."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def on_alarm(*_: Any) -> None:
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def outcome(fn: Callable[[], Any]) -> tuple[bool, str]:
    """(acceptable, label): a clean load, a one-line HopscotchError, or anything else."""
    from hopscotch_export.errors import HopscotchError

    try:
        with time_limit(CASE_LIMIT_S):
            fn()
    except HopscotchError as e:
        message = str(e)
        if not message or "\n" in message:
            return False, f"multi-line {type(e).__name__}: {message!r}"
        # the kind of refusal, without paths and numbers, to count them
        words = re.sub(r"\S*/\S*|\d+", "#", message).split()
        return True, "refused: " + " ".join(words[1:7])
    except Hang as e:
        return False, f"hang: {e}"
    except Exception as e:  # noqa: BLE001 - this is what the fuzz looks for
        return False, f"{type(e).__name__}: {e}"[:300]
    return True, "ok"


def gguf_layout(base: bytes, path: Path) -> tuple[dict[str, tuple[int, int]], list[tuple[int, int]]]:
    """Regions (header, metadata, tensor info) and the integer fields (offset, size) of a
    GGUF file, as gguf-py's reader finds them."""
    import gguf

    path.write_bytes(base)
    reader = gguf.GGUFReader(path)
    origin = reader.data.__array_interface__["data"][0]
    ti_start = min(t.field.offset for t in reader.tensors)
    ints = []
    for field in [*reader.fields.values(), *(t.field for t in reader.tensors)]:
        for part in field.parts:
            if part.dtype.kind in "ui" and part.dtype.itemsize in (4, 8) and part.size <= 4:
                at = part.__array_interface__["data"][0] - origin
                ints += [(at + k * part.dtype.itemsize, part.dtype.itemsize) for k in range(part.size)]
    regions = {"header": (0, 24), "metadata": (24, ti_start), "tensor_info": (ti_start, reader.data_offset)}
    return regions, ints


def damage_gguf(base: bytes, regions: dict[str, tuple[int, int]], ints: list[tuple[int, int]],
                rng: random.Random) -> tuple[str, bytes]:  # fmt: skip
    kind = rng.choice(["truncate", "bytes", "integer", "integer"])
    if kind == "truncate":
        end = regions["tensor_info"][1] + 64 if rng.random() < 0.8 else len(base)
        cut = rng.randrange(0, end)
        return f"truncated at {cut}", base[:cut]
    data = bytearray(base)
    if kind == "bytes":
        region = rng.choice(list(regions))
        lo, hi = regions[region]
        spots = sorted(rng.randrange(lo, hi) for _ in range(rng.randint(1, 4)))
        for at in spots:
            data[at] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        return f"{region} bytes {spots} changed", bytes(data)
    at, size = rng.choice(ints)
    old = int.from_bytes(data[at : at + size], "little")
    top = 2 ** (8 * size)
    new = rng.choice([0, 1, top - 1, top // 2, top // 2 - 1, (old + 1) % top, (old - 1) % top, old * 2 % top,
                      rng.randrange(top), rng.randrange(64)])  # fmt: skip
    data[at : at + size] = new.to_bytes(size, "little")
    return f"integer at {at} ({size} bytes) {old} -> {new}", bytes(data)


def gguf_targets(path: Path) -> dict[str, Callable[[], Any]]:
    from hopscotch_export.summary import summarize
    from hopscotch_export.sources import open_source
    from hopscotch_export.sources.gguf_file import scan_gguf

    def source() -> None:
        s = open_source(path)
        _ = s.spec
        s.model_ref()

    return {"open_source": source, "summarize": lambda: summarize(path), "scan_gguf": lambda: scan_gguf(path)}


#: replacement values for a plan's JSON: wrong types, extremes, non-finite numbers
_VALUES: list[Any] = [None, True, False, 0, -1, 1, 3, 7, 2**31, 2**63, 10**400, -(10**400), 1e308, -0.0,
                      float("nan"), float("inf"), "", "x", "hopscotch-plan/2", [], [0], [1, 1], [None], {},
                      {"layers": [1]}, {"layers": [1], "file": "../x", "sha256": "0"}]  # fmt: skip


def json_paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from json_paths(v, (*prefix, k))


def damage_plan(text: str, maps: bytes | None, rng: random.Random) -> tuple[str, str, bytes | None]:
    kind = rng.choice(["text", "json", "json", "json"] + (["maps", "maps"] if maps is not None else []))
    if kind == "text":
        if rng.random() < 0.1:  # past the parser's limits: a 5000-digit number, deep nesting
            at = rng.randrange(len(text))
            insert = rng.choice(["9" * 5000, "[" * 100_000, "{\"a\":" * 50_000])
            return f"text: {insert[:3]}... at {at}", text[:at] + insert + text[at:], maps
        if rng.random() < 0.4:
            cut = rng.randrange(len(text))
            return f"text truncated at {cut}", text[:cut], maps
        chars = list(text)
        spots = sorted(rng.randrange(len(chars)) for _ in range(rng.randint(1, 3)))
        for at in spots:
            chars[at] = rng.choice(list('{}[]",:0-e.9 ') + ["\x00", "é", "\\"])
        return f"text chars {spots} changed", "".join(chars), maps
    data = json.loads(text)
    if kind == "maps":
        assert maps is not None
        damaged = bytearray(maps)
        if rng.random() < 0.3:
            damaged = damaged[: rng.randrange(len(damaged))]
            what = f"maps truncated at {len(damaged)}"
        else:
            hi = len(damaged) if rng.random() < 0.3 else min(len(damaged), 8 + int.from_bytes(maps[:8], "little"))
            spots = sorted(rng.randrange(hi) for _ in range(rng.randint(1, 4)))
            for at in spots:
                damaged[at] = rng.choice([0, 0xFF, 0x7F, ord("{"), ord('"'), ord("1"), rng.randrange(256)])
            what = f"maps bytes {spots} changed"
        if rng.random() < 0.7:  # past the hash check, into the safetensors parser
            data["linear"]["sha256"] = hashlib.sha256(bytes(damaged)).hexdigest()
            what += ", hash updated"
        return what, json.dumps(data), bytes(damaged)
    paths = [p for p in json_paths(data) if p]
    where = rng.choice(paths)
    parent = data
    for k in where[:-1]:
        parent = parent[k]
    key = where[-1]
    op = rng.choice(["delete", "set", "set", "set", "append"])
    if op == "delete":
        del parent[key]
    elif op == "append" and isinstance(parent[key], list):
        parent[key].append(rng.choice(_VALUES))
    else:
        parent[key] = rng.choice(_VALUES)
    return f"{op} {'.'.join(map(str, where))}", json.dumps(data), maps


def plan_targets(path: Path) -> dict[str, Callable[[], Any]]:
    from hopscotch_export.summary import summarize
    from hopscotch_export.plan import load_plan

    return {"load_plan": lambda: load_plan(path), "summarize": lambda: summarize(path)}


def child(kind: str, seed: int, seconds: float, work: Path, bases: list[Path]) -> dict[str, Any]:
    """Damaged copies of ``bases``, case after case until ``seconds`` have passed."""
    import resource

    gib = 2**30  # a damaged length must not make a reader allocate the machine away
    resource.setrlimit(resource.RLIMIT_AS, (8 * gib, resource.getrlimit(resource.RLIMIT_AS)[1]))
    current = work / "current.txt"
    outcomes: dict[str, Counter[str]] = {}
    bad: list[tuple[str, str, str]] = []
    if kind == "gguf":
        raw = [b.read_bytes() for b in bases]
        layouts = [gguf_layout(r, work / f"layout{i}.gguf") for i, r in enumerate(raw)]
    else:
        raw = [b.read_text() for b in bases]
        companions = [json.loads(t)["linear"].get("file") for t in raw]
        maps = [(b.parent / c).read_bytes() if c else None for b, c in zip(bases, companions)]
    deadline = time.monotonic() + seconds
    case = 0
    while time.monotonic() < deadline:
        rng = random.Random(f"{seed}:{kind}:{case}")
        i = rng.randrange(len(bases))
        if kind == "gguf":
            what, data = damage_gguf(raw[i], *layouts[i], rng)
            path = work / "case.gguf"
            path.write_bytes(data)
            targets = gguf_targets(path)
        else:
            what, text, mdata = damage_plan(raw[i], maps[i], rng)
            path = work / "case.json"
            path.write_text(text)
            if companions[i]:
                (work / companions[i]).write_bytes(mdata or b"")
            targets = plan_targets(path)
        label = f"#{case} {bases[i].name}: {what}"
        current.write_text(label)
        for name, fn in targets.items():
            ok, result = outcome(fn)
            outcomes.setdefault(name, Counter())[result if ok else "BAD"] += 1
            if not ok:
                bad.append((label, name, result))
        case += 1
    return {"cases": case, "outcomes": {k: dict(v.most_common(12)) for k, v in outcomes.items()}, "bad": bad[:30]}


if __name__ == "__main__":
    _kind, _seed, _seconds, _work, *_bases = sys.argv[1:]
    print(json.dumps(child(_kind, int(_seed), float(_seconds), Path(_work), [Path(b) for b in _bases])))
