"""The search with removed blocks replaced by fitted linear maps (``--replace linear|auto``),
on tiny random models: an exactly linear block, auto against skip, --max-linear, resume,
and ``--replace skip`` unchanged."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import typer
from rich.console import Console
from typer.testing import CliRunner

from hopscotch_export.errors import HopscotchError
from hopscotch_export.plan import Plan, load_plan
from hopscotch_export.search import SearchInterrupted, SearchOptions, run_search
from hopscotch_export.search.command import search_command
from hopscotch_export.search.greedy import Selector
from hopscotch_export.sources import open_source
from models import make_planted_model, make_tiny_model
from test_search import interrupted_at_second_step

#: as in test_search.py: 5 layers, layer 3's attention output ~0
LAYERS, PLANTED = 5, 3
TINY: dict[str, Any] = dict(
    samples=6, heldout=2, seq_len=32, score_samples=2, batch_size=2, shortlist=2, final_epochs=2, device="cpu"
)
#: the attention block of this layer of the ``exact`` model is a linear map of its input
LINEAR_LAYER = 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_search.py's model, built the same way (its plans are compared with that file's)."""
    return make_planted_model(tmp_path_factory.mktemp("linear") / "tiny", LAYERS, PLANTED)


@pytest.fixture(scope="module")
def exact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen2 whose layer ``LINEAR_LAYER`` attends with a sliding window of one token, so
    each position attends to itself alone; without a v bias its block outputs
    ``o_proj(v_proj(x))``, a linear map of its normalised input."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = make_tiny_model(tmp_path_factory.mktemp("exact") / "tiny", "qwen2", layers=LAYERS)
    config = AutoConfig.from_pretrained(path)
    config.use_sliding_window, config.sliding_window = True, 1
    config.layer_types = ["sliding_attention" if i == LINEAR_LAYER else "full_attention" for i in range(LAYERS)]
    model = AutoModelForCausalLM.from_pretrained(path, config=config)
    torch.manual_seed(1)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)
        model.model.layers[LINEAR_LAYER].self_attn.v_proj.bias.zero_()
    model.save_pretrained(path)
    return path


def search(model: Path, out: Path, **options: Any) -> Plan:
    return run_search(open_source(model), SearchOptions(**options), out, console=Console(file=io.StringIO()))


@pytest.fixture(scope="module")
def skip_plan(tiny: Path, text_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Plan:
    return search(tiny, tmp_path_factory.mktemp("skip") / "plan.json", skips=2, data=str(text_file), **TINY)


def test_an_exactly_linear_block_is_repaired_exactly_by_its_map(exact: Path, text_file: Path, tmp_path: Path) -> None:
    """With training off (tiny learning rates), the held-out KL is the closed-form fit's."""
    options = dict(skips=1, protect=(1, 4), data=str(text_file), lr=1e-12, final_lr=1e-12, map_lr=1e-12,
                   **{**TINY, "samples": 8})  # fmt: skip
    linear = search(exact, tmp_path / "linear.json", replace="linear", **options)
    skip = search(exact, tmp_path / "skip.json", replace="skip", **options)
    auto = search(exact, tmp_path / "auto.json", replace="auto", **options)
    assert linear.linear == (LINEAR_LAYER,) and linear.skip == ()
    assert auto.linear == (LINEAR_LAYER,) and auto.provenance["heldout"]["final"]["kl"] < 1e-6
    assert linear.provenance["heldout"]["final"]["kl"] < 1e-6
    assert skip.provenance["heldout"]["final"]["kl"] > 0.1
    step = linear.provenance["search"]["steps"][0]
    assert step["kind"] == "linear" and step["ridge"] == 1e-6  # the held-out error wants no ridge
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(exact)
    attn = model.model.layers[LINEAR_LAYER].self_attn
    n_rep = attn.config.num_attention_heads // attn.config.num_key_value_heads
    v = attn.v_proj.weight.detach().view(-1, attn.head_dim, attn.v_proj.in_features)
    truth = attn.o_proj.weight.detach() @ v.repeat_interleave(n_rep, dim=0).flatten(0, 1)
    saved = load_plan(tmp_path / "linear.json")
    np.testing.assert_allclose(saved.maps[LINEAR_LAYER], truth.numpy(), atol=1e-4)


def test_nbl_baseline_linearises_the_blocks_a_linear_map_fits_best(exact: Path, text_file: Path) -> None:
    from hopscotch_export.search.baselines import linear_fits, nbl
    from hopscotch_export.search.workspace import prepare

    options = SearchOptions(skips=1, data=str(text_file), **{**TINY, "samples": 8})
    ws = prepare(open_source(exact), options, Console(file=io.StringIO()), data_file=None, save_data=False,
                 force=False)  # fmt: skip
    fits = linear_fits(ws.stack, ws.calib, [1, 2, 3, 4], batch_size=2)
    assert fits[LINEAR_LAYER].error < 1e-8  # type: ignore[operator]
    assert all(f.error > 1e-2 for c, f in fits.items() if c != LINEAR_LAYER)  # type: ignore[operator]
    maps = nbl(fits, 2)
    assert len(maps) == 2 and list(maps) == sorted(maps)
    second = min((c for c in fits if c != LINEAR_LAYER), key=lambda c: fits[c].error)  # type: ignore[arg-type,return-value]
    assert set(maps) == {LINEAR_LAYER, second} and maps[LINEAR_LAYER] is fits[LINEAR_LAYER].weight
    with pytest.raises(HopscotchError, match="at least 4 --samples"):
        small = dataclasses.replace(ws.calib, train_ids=ws.calib.train_ids[:3], train_targets=ws.calib.train_targets[:3])
        linear_fits(ws.stack, small, [2], batch_size=2)


def test_auto_compares_the_kinds_on_sequences_its_steps_did_not_fit_or_train_on(
    tiny: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Maps overfit few tokens: auto fits, scores and trains on the first training
    sequences and keeps the trial with the lowest loss on the last quarter."""
    from hopscotch_export.search import greedy
    from hopscotch_export.search.display import Silent
    from hopscotch_export.search.workspace import prepare
    from hopscotch_export.search.train import mean_loss
    from hopscotch_export.torch_plan import BranchScales

    seen: dict[str, list[torch.Tensor]] = {"fit": [], "train": [], "judge": []}

    def spy(name: str, real: Any, at: int) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            seen[name].append(args[at].train_ids)
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(greedy, "fit_maps", spy("fit", greedy.fit_maps, 5))
    monkeypatch.setattr(greedy, "train_scales", spy("train", greedy.train_scales, 3))
    monkeypatch.setattr(greedy, "mean_loss", spy("judge", greedy.mean_loss, 3))
    options = SearchOptions(skips=1, replace="auto", data=str(text_file), **TINY)
    ws = prepare(open_source(tiny), options, Console(file=io.StringIO()), data_file=None, save_data=False,
                 force=False)  # fmt: skip
    state = greedy.SearchState(BranchScales(LAYERS))
    step = Selector(ws.stack, ws.calib, ws.teacher, options, options.candidates(LAYERS), Silent()).step(state)
    rows = ws.calib.train_ids  # 6 sequences: the steps use 5, the choice the 6th
    assert all(torch.equal(t, rows[:5]) for t in seen["fit"] + seen["train"]) and seen["fit"] and seen["train"]
    assert all(torch.equal(t, rows[5:]) for t in seen["judge"]) and len(seen["judge"]) == len(seen["train"])
    assert {kind for kind, ls in step.losses.items() if ls.trained} == {"skip", "linear"}
    trained = {(c, kind): v for kind, ls in step.losses.items() for c, v in ls.trained.items()}
    assert (step.chosen, step.kind) == min(trained, key=trained.__getitem__) and step.loss == min(trained.values())
    skip, maps = ([step.chosen], {}) if step.kind == "skip" else ([], dict(state.maps))
    last = greedy._part(ws.calib, ws.teacher, slice(5, None))
    value = mean_loss(ws.stack, state.scales, skip, *last, "kl", n_rows=1, batch_size=2, where="test", maps=maps)
    assert step.loss == pytest.approx(value, rel=1e-5)


def test_auto_plans_record_both_kinds(tiny: Path, text_file: Path, tmp_path: Path) -> None:
    auto = search(tiny, tmp_path / "plan.json", skips=2, replace="auto", data=str(text_file), **TINY)
    steps = auto.provenance["search"]["steps"]
    assert {c["kind"] for c in steps[0]["candidates"]} == {"skip", "linear"} and len(steps) == 2
    assert list(auto.linear) == sorted(s["chosen"] for s in steps if s["kind"] == "linear")
    assert list(auto.skip) == sorted(s["chosen"] for s in steps if s["kind"] == "skip")


def test_max_linear_bounds_the_linear_steps_cli(tiny: Path, text_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    app = typer.Typer()
    app.command()(search_command)
    args = [str(tiny), "--skips", "2", "-o", str(out), "--data", str(text_file), "--replace", "linear",
            "--max-linear", "1", "--linear-epochs", "1", "--samples", "6", "--heldout", "2", "--seq-len", "32",
            "--score-samples", "2", "--batch-size", "2", "--final-epochs", "1", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    plan = load_plan(out)
    steps = plan.provenance["search"]["steps"]
    assert [s["kind"] for s in steps] == ["linear", "skip"]
    assert {c["kind"] for c in steps[1]["candidates"]} == {"skip"}  # the bound is reached: skips only
    assert plan.linear == (steps[0]["chosen"],) and plan.skip == (steps[1]["chosen"],)
    assert plan.maps[steps[0]["chosen"]].shape == (64, 64)
    blocks = plan.provenance["search"]["blocks"]
    # 64 hidden, 4 heads and 2 KV heads of 16: K and V of 2 heads in f16; q,k,v,o projections
    assert [b["kv_bytes_per_token"] for b in blocks] == [128, 128]
    assert [b["flops_per_token"] for b in blocks] == [24576 - 2 * 64 * 64, 24576]
    assert blocks[1]["loss_added"] == pytest.approx(steps[1]["loss"] - steps[0]["loss"])


def test_resume_of_a_linear_search_gives_the_uninterrupted_plan(
    tiny: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = dict(skips=2, replace="linear", linear_epochs=1, data=str(text_file), **TINY)
    whole = search(tiny, tmp_path / "whole.json", **options)
    out = tmp_path / "cut.json"
    with interrupted_at_second_step(monkeypatch), pytest.raises(SearchInterrupted, match="after 1 step"):
        search(tiny, out, **options)
    partial = load_plan(out)
    assert not partial.complete and len(partial.linear) == 1
    with pytest.raises(HopscotchError, match="options differ .*replace 'linear' -> 'auto'"):
        run_search(open_source(tiny), SearchOptions(**{**options, "replace": "auto"}), out, resume=out)
    quiet = Console(file=io.StringIO())
    resumed = run_search(open_source(tiny), SearchOptions(**options), out, resume=out, console=quiet)
    assert resumed.linear == whole.linear and resumed.skip == whole.skip
    assert resumed.attn == pytest.approx(whole.attn, abs=1e-6)
    assert resumed.mlp == pytest.approx(whole.mlp, abs=1e-6)
    for i in whole.linear:
        np.testing.assert_allclose(resumed.maps[i], whole.maps[i], atol=1e-6)


def test_replace_skip_gives_the_plan_of_before_linear_maps(skip_plan: Plan) -> None:
    """test_search.py's first search, as the code before ``--replace`` found it (recorded)."""
    assert skip_plan.skip == (3, 4) and skip_plan.linear == ()
    attn = [0.9846340417861938, 1.0032958984375, 0.9759964346885681, 1.0, 1.0]
    assert skip_plan.attn == pytest.approx(attn, abs=1e-6)
    mlp = [0.9951225519180298, 1.006911039352417, 1.0112169981002808, 1.0235964059829712, 0.9773789644241333]
    assert skip_plan.mlp == pytest.approx(mlp, abs=1e-6)
    assert skip_plan.provenance["heldout"]["final"]["kl"] == pytest.approx(1.9788002967834473, rel=1e-5)
    assert all(s["kind"] == "skip" for s in skip_plan.provenance["search"]["steps"])


def test_auto_is_refused_without_a_held_out_sequence(tiny: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Below 4 training sequences the last quarter is empty: ``auto`` would judge the kinds
    on the sequences it trained on, so it is refused before loading, in one line."""
    from test_cli import assert_one_line_error, run_cli

    with pytest.raises(HopscotchError, match="--replace auto.* 3 sequence.*--samples 4 or more"):
        SearchOptions(skips=1, replace="auto", samples=3, heldout=1)
    SearchOptions(skips=1, replace="linear", samples=3, heldout=1)  # the ridge falls back; nothing compares kinds
    assert SearchOptions(skips=1, replace="auto", samples=4, heldout=1).samples == 4
    out = tmp_path / "plan.json"
    args = ("search", str(tiny), "--skips", "1", "--replace", "auto", "--samples", "2", "-o", str(out))
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, "--samples 4 or more")
    assert not out.exists()


def test_linear_options_are_checked() -> None:
    with pytest.raises(HopscotchError, match="--replace must be one of skip, linear, auto"):
        SearchOptions(skips=1, replace="mlp")
    with pytest.raises(HopscotchError, match="--max-linear bounds linear maps.*add --replace auto"):
        SearchOptions(skips=1, max_linear=1)
    with pytest.raises(HopscotchError, match="--linear-epochs must be at least 0"):
        SearchOptions(skips=1, replace="auto", linear_epochs=-1)
    assert SearchOptions(skips=1, final_epochs=3).map_epochs == 3
    assert SearchOptions(skips=1, final_epochs=3, linear_epochs=0).map_epochs == 0
    from hopscotch_export.export import export_command

    params = export_command.__signature__.parameters  # type: ignore[attr-defined]
    assert {"replace", "linear_epochs", "max_linear", "map_lr"} <= set(params)
