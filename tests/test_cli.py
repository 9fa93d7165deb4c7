"""Bad input through the CLI: one line naming the problem and the fix, exit 2, nothing written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hopscotch_export import cli
from hopscotch_export.plan import Plan
from hopscotch_export.sources import open_source


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["hopscotch-export", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err


def test_missing_model(monkeypatch, capsys, tmp_path):
    out = tmp_path / "o.gguf"
    code, _, err = run_cli(monkeypatch, capsys, "convert", str(tmp_path / "nope"), "-o", str(out))
    assert_one_line_error(code, err, "not found", "hub id")
    assert not out.exists()


def test_unsupported_architecture(monkeypatch, capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    code, _, err = run_cli(monkeypatch, capsys, "convert", str(tmp_path), "-o", str(tmp_path / "o.gguf"))
    assert_one_line_error(code, err, "GPT2LMHeadModel", "LlamaForCausalLM", "Qwen2ForCausalLM")


def test_existing_output_needs_force(monkeypatch, capsys, tiny_llama, tmp_path):
    out = tmp_path / "o.gguf"
    out.write_bytes(b"precious")
    code, _, err = run_cli(monkeypatch, capsys, "convert", str(tiny_llama), "-o", str(out))
    assert_one_line_error(code, err, "--force")
    assert out.read_bytes() == b"precious"


def test_plan_for_other_weights(monkeypatch, capsys, tiny_llama, tmp_path):
    ref = open_source(tiny_llama).model_ref()
    plan = Plan.identity(ref.__class__(ref.architecture, ref.n_layers, ref.hidden_size, "0000"), skip=(2,))
    plan.save(tmp_path / "p.json")
    out = tmp_path / "o.gguf"
    args = ("convert", str(tiny_llama), "--plan", str(tmp_path / "p.json"), "-o", str(out))
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, "fingerprint", "--accept-foreign-plan")
    assert not out.exists()
    out.write_bytes(b"old")  # --force overwrites the output, and accepts no foreign plan
    code, _, err = run_cli(monkeypatch, capsys, *args, "--force")
    assert_one_line_error(code, err, "fingerprint", "--accept-foreign-plan")
    assert out.read_bytes() == b"old"
    code, _, err = run_cli(monkeypatch, capsys, *args, "--accept-foreign-plan")  # nor it the other way round
    assert_one_line_error(code, err, "already exists", "--force")
    code, _, _ = run_cli(monkeypatch, capsys, *args, "--accept-foreign-plan", "--force")
    assert code == 0 and out.read_bytes()[:4] == b"GGUF"


def test_one_command_refuses_a_plan_for_other_weights_with_its_own_fix(monkeypatch, capsys, tiny_llama, tmp_path):
    """The one command has no --accept-foreign-plan (verify's parity needs the plan's own
    weights): a plan beside the output made for other weights is searched again with --force."""
    ref = open_source(tiny_llama).model_ref()
    for complete in (True, False):
        plan = Plan.identity(ref.__class__(ref.architecture, ref.n_layers, ref.hidden_size, "0000"), skip=(2,))
        plan.with_fields(complete=complete).save(tmp_path / "o.plan.json", force=True)
        code, _, err = run_cli(monkeypatch, capsys, str(tiny_llama), "--skips", "1", "-o", str(tmp_path / "o.gguf"))
        assert_one_line_error(code, err, "fingerprint", "pass --force to search again")
        assert "--accept-foreign-plan" not in err and not (tmp_path / "o.gguf").exists()


def test_bad_plan_and_outtype(monkeypatch, capsys, tiny_llama, tmp_path):
    bad = Plan.identity(open_source(tiny_llama).model_ref()).to_json()
    bad["skip"] = [0]
    (tmp_path / "p.json").write_text(json.dumps(bad))
    out = tmp_path / "o.gguf"
    code, _, err = run_cli(monkeypatch, capsys, "convert", str(tiny_llama), "--plan", str(tmp_path / "p.json"), "-o", str(out))
    assert_one_line_error(code, err, "layer 0")
    code, _, err = run_cli(monkeypatch, capsys, "convert", str(tiny_llama), "--outtype", "q3", "-o", str(out))
    assert_one_line_error(code, err, "--outtype", "q4_k_m")
    assert not out.exists()


def test_failure_midway_leaves_nothing(monkeypatch, tiny_llama, tmp_path):
    from hopscotch_export.converters import convert, tensors

    calls = {"n": 0}
    real = tensors.encode

    def failing(x, qtype):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk full")
        return real(x, qtype)

    monkeypatch.setattr(tensors, "encode", failing)
    out = tmp_path / "o.gguf"
    with pytest.raises(RuntimeError, match="disk full"):
        convert(open_source(tiny_llama), None, out, outtype="f16")
    assert list(tmp_path.iterdir()) == []


def test_inspect_plan_and_gguf(monkeypatch, capsys, tiny_llama, tmp_path):
    ref = open_source(tiny_llama).model_ref()
    Plan.identity(ref, skip=(2, 3)).save(tmp_path / "p.json")
    code, out, _ = run_cli(monkeypatch, capsys, "inspect", str(tmp_path / "p.json"), "--json")
    assert code == 0 and json.loads(out)["skipped_attention"] == [2, 3]
    gguf_path = tmp_path / "m.gguf"
    code, _, _ = run_cli(monkeypatch, capsys, "convert", str(tiny_llama), "--plan", str(tmp_path / "p.json"), "-o", str(gguf_path))
    assert code == 0
    code, out, _ = run_cli(monkeypatch, capsys, "inspect", str(gguf_path), "--json")
    info = json.loads(out)
    assert info["architecture"] == "deci"
    assert info["skipped_attention"] == [2, 3]
    # 4 of 6 layers keep 2 KV heads of 16 dims for K and V, f16
    assert info["kv_cache_bytes_per_token"] == 4 * 2 * (16 + 16) * 2
    code, _, err = run_cli(monkeypatch, capsys, "inspect", str(Path(tmp_path / "absent.gguf")))
    assert_one_line_error(code, err, "not found")


def test_one_command_names_verify_data_apart_from_search_data():
    """search's --data is training data, verify's held-out text: the one command takes both, each once."""
    import typer.main

    from hopscotch_export.export import export_app

    flags = [flag for param in typer.main.get_command(export_app).params for flag in param.opts]
    assert len(flags) == len(set(flags))
    assert {"--data", "--verify-data", "--verify-data-config", "--verify-data-split"} <= set(flags)
