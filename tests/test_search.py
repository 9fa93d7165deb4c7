"""The search stage on tiny random models: selection, resume, CLI, plan consistency, errors."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import typer
from rich.console import Console
from typer.testing import CliRunner

from hopscotch_export.errors import HopscotchError
from hopscotch_export.plan import load_plan
from hopscotch_export.search import SearchInterrupted, SearchOptions, run_search
from hopscotch_export.search.calibration import build_calibration
from hopscotch_export.search.command import search_command
from hopscotch_export.text_sources import read_records
from hopscotch_export.search.generate import builtin_prompts
from hopscotch_export.search.greedy import Selector
from hopscotch_export.search.objective import Teacher, heldout_metrics
from hopscotch_export.decoder_stack import Stack
from hopscotch_export.search.train import NonFiniteLoss
from hopscotch_export.sources import open_source
from hopscotch_export.torch_plan import apply_plan
from models import make_planted_model

LAYERS = 5
PLANTED = 3  # its attention output projection is ~0: skipping it changes nothing

TINY = dict(samples=6, heldout=2, seq_len=32, score_samples=2, batch_size=2, shortlist=2, final_epochs=2, device="cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5-layer random Llama with peaked outputs and one redundant attention block."""
    return make_planted_model(tmp_path_factory.mktemp("search") / "tiny", LAYERS, PLANTED)


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


@contextlib.contextmanager
def interrupted_at_second_step(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Ctrl-C in the second greedy step of the search run inside (the first one finishes)."""
    real_step, calls = Selector.step, []

    def step_then_interrupt(self: Selector, state):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_step(self, state)

    monkeypatch.setattr(Selector, "step", step_then_interrupt)
    try:
        yield
    finally:
        monkeypatch.setattr(Selector, "step", real_step)


def test_planted_redundant_block_is_skipped_first(tiny: Path, text_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    options = SearchOptions(skips=2, data=str(text_file), **TINY)  # type: ignore[arg-type]
    plan = run_search(open_source(tiny), options, out, console=quiet())
    search = plan.provenance["search"]
    assert search["order"][0] == PLANTED
    first = {c["layer"]: c for c in search["steps"][0]["candidates"]}
    assert min(first, key=lambda i: first[i]["score"]) == PLANTED  # the training-free score finds it
    assert sum(c["trained"] is not None for c in first.values()) == 2  # only the shortlist trained
    saved = load_plan(out)
    assert saved.complete and saved.skip == plan.skip and PLANTED in saved.skip
    assert set(plan.provenance["heldout"]) == {"original", "no_scales", "final"}
    assert plan.provenance["data"]["kind"] == "dataset" and len(plan.provenance["data"]["hash"]) == 16


def test_resume_after_interrupt_gives_the_uninterrupted_plan(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no --data: the model writes the calibration chats, and the resumed run rereads them
    options = SearchOptions(skips=2, max_new_tokens=24, **TINY)  # type: ignore[arg-type]
    whole = run_search(open_source(tiny), options, tmp_path / "whole.json", console=quiet())

    out = tmp_path / "cut.json"
    with interrupted_at_second_step(monkeypatch), pytest.raises(SearchInterrupted, match=f"after 1 step.*--resume {out}"):
        run_search(open_source(tiny), options, out, console=quiet())
    partial = load_plan(out)
    assert not partial.complete and len(partial.provenance["search"]["steps"]) == 1
    assert (tmp_path / "cut.calibration.jsonl").is_file()

    with pytest.raises(HopscotchError, match=r"options differ .*lr 0.01 -> 0.02"):
        changed = SearchOptions(skips=2, max_new_tokens=24, **{**TINY, "lr": 0.02})  # type: ignore[arg-type]
        run_search(open_source(tiny), changed, out, resume=out)
    resumed = run_search(open_source(tiny), options, out, resume=out, console=quiet())
    assert resumed.complete
    assert resumed.provenance["search"]["order"] == whole.provenance["search"]["order"]
    assert resumed.attn == pytest.approx(whole.attn, abs=1e-6)
    assert resumed.mlp == pytest.approx(whole.mlp, abs=1e-6)
    assert resumed.provenance["data"]["hash"] == whole.provenance["data"]["hash"]
    with pytest.raises(HopscotchError, match="finished plan"):
        run_search(open_source(tiny), options, out, resume=out)


def test_cli_channel_ce_exhaustive_plan_matches_apply_plan(tiny: Path, tmp_path: Path) -> None:
    """The held-out loss the search reports is what ``apply_plan`` gives for the saved file."""
    chats = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": " ".join(reversed(p.split()))}]
        for p in builtin_prompts()
    ]
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats))
    out = tmp_path / "plan.json"
    app = typer.Typer()
    app.command()(search_command)
    args = [str(tiny), "--skips", "1", "-o", str(out), "--data", str(data), "--granularity", "channel",
            "--objective", "ce", "--shortlist", "all", "--protect", f"1,{PLANTED}", "--samples", "4",
            "--heldout", "2", "--seq-len", "32", "--score-samples", "2", "--batch-size", "2",
            "--final-epochs", "1", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    plan = load_plan(out)
    assert plan.granularity == "channel" and plan.skip[0] not in (0, 1, PLANTED)
    step = plan.provenance["search"]["steps"][0]["candidates"]
    assert [c["layer"] for c in step] == [2, 4] and all(c["trained"] is not None for c in step)

    source = open_source(tiny)
    model = source.load_torch(torch.float32)
    tok = source.load_tokenizer()
    calib = build_calibration(read_records(str(data), None, "train", None), tok, 4, 2, 32)
    stack = Stack(model)
    with torch.no_grad():
        h, at = stack.embed(calib.held_ids)
        teacher = Teacher(None, None, stack.final_hidden(stack.run(h, at, 0)))
    with apply_plan(model, plan):
        metrics = heldout_metrics(stack, calib, teacher, batch_size=2)
    assert metrics["ce"] == pytest.approx(plan.provenance["heldout"]["final"]["ce"], rel=1e-5)
    assert metrics["kl"] == pytest.approx(plan.provenance["heldout"]["final"]["kl"], rel=1e-4, abs=1e-7)


def test_bad_inputs_fail_before_any_work(tiny: Path, text_file: Path, tmp_path: Path) -> None:
    src = open_source(tiny)
    out = tmp_path / "plan.json"
    with pytest.raises(HopscotchError, match=r"--skips 4 needs more candidates than the 4 .*lower --skips"):
        run_search(src, SearchOptions(skips=4, data=str(text_file)), out)
    with pytest.raises(HopscotchError, match=r"--skips 3 needs more candidates than the 3"):
        run_search(src, SearchOptions(skips=3, protect=(2,), data=str(text_file)), out)
    with pytest.raises(HopscotchError, match=r"--protect \[7\] out of range: the model has layers 0..4"):
        run_search(src, SearchOptions(skips=1, protect=(7,)), out)
    with pytest.raises(HopscotchError, match="--data file .*nope.jsonl not found"):
        run_search(src, SearchOptions(skips=1, data=str(tmp_path / "nope.jsonl"), **TINY), out, console=quiet())  # type: ignore[arg-type]
    with pytest.raises(HopscotchError, match="--shortlist must be at least 1"):
        SearchOptions(skips=1, shortlist=0)
    with pytest.raises(HopscotchError, match="--objective must be one of kl, ce"):
        SearchOptions(skips=1, objective="mse")
    assert not out.exists()
    out.write_text("{}")
    with pytest.raises(HopscotchError, match="already exists; pass --force"):
        run_search(src, SearchOptions(skips=1, data=str(text_file)), out)


def test_non_finite_loss_stops_without_writing_a_plan(
    tiny: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hopscotch_export.search import train

    def diverged(*args, **kwargs):  # type: ignore[no-untyped-def]
        total, count = real(*args, **kwargs)
        return total * float("nan"), count

    real = train.loss_sum
    monkeypatch.setattr(train, "loss_sum", diverged)  # what a bf16 overflow or a huge --lr does
    out = tmp_path / "plan.json"
    options = SearchOptions(skips=1, data=str(text_file), **TINY)  # type: ignore[arg-type]
    with pytest.raises(NonFiniteLoss, match=r"loss became nan at step 1 training the scales .*no plan was written"):
        run_search(open_source(tiny), options, out, console=quiet())
    assert not out.exists()


def test_budget_defaults_follow_the_device() -> None:
    """Unset budget options get the GPU defaults on a GPU and the smaller CPU budget on CPU;
    values the user gives always win."""
    gpu = SearchOptions.sized_for_device(skips=2, device="cuda", samples=None, seq_len=None)
    assert (gpu.samples, gpu.seq_len, gpu.final_epochs) == (64, 256, 10)
    cpu = SearchOptions.sized_for_device(skips=2, device="cpu", samples=None, seq_len=None, final_epochs=None)
    assert (cpu.samples, cpu.heldout, cpu.seq_len, cpu.final_epochs, cpu.max_new_tokens) == (16, 8, 128, 4, 128)
    mine = SearchOptions.sized_for_device(skips=2, device="cpu", samples=4, seq_len=None, max_new_tokens=32)
    assert (mine.samples, mine.seq_len, mine.max_new_tokens) == (4, 128, 32)


def test_screen_then_rescore_on_all_training_data(
    tiny: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The screen's best candidates are rescored on every training sequence, and the
    shortlist is taken from those full-data scores."""
    from hopscotch_export.search import greedy
    from hopscotch_export.search.display import Silent
    from hopscotch_export.search.workspace import prepare
    from hopscotch_export.search.train import mean_loss
    from hopscotch_export.torch_plan import BranchScales

    monkeypatch.setattr(greedy, "RESCORE", 1)  # 2 finalists of the 4 candidates
    options = SearchOptions(skips=1, data=str(text_file), **TINY)  # type: ignore[arg-type]
    ws = prepare(open_source(tiny), options, quiet(), data_file=None, save_data=False, force=False)
    candidates = options.candidates(LAYERS)
    state = greedy.SearchState(BranchScales(LAYERS))
    step = Selector(ws.stack, ws.calib, ws.teacher, options, candidates, Silent()).step(state)
    assert sorted(step.scores) == candidates
    assert set(step.rescored) == set(sorted(step.scores, key=step.scores.__getitem__)[:2])
    for c, value in step.rescored.items():
        full = mean_loss(ws.stack, BranchScales(LAYERS), [c], ws.calib, ws.teacher, "kl",
                         n_rows=options.samples, batch_size=2, where="test")  # fmt: skip
        assert value == pytest.approx(full, rel=1e-5)
    assert set(step.trained) == set(step.rescored) and step.chosen in step.trained
    assert greedy.Step.from_json(step.to_json()).rescored == pytest.approx(step.rescored)
