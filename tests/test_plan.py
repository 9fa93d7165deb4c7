"""Plan files: round trip, and every malformed plan is refused with a clear message."""

from __future__ import annotations

import json
import math

import pytest

from hopscotch_export.errors import PlanError
from hopscotch_export.plan import FORMAT, ModelRef, Plan, load_plan

REF = ModelRef("LlamaForCausalLM", 6, 4, "abc123")


def plan_json(**changes):
    data = Plan.identity(REF, skip=(2, 4)).to_json()
    for key, value in changes.items():
        target = data
        *path, last = key.split(".")
        for p in path:
            target = target[p]
        target[last] = value
    return data


def write(tmp_path, data) -> str:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def test_round_trip_layer_and_channel(tmp_path):
    plan = Plan(REF, (3, 1), (1.0, 0.5, 1.0, 2.0, [0.1, 0.2, 0.3, 0.4], 1.0), (1.5,) * 6)
    plan.save(tmp_path / "p.json")
    loaded = load_plan(tmp_path / "p.json")
    assert loaded.skip == (3, 1)
    assert loaded.granularity == "channel"
    assert loaded.attn_factor(1).tolist() == [0.0]
    assert loaded.attn_factor(4).tolist() == [0.1, 0.2, 0.3, 0.4]
    assert loaded.mlp_factor(0).tolist() == [1.5]


def test_save_refuses_to_overwrite(tmp_path):
    plan = Plan.identity(REF)
    plan.save(tmp_path / "p.json")
    with pytest.raises(Exception, match="--force"):
        plan.save(tmp_path / "p.json")
    plan.save(tmp_path / "p.json", force=True)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"format": "hopscotch-plan/99"}, "unknown plan format"),
        ({"skip": [2, 2]}, "more than once"),
        ({"skip": [7]}, "out of range"),
        ({"skip": [-1]}, "out of range"),
        ({"skip": [0]}, "skips layer 0"),
        ({"skip": [0, 1, 2, 3, 4, 5]}, "every one of the 6"),
        ({"skip": [1.5]}, "must be integers"),
        ({"scales.attn": [1.0] * 5}, "has 5 entries"),
        ({"scales.mlp": [1.0] * 5 + [[1.0, 2.0]]}, "has 2 channels"),
        ({"scales.mlp": [1.0] * 5 + [math.inf]}, "not finite"),
        ({"scales.attn": [1.0] * 5 + ["x"]}, "must be a number"),
    ],
)
def test_bad_plans_are_refused(tmp_path, changes, message):
    with pytest.raises(PlanError, match=message):
        load_plan(write(tmp_path, plan_json(**changes)))


def test_nan_and_missing_fields_and_bad_json(tmp_path):
    text = json.dumps(plan_json()).replace('"mlp": [1.0', '"mlp": [NaN', 1)
    with pytest.raises(PlanError, match="not finite"):
        load_plan(write(tmp_path, text))
    data = plan_json()
    del data["model"]
    with pytest.raises(PlanError, match="missing field"):
        load_plan(write(tmp_path, data))
    with pytest.raises(PlanError, match="not valid JSON"):
        load_plan(write(tmp_path, "{nope"))
    with pytest.raises(PlanError, match="not found"):
        load_plan(tmp_path / "absent.json")


def test_fingerprint_mismatch_needs_accept_foreign():
    plan = Plan.identity(REF)
    other = ModelRef("LlamaForCausalLM", 6, 4, "different")
    with pytest.raises(PlanError, match="--accept-foreign-plan"):
        plan.check_model(other)
    with pytest.raises(PlanError, match=r"fingerprint mismatch\); start again$"):
        plan.check_model(other, fix="start again")
    plan.check_model(other, accept_foreign=True)
    with pytest.raises(PlanError, match="n_layers"):
        plan.check_model(ModelRef("LlamaForCausalLM", 8, 4, "abc123"), accept_foreign=True)


def test_format_constant_is_written():
    assert Plan.identity(REF).to_json()["format"] == FORMAT


GROUPED = ModelRef("LlamaForCausalLM", 6, 4, "abc123", n_kv_heads=3)


def test_kv_groups_round_trip_and_saving(tmp_path):
    plan = Plan(GROUPED, (2,), (1.0,) * 6, (1.0,) * 6, kv_groups={4: [2, 0], 1: (1,)})
    plan.save(tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["format"] == FORMAT == "hopscotch-plan/3"
    assert data["kv_groups"] == {"1": [1], "4": [0, 2]} and data["model"]["n_kv_heads"] == 3
    loaded = load_plan(tmp_path / "p.json")
    assert loaded == plan
    assert [loaded.kept_groups(i) for i in range(4)] == [None, (1,), (), None]
    assert loaded.kind(4) == "keep"
    # one whole layer (3 groups) and 2 + 1 groups of 18
    assert loaded.kv_saving() == pytest.approx(6 / 18)


def test_format_2_plans_still_load_as_uncut(tmp_path):
    data = plan_json(format="hopscotch-plan/2")
    del data["kv_groups"]
    plan = load_plan(write(tmp_path, data))
    assert plan.kv_groups == {} and plan.model.n_kv_heads is None
    assert plan.kv_saving() == pytest.approx(2 / 6)
    # a format 2 plan cannot carry cuts
    with pytest.raises(PlanError, match="no 'kv_groups' field"):
        load_plan(write(tmp_path, plan_json(format="hopscotch-plan/2", kv_groups={"3": [0]})))


def grouped_json(**changes):
    data = Plan.identity(GROUPED, skip=(2,)).to_json()
    data.update(changes)
    return data


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"kv_groups": {"3": [0, 1, 2]}}, "keeps all of them"),
        ({"kv_groups": {"3": []}}, "keeps none"),
        ({"kv_groups": {"3": [3]}}, "group numbers 0..2"),
        ({"kv_groups": {"3": [1, 1]}}, "more than once"),
        ({"kv_groups": {"2": [1]}}, "also skipped or linear"),
        ({"kv_groups": {"0": [1]}}, "layer 0"),
        ({"kv_groups": {"9": [1]}}, "out of range"),
        ({"kv_groups": {"x": [1]}}, "must be layer numbers"),
        ({"kv_groups": [1]}, "must be an object"),
    ],
)
def test_bad_kv_groups_are_refused(tmp_path, changes, message):
    with pytest.raises(PlanError, match=message):
        load_plan(write(tmp_path, grouped_json(**changes)))


def test_kv_groups_need_the_kv_head_count(tmp_path):
    data = grouped_json(kv_groups={"3": [1]})
    del data["model"]["n_kv_heads"]
    with pytest.raises(PlanError, match="needs model.n_kv_heads"):
        load_plan(write(tmp_path, data))
    with pytest.raises(PlanError, match="n_kv_heads"):
        Plan.identity(GROUPED).check_model(ModelRef("LlamaForCausalLM", 6, 4, "abc123", n_kv_heads=2))


def test_torch_group_cut_zeroes_the_query_heads_of_removed_groups():
    """A layer keeping group 1 of 2 equals the layer with query heads 0-1 zeroed before o_proj."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hopscotch_export.torch_plan import apply_plan

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    ref = ModelRef("LlamaForCausalLM", 3, 32, "x", n_kv_heads=2)
    ids = torch.randint(0, 50, (1, 7))
    with torch.no_grad():
        full = model(ids).logits
        with apply_plan(model, Plan(ref, (), (1.0,) * 3, (1.0,) * 3, kv_groups={1: (1,)})):
            cut = model(ids).logits
        o = model.model.layers[1].self_attn.o_proj
        saved = o.weight.clone()
        o.weight[:, :16] = 0  # heads 0 and 1 (8 channels each) read KV group 0
        manual = model(ids).logits
        o.weight.copy_(saved)
        again = model(ids).logits
    assert not torch.allclose(cut, full, atol=1e-4)
    torch.testing.assert_close(cut, manual)
    torch.testing.assert_close(again, full)  # the hook is gone after the block
