"""The search under torchrun (2 CPU processes, gloo): the plan one process finds, files
written once, and a clear error with a resumable plan when a process dies."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

#: a budget whose steps take about a second each on 2 cores, so that a process can be
#: killed between the first step and the end; the model writes its own calibration chats
OPTIONS = ["--skips", "3", "--samples", "16", "--heldout", "2", "--seq-len", "32", "--final-epochs", "1",
           "--max-new-tokens", "8", "--device", "cpu"]  # fmt: skip

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers in /proc")


def search(model: Path, out: Path, *extra: str, processes: int = 1) -> subprocess.Popen[bytes]:
    """``hopscotch-export search`` in one process, or under torchrun; output in ``out``.log."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"  # what torchrun sets: the same arithmetic in every run
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc-per-node={processes}", f"--master-port={free_port()}"]
    args = [*launcher, "-m", "hopscotch_export", "search", str(model), "-o", str(out), *OPTIONS, *extra]
    with out.with_suffix(".log").open("wb") as log:
        return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)


def finished(run: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
    assert run.wait(timeout=300) == 0, out.with_suffix(".log").read_text()
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker(launcher: int, rank: int) -> int:
    """The pid of torchrun's worker process of ``rank``."""
    for task in Path(f"/proc/{launcher}/task").iterdir():
        for pid in (task / "children").read_text().split():
            if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return int(pid)
    raise AssertionError(f"no worker of rank {rank} under pid {launcher}")


def assert_same_plan(plan: dict[str, Any], reference: dict[str, Any]) -> None:
    assert plan["complete"]
    assert plan["provenance"]["search"]["order"] == reference["provenance"]["search"]["order"]
    assert plan["skip"] == reference["skip"]
    for branch in ("attn", "mlp"):
        assert plan["scales"][branch] == pytest.approx(reference["scales"][branch], abs=1e-5)
    assert plan["provenance"]["data"]["hash"] == reference["provenance"]["data"]["hash"]


@pytest.fixture(scope="module")
def reference(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The plan of the same search in one process."""
    out = tmp_path_factory.mktemp("one_process") / "plan.json"
    return finished(search(tiny_llama, out), out)


def test_two_processes_find_the_single_process_plan(
    tiny_llama: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "plan.json"
    plan = finished(search(tiny_llama, out, processes=2), out)
    assert_same_plan(plan, reference)
    assert plan["provenance"]["processes"] == 2 and reference["provenance"]["processes"] == 1
    for ours, theirs in zip(plan["provenance"]["search"]["steps"], reference["provenance"]["search"]["steps"]):
        for mine, one in zip(ours["candidates"], theirs["candidates"], strict=True):  # gathered from both
            assert mine == pytest.approx(one)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.calibration.jsonl", "plan.json", "plan.log"]
    log = out.with_suffix(".log").read_text()
    assert log.count("plan written to") == 1  # rank 0 alone reports; its step bars start once
    assert len(re.findall(r"^step 1/3 +0/\d+ ", log, re.M)) == 1


def test_a_killed_process_ends_the_run_with_a_plan_that_resumes(
    tiny_llama: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "plan.json"
    run = search(tiny_llama, out, processes=2)
    deadline = time.monotonic() + 120
    while not out.exists():  # the partial plan after step 1
        assert run.poll() is None and time.monotonic() < deadline, out.with_suffix(".log").read_text()
        time.sleep(0.01)
    os.kill(worker(run.pid, rank=1), signal.SIGKILL)
    assert run.wait(timeout=120) != 0
    log = out.with_suffix(".log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, log
    assert "a process of the distributed search failed" in errors[0] and f"--resume {out}" in errors[0]
    partial = json.loads(out.read_text())
    assert not partial["complete"] and 1 <= len(partial["provenance"]["search"]["order"]) < 3
    assert_same_plan(finished(search(tiny_llama, out, "--resume", str(out)), out), reference)  # in one process


def one_and_two_processes(
    model: Path, tmp_path: Path, *extra: str
) -> tuple[Path, Path, dict[str, Any], dict[str, Any]]:
    """The same search in one process and in two, which must find the same plan: their plan
    files, the two-process plan and the one-process reference."""
    one, two = tmp_path / "one" / "plan.json", tmp_path / "two" / "plan.json"
    for out in (one, two):
        out.parent.mkdir()
    reference = finished(search(model, one, *extra), one)
    plan = finished(search(model, two, *extra, processes=2), two)
    assert_same_plan(plan, reference)
    return one, two, plan, reference


def test_two_processes_find_the_single_process_linear_plan(tiny_llama: Path, tmp_path: Path) -> None:
    """Each process fits, scores and trains its share of the linear maps; the winner's maps
    reach every process with its scales."""
    from hopscotch_export.plan import load_plan

    one, two, plan, reference = one_and_two_processes(
        tiny_llama, tmp_path, "--skips", "2", "--replace", "linear", "--linear-epochs", "1"
    )
    assert plan["linear"]["layers"] == reference["linear"]["layers"] and len(plan["linear"]["layers"]) == 2
    maps, reference_maps = load_plan(two).maps, load_plan(one).maps
    for i in reference_maps:
        assert maps[i] == pytest.approx(reference_maps[i], abs=1e-5)


def test_two_processes_find_the_single_process_auto_unit_plan(tiny_llama: Path, tmp_path: Path) -> None:
    """Blocks and KV groups shared out as trials: every process ranks them alike and ends
    with the same cuts."""
    _, _, plan, reference = one_and_two_processes(tiny_llama, tmp_path, "--skips", "1", "--unit", "auto")
    assert plan["kv_groups"] == reference["kv_groups"]
    kinds = [(s["kind"], s.get("group")) for s in plan["provenance"]["search"]["steps"]]
    assert kinds == [(s["kind"], s.get("group")) for s in reference["provenance"]["search"]["steps"]]
    candidates = plan["provenance"]["search"]["steps"][0]["candidates"]
    assert {c["kind"] for c in candidates if c["trained"] is not None} == {"skip", "group"}
