"""K-quant sources: the file type llama.cpp's quantizer writes for the mix, and the parity
gate running on them (it used to read ``general.file_type``, which said GUESSED for a
Q4_K-dominated mix, and turned itself off)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q
from gguf import LlamaFileType

from hopscotch_export.converters.outtypes import mix_file_type
from hopscotch_export.converters.quantize import llama_quantize
from hopscotch_export.sources.gguf_file import scan_gguf
from hopscotch_export.verify.parity import floor_applies
from models import llama_gguf, make_tiny_model
from test_cli import run_cli


def mix(n_layers: int = 8, **kinds: Q | dict[int, Q]) -> dict[str, Q]:
    """Tensor name -> type: ``kinds`` gives a kind's type, or its type per layer (others: ``base``;
    ``output`` Q6_K unless given)."""
    base = kinds.pop("base")
    types = {"token_embd.weight": base, "output.weight": kinds.pop("output", Q.Q6_K), "output_norm.weight": Q.F32}
    for i in range(n_layers):
        for kind in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"):
            given = kinds.get(kind, base)
            t = given.get(i, base) if isinstance(given, dict) else given
            types[f"blk.{i}.{kind}.weight"] = Q.F32 if kind.endswith("norm") else t
    return types


HALF_Q6 = {1: Q.Q6_K, 4: Q.Q6_K, 7: Q.Q6_K}  # use_more_bits' layers of 8


@pytest.mark.parametrize(
    "types,expected",
    [
        (mix(base=Q.Q4_K, attn_v=HALF_Q6, ffn_down=HALF_Q6), "MOSTLY_Q4_K_M"),
        (mix(base=Q.Q4_K, attn_v={0: Q.Q5_K}, ffn_down={0: Q.Q5_K}), "MOSTLY_Q4_K_S"),
        (mix(base=Q.Q5_K, attn_v=HALF_Q6, ffn_down=HALF_Q6), "MOSTLY_Q5_K_M"),
        (mix(base=Q.Q5_K), "MOSTLY_Q5_K_S"),
        (mix(base=Q.Q3_K, attn_output=Q.Q4_K, attn_v=Q.Q4_K), "MOSTLY_Q3_K_M"),
        (mix(base=Q.Q3_K, attn_output=Q.Q5_K, attn_v=Q.Q5_K, ffn_down=Q.Q5_K), "MOSTLY_Q3_K_L"),
        (mix(base=Q.Q3_K), "MOSTLY_Q3_K_S"),
        (mix(base=Q.Q6_K), "MOSTLY_Q6_K"),
        # Qwen2.5-0.5B's Q4_K_M: rows of 896 are no whole K blocks, Q4_K fell back to Q5_0
        (mix(base=Q.Q5_0, ffn_down={i: Q.Q6_K if i in HALF_Q6 else Q.Q4_K for i in range(8)}), "MOSTLY_Q4_K_M"),
        (mix(base=Q.Q8_0), "MOSTLY_Q8_0"),
        # i-quant mixes raise attn_v / ffn_down to K types; they are still named by their base
        (mix(base=Q.IQ4_XS, attn_v=Q.Q5_K), "MOSTLY_IQ4_XS"),
        (mix(base=Q.IQ3_XXS, attn_v=Q.Q4_K, ffn_down=Q.Q4_K), "MOSTLY_IQ3_XXS"),
        (mix(base=Q.F32, output=Q.F32), "ALL_F32"),
        (mix(base=Q.Q8_1), "GUESSED"),  # no file type is mostly Q8_1
    ],
)  # fmt: skip
def test_the_file_type_is_the_one_llama_cpp_writes_for_the_mix(types, expected):
    assert mix_file_type(types).name == expected


@pytest.fixture(scope="module")
def q4_k_m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``llama`` GGUF that llama.cpp's quantizer made Q4_K_M: rows of 256 and 512, whole K
    blocks, so Q4_K is used (Q6_K on output and on attn_v and ffn_down of layers 2 and 3)."""
    d = tmp_path_factory.mktemp("q4_k_m")
    f32 = llama_gguf(make_tiny_model(d / "hf", layers=4, hidden=256, intermediate=512), d / "f32.gguf")
    llama_quantize(f32, d / "k.gguf", LlamaFileType.MOSTLY_Q4_K_M)
    return d / "k.gguf"


def test_the_one_command_gates_a_k_quant_source(q4_k_m, tmp_path, text_file, monkeypatch, capsys):
    """The gate runs, passes the faithful file, and fails it verified with other scales."""
    types = {name: t for name, (t, *_) in scan_gguf(q4_k_m).tensors.items()}
    assert types["blk.0.ffn_down.weight"] == Q.Q4_K and types["blk.3.ffn_down.weight"] == Q.Q6_K
    out = tmp_path / "m.gguf"
    verify = ["--ctx", "64", "--chunks", "1", "--no-speed", "--threads", "1", "--parity-windows", "1"]
    code, _, err = run_cli(
        monkeypatch, capsys, str(q4_k_m), "--skips", "1", "-o", str(out), "--data", str(text_file), "--samples", "4",
        "--heldout", "2", "--seq-len", "32", "--score-samples", "2", "--batch-size", "2", "--final-epochs", "1",
        "--device", "cpu", *verify,
    )  # fmt: skip
    assert code == 0, err
    assert scan_gguf(out).metadata["general.file_type"] == LlamaFileType.MOSTLY_Q4_K_M
    assert floor_applies(out, q4_k_m)
    report = json.loads((tmp_path / "m.verify.json").read_text())
    gate = report["limits"][0]
    assert report["passed"] is True and gate["name"].startswith("parity with torch") and gate["passed"]

    plan = json.loads((tmp_path / "m.plan.json").read_text())
    plan["scales"]["attn"] = [s * 0.5 for s in plan["scales"]["attn"]]
    (tmp_path / "other.plan.json").write_text(json.dumps(plan))
    code, out_text, err = run_cli(monkeypatch, capsys, "verify", str(out), "--reference", str(q4_k_m),
                                  "--plan", str(tmp_path / "other.plan.json"), *verify)  # fmt: skip
    assert code == 1 and "FAIL" in out_text + err


def test_the_floor_does_not_bound_a_file_stored_less_precisely(q4_k_m, tmp_path):
    """The same Q4_K_M file against an f32 reference: the floor of f32 would fail it."""
    f32 = llama_gguf(make_tiny_model(tmp_path / "hf", layers=4, hidden=256, intermediate=512), tmp_path / "f32.gguf")
    assert floor_applies(f32, q4_k_m) and not floor_applies(q4_k_m, f32)
