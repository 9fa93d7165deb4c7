"""Single KV groups as the search's unit of removal (``--unit group|auto``) and the KV budget
(``--kv-saving``), on test_search.py's tiny model: 5 layers of 2 KV groups (4 query heads),
layer 3's attention output ~0."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hopscotch_export.errors import HopscotchError
from hopscotch_export.plan import Plan, load_plan
from hopscotch_export.search import SearchInterrupted, SearchOptions, run_search
from hopscotch_export.search.greedy import Step
from hopscotch_export.search.units import replay
from hopscotch_export.sources import open_source
from models import make_planted_model
from test_search import TINY, interrupted_at_second_step, quiet

LAYERS, PLANTED, N_KV = 5, 3, 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_planted_model(tmp_path_factory.mktemp("groups") / "tiny", LAYERS, PLANTED)


def search(model: Path, out: Path, **options: Any) -> Plan:
    return run_search(open_source(model), SearchOptions(**{**TINY, **options}), out, console=quiet())


@pytest.fixture(scope="module")
def grouped(tiny: Path, text_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Plan:
    """A group search for 30% of the KV cache: 3 of the 10 groups."""
    out = tmp_path_factory.mktemp("grouped") / "plan.json"
    search(tiny, out, skips=0, kv_saving=0.3, unit="group", data=str(text_file))
    return load_plan(out)


def test_group_search_writes_the_cuts_its_steps_made(grouped: Plan) -> None:
    steps = [Step.from_json(s) for s in grouped.provenance["search"]["steps"]]
    assert [s.kind for s in steps] == ["group"] * 3 and grouped.complete
    removed = replay(steps, N_KV)
    assert list(grouped.skip) == sorted(removed.skip) and dict(grouped.kv_groups) == removed.kv_groups
    assert grouped.kv_saving() == pytest.approx(0.3) and grouped.model.n_kv_heads == N_KV
    # the planted layer's two groups cost nothing: both go, and the layer is skipped, not cut
    assert PLANTED in grouped.skip and PLANTED not in grouped.kv_groups
    assert len(grouped.kv_groups) == 1 and all(len(kept) == 1 for kept in grouped.kv_groups.values())
    first = grouped.provenance["search"]["steps"][0]["candidates"]
    assert {(c["layer"], c["group"]) for c in first} == {(i, g) for i in range(1, LAYERS) for g in range(N_KV)}
    assert sum(c["trained"] is not None for c in first) == 2  # one shortlist for the group kind
    search = grouped.provenance["search"]
    assert search["unit"] == "group" and search["kv_target"] == {"groups": 3, "of": 10, "fraction": 0.3}
    # a group frees one KV head of 16 numbers (K and V, f16) and the projections of 2 query heads
    assert [b["kv_bytes_per_token"] for b in search["blocks"]] == [64] * 3
    assert [b["flops_per_token"] for b in search["blocks"]] == [2 * 64 * 16 * (2 * 2 + 2)] * 3


def test_resume_of_a_group_search_gives_the_uninterrupted_plan(
    grouped: Plan, tiny: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = dict(skips=0, kv_saving=0.3, unit="group", data=str(text_file))
    out = tmp_path / "cut.json"
    with interrupted_at_second_step(monkeypatch), pytest.raises(SearchInterrupted, match="after 1 step"):
        search(tiny, out, **options)
    partial = load_plan(out)
    assert not partial.complete and partial.kv_groups  # one group gone: a partly cut layer
    with pytest.raises(HopscotchError, match="options differ .*unit 'group' -> 'auto'"):
        run_search(open_source(tiny), SearchOptions(**{**TINY, **options, "unit": "auto"}), out, resume=out)
    resumed = run_search(open_source(tiny), SearchOptions(**{**TINY, **options}), out, resume=out, console=quiet())

    def chosen(plan: Plan) -> list[tuple[int, str, int | None]]:
        return [(s["chosen"], s["kind"], s.get("group")) for s in plan.provenance["search"]["steps"]]

    assert chosen(resumed) == chosen(grouped)
    assert resumed.skip == grouped.skip and resumed.kv_groups == grouped.kv_groups
    assert resumed.attn == pytest.approx(grouped.attn, abs=1e-6)
    assert resumed.mlp == pytest.approx(grouped.mlp, abs=1e-6)


def test_auto_keeps_the_best_state_of_every_kv_saving_and_never_overshoots(
    tiny: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hopscotch_export.search.greedy import Selector

    tried: list[tuple[int, float]] = []  # the saving and loss of every state a step reached
    expanded: list[tuple[int, float]] = []  # the saving of each state a step started from, the step's time
    real = Selector.children

    def spy(self: Selector, state: Any) -> Any:
        made = real(self, state)
        expanded.append((state.removed.saved, self.seconds - sum(t for _, t in expanded)))
        tried.extend((c.level, c.loss) for c in made)
        return made

    monkeypatch.setattr(Selector, "children", spy)
    plan = search(tiny, tmp_path / "auto.json", skips=0, kv_saving=0.3, unit="auto", data=str(text_file))
    steps = plan.provenance["search"]["steps"]
    assert {c["kind"] for c in steps[0]["candidates"] if c["trained"] is not None} == {"skip", "group"}
    assert steps[0]["before"] == pytest.approx(0.0, abs=1e-5)  # the original model's KL to itself
    assert {saved for saved, _ in tried} >= {1, 2, 3}  # blocks land 2 groups on, groups 1
    assert all(saved <= 3 for saved, _ in tried)  # none frees more than the budget
    done: list[Step] = []
    for s in steps:
        if done:
            assert s["before"] == done[-1].loss  # each step starts from the state before it on the path
        done.append(Step.from_json(s))
        saved = replay(done, N_KV).saved
        # every state on the plan's path is the lowest loss any step reached at its saving
        assert s["loss"] == min(loss for at, loss in tried if at == saved)
    assert replay(done, N_KV).saved == 3 and plan.kv_saving() == pytest.approx(0.3)
    assert [at for at, _ in expanded] == [0, 1, 2]  # each saving's best state expanded once, in order
    # the search's time counts every step it ran, not only those on the plan's path
    assert plan.provenance["seconds"]["steps"] == pytest.approx(sum(t for _, t in expanded), abs=1e-3)


def test_an_interrupted_auto_search_saves_the_last_final_saving_and_resumes_from_it(
    tiny: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hopscotch_export.search.greedy import Selector

    real, calls = Selector.expand, []

    def third_interrupted(self: Selector, state: Any) -> Any:
        calls.append(state.removed.saved)
        if len(calls) == 3:  # expanding saving 2: savings 1 and 2 are final and were saved
            raise KeyboardInterrupt
        return real(self, state)

    monkeypatch.setattr(Selector, "expand", third_interrupted)
    options = dict(skips=0, kv_saving=0.3, unit="auto", data=str(text_file))
    out = tmp_path / "auto.json"
    with pytest.raises(SearchInterrupted, match=r"the plan after \d step\(s\) is in .*auto.json"):
        search(tiny, out, **options)
    partial = load_plan(out)
    steps = [Step.from_json(s) for s in partial.provenance["search"]["steps"]]
    assert calls == [0, 1, 2] and not partial.complete and replay(steps, N_KV).saved == 2
    monkeypatch.setattr(Selector, "expand", real)
    resumed = run_search(open_source(tiny), SearchOptions(**{**TINY, **options}), out, resume=out, console=quiet())
    done = [Step.from_json(s) for s in resumed.provenance["search"]["steps"]]
    assert resumed.complete and replay(done, N_KV).saved == 3
    assert [(d.chosen, d.kind, d.group) for d in done[: len(steps)]] == [(d.chosen, d.kind, d.group) for d in steps]


def test_auto_curve_points_are_the_best_states_of_their_savings(
    tiny: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--skips auto --unit auto``: every block's worth of KV has a point, the best state
    the search kept for that saving (not a prefix of the next point's steps)."""
    from hopscotch_export.search.greedy import Selector

    kept: dict[int, list[tuple[int, str, int | None]]] = {}
    real = Selector.run

    def spy(self: Selector, state: Any, on_step: Any) -> None:
        def record(s: Any) -> None:
            kept[s.removed.saved] = [(d.chosen, d.kind, d.group) for d in s.steps]
            on_step(s)

        real(self, state, record)

    monkeypatch.setattr(Selector, "run", spy)
    out = tmp_path / "plan.json"
    plan = search(tiny, out, skips=2, curve=True, max_kl=1e9, unit="auto", data=str(text_file))
    points = json.loads(out.with_name("plan.curve.json").read_text())["points"]
    assert sorted(kept) == [1, 2, 3, 4]  # every saving's best, handed on once
    assert [p["kv_saved"] for p in points] == pytest.approx([0.2, 0.4])
    for p, saved in zip(points, (2, 4)):
        assert list(zip(p["layers"], p["kinds"], p["groups"])) == kept[saved]
    assert {int(k): tuple(v) for k, v in points[1]["kv_groups"].items()} == dict(plan.kv_groups)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--skips", "2", "--kv-saving", "0.2"], "--kv-saving and --skips are alternatives; give one of them"),
        (["--skips", "auto", "--kv-saving", "0.2", "--max-kl", "1"], "--kv-saving and --skips are alternatives"),
        ([], "say how much to remove: --skips N (or auto), or --kv-saving F"),
        (["--kv-saving", "1.5"], "--kv-saving is a fraction of the KV cache between 0 and 1"),
        (["--skips", "1", "--unit", "head"], "--unit must be one of block, group, auto, got 'head'"),
        (["--skips", "1", "--unit", "group", "--replace", "linear"], "use --unit auto (blocks and groups)"),
    ],
)
@pytest.mark.parametrize("command", [["search"], []], ids=["search", "one-command"])
def test_unit_and_kv_saving_errors_are_one_line(
    monkeypatch, capsys, tiny: Path, tmp_path: Path, command: list[str], args: list[str], message: str
) -> None:  # fmt: skip
    from test_cli import assert_one_line_error, run_cli

    out = tmp_path / ("p.json" if command else "m.gguf")
    code, _, err = run_cli(monkeypatch, capsys, *command, str(tiny), "-o", str(out), *args)
    assert_one_line_error(code, err, message)
    assert list(tmp_path.iterdir()) == []


def test_kv_saving_budgets() -> None:
    """--kv-saving F: the fewest groups reaching F (blocks: the fewest blocks); --skips N with
    KV-group units: N blocks' worth."""
    o = SearchOptions(skips=0, kv_saving=0.133, unit="group").for_model(30)
    assert o.kv_target(30, 3) == 12 and o.skips == 4  # SmolLM2: 12 of 90 groups, 13.3%
    assert SearchOptions(skips=0, kv_saving=0.11).for_model(30).kv_target(30, 3) == 4 * 3
    assert SearchOptions(skips=2, unit="auto").kv_target(30, 3) == 6
    from hopscotch_export.export import export_command

    assert {"unit", "kv_saving"} <= set(export_command.__signature__.parameters)  # type: ignore[attr-defined]


def test_one_command_reuses_a_finished_plan_of_the_same_kv_budget(grouped: Plan, tiny: Path) -> None:
    from hopscotch_export.export import _reusable_plan

    path, source = Path(grouped.origin or ""), open_source(tiny)
    same = SearchOptions(skips=0, kv_saving=0.3, unit="group")
    assert _reusable_plan(path, source, same, force=False) == grouped
    assert _reusable_plan(path, source, SearchOptions(skips=0, kv_saving=0.25, unit="group"), force=False) == grouped
    for other, wanted in ((SearchOptions(skips=0, kv_saving=0.4, unit="group"), "not --kv-saving 0.4 with --unit group"),
                          (SearchOptions(skips=0, kv_saving=0.3), "not --kv-saving 0.3; pass --force")):  # fmt: skip
        with pytest.raises(HopscotchError, match=f"removes 30.0% of the KV cache, {wanted}"):
            _reusable_plan(path, source, other, force=False)


def test_one_command_summary_counts_the_cut_groups(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hopscotch_export.export import Outputs, _summary
    from hopscotch_export.plan import ModelRef

    monkeypatch.setenv("COLUMNS", "200")  # one table row a line
    ref = ModelRef("LlamaForCausalLM", LAYERS, 8, "x", n_kv_heads=N_KV)
    plan = Plan.identity(ref, skip=(PLANTED,)).with_fields(kv_groups={2: (1,)})
    _summary(Outputs(tmp_path / "m.gguf"), plan, 1, None, open_source(tiny), "f16")
    out = " ".join(capsys.readouterr().out.split())
    # 10 groups, 3 gone: the skipped layer's two and one of layer 2's
    assert "│ attention blocks │ 5 │ 4 (skipped 3) │" in out
    assert "│ KV groups (KV head + its query heads) │ 10 │ 7 (1 cut from layers 2; KV cache -30.0%) │" in out


def test_group_curve_with_a_binding_max_kl_exports_the_largest_saving_within_it(
    tiny: Path, text_file: Path, tmp_path: Path
) -> None:
    """``--unit group --skips auto --max-kl``: points at every block's worth of groups, and
    the plan written is the largest saving whose trained KL is within the limit."""
    traced = tmp_path / "traced.json"
    search(tiny, traced, skips=2, curve=True, max_kl=1e9, unit="group", data=str(text_file))
    points = json.loads(traced.with_name("traced.curve.json").read_text())["points"]
    assert [p["kv_saved"] for p in points] == pytest.approx([0.2, 0.4])
    kls = [p["kl"] for p in points]
    limit = min(kls)
    expected = max(k for k, kl in enumerate(kls, 1) if kl <= limit)
    assert expected < len(points)  # the limit binds: the larger saving costs more
    out = tmp_path / "plan.json"
    search(tiny, out, skips=2, curve=True, max_kl=limit, unit="group", data=str(text_file))
    saved = load_plan(out)
    assert saved.complete and saved.kv_saving() == pytest.approx(0.2 * expected)
    assert saved.provenance["heldout"]["final"]["kl"] <= limit
    point = points[expected - 1]
    steps = [Step.from_json(s) for s in saved.provenance["search"]["steps"]]
    assert [(s.chosen, s.group) for s in steps] == list(zip(point["layers"], point["groups"]))
    assert sorted(saved.skip) == sorted({i for i in point["layers"] if point["layers"].count(i) == N_KV})
    assert {int(k): tuple(v) for k, v in point["kv_groups"].items()} == dict(saved.kv_groups)
    curve = json.loads(out.with_name("plan.curve.json").read_text())
    assert curve["chosen"] == expected and [p["within_limits"] for p in curve["points"]] == [kl <= limit for kl in kls]
