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
