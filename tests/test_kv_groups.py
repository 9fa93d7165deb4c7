"""Single KV groups as a unit of removal, from plan to GGUF: a layer keeps the rows of
``attn_q/k/v`` of its kept groups and the matching ``attn_output`` columns, with its head
counts written per layer, and llama.cpp agrees with torch under the plan (the removed
groups' query heads zeroed before ``o_proj``)."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import LlamaFileType

from hopscotch_export.converters.convert import convert
from hopscotch_export.converters.outtypes import cut_type
from hopscotch_export.converters.quant_scale import select_columns
from hopscotch_export.converters.quantize import llama_quantize
from hopscotch_export.summary import gguf_summary, gguf_tensor_types, plan_summary
from hopscotch_export.plan import Plan, load_plan
from hopscotch_export.sources import open_source
from hopscotch_export.torch_plan import apply_plan
from hopscotch_export.verify.layerwise import planned_logits
from hopscotch_export.verify.parity import FLOOR_MULTIPLE, SLACK
from hopscotch_export.verify.measure import _layer_kinds
from models import llama_gguf, make_tiny_model
from test_cli import run_cli
from test_linear_layers import check_parity, linear_plan


@pytest.fixture(scope="module")
def qwen2_gguf(tiny_qwen2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An f32 ``qwen2`` GGUF: q/k rows in NEOX order, permuted by the converter."""
    from test_convert import write_qwen2_gguf

    out = tmp_path_factory.mktemp("qwen2_gguf") / "q.gguf"
    write_qwen2_gguf(tiny_qwen2, out)
    return out


def group_plan(spec: Path, skip: tuple[int, ...], linear: tuple[int, ...], groups: dict[int, tuple[int, ...]]) -> Plan:
    """Skips, linear maps and group cuts together, every scale 0.5..1.5."""
    return linear_plan(open_source(spec), skip=skip, linear=linear).with_fields(kv_groups=groups)


def test_layerwise_logits_equal_whole_model_with_group_cuts(tiny_qwen2):
    """verify's layer-by-layer torch path zeroes the cut heads as apply_plan does."""
    source = open_source(tiny_qwen2)
    plan = group_plan(tiny_qwen2, (2,), (4,), {1: (1,), 3: (0,)})
    windows = [list(range(100, 132))]
    model = source.load_torch(torch.float32)
    with apply_plan(model, plan), torch.no_grad():
        whole = model(torch.tensor(windows)).logits[0].numpy()
    with torch.no_grad():
        uncut = model(torch.tensor(windows)).logits[0].numpy()
    (layered,) = planned_logits(source, plan, windows, whole.shape[1])
    np.testing.assert_allclose(layered, whole, rtol=0, atol=1e-5 * np.abs(whole).max())
    assert np.abs(whole - uncut).max() > 1e-2  # the cut does change the model


@pytest.mark.parametrize(
    "fixture,outtype,max_kl",
    [
        ("tiny_llama", "f32", 1e-5),
        ("tiny_llama", "q8_0", 1e-3),  # heads of 16: the Q8_0 columns are encoded from float32
        ("tiny_qwen2", "f32", 1e-5),  # q/k/v biases, q/k rows permuted to NORM order before the cut
        ("qwen2_gguf", "source", 1e-5),  # the same on stored rows and columns (copied, not re-encoded)
    ],
)
def test_llama_cpp_matches_torch_with_group_cuts(request, tmp_path, fixture, outtype, max_kl):
    spec = request.getfixturevalue(fixture)
    plan = group_plan(spec, (2,), (4,), {1: (1,), 3: (0,)})
    wrong = plan.with_fields(kv_groups={1: (0,), 3: (1,)})
    good, bad = check_parity(spec, plan, wrong, outtype, tmp_path)
    print(f"{fixture} {outtype}: parity KL {good:.3g}, wrong groups {bad:.3g}")
    assert good < max_kl
    assert bad > max(100 * good, 1e-3)
    out = tmp_path / "m.gguf"
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in gguf.GGUFReader(out).tensors}  # ggml order
    hd = open_source(spec).spec.head_dim
    assert shapes["blk.1.attn_q.weight"][1] == 2 * hd and shapes["blk.1.attn_k.weight"][1] == hd
    assert shapes["blk.1.attn_output.weight"][0] == 2 * hd and shapes["blk.0.attn_output.weight"][0] == 4 * hd
    fields = gguf.GGUFReader(out).fields
    assert list(fields["deci.attention.head_count"].contents()) == [4, 2, 0, 2, 4, 4]
    assert list(fields["deci.attention.head_count_kv"].contents()) == [2, 1, 0, 1, 0, 2]
    info = gguf_summary(out)
    assert info["layer_kinds"] == ["keep", "keep", "skip", "keep", "linear", "keep"]
    assert info["kv_groups"] == {"1": "keep 1/2 KV groups (1), 2 heads", "3": "keep 1/2 KV groups (0), 2 heads"}
    # verify's "attention layers" row counts the partly cut layers apart
    assert _layer_kinds(out) == {"keep": 2, "keep some KV groups": 2, "skip": 1, "linear": 1}


def test_plans_without_group_cuts_convert_as_before(tiny_llama, tmp_path):
    """A format 2 plan file and the same plan saved as format 3 give the same bytes, with
    no ``hopscotch.kv_groups`` key."""
    plan = group_plan(tiny_llama, (2,), (4,), {})
    plan.save(tmp_path / "v3.json")
    data = json.loads((tmp_path / "v3.json").read_text())
    assert data["format"] == "hopscotch-plan/3"
    del data["kv_groups"]
    del data["model"]["n_kv_heads"]
    data["format"] = "hopscotch-plan/2"
    (tmp_path / "v2.json").write_text(json.dumps(data))
    src = open_source(tiny_llama)
    convert(src, load_plan(tmp_path / "v2.json"), tmp_path / "v2.gguf", outtype="q8_0")
    convert(src, load_plan(tmp_path / "v3.json"), tmp_path / "v3.gguf", outtype="q8_0")
    assert (tmp_path / "v2.gguf").read_bytes() == (tmp_path / "v3.gguf").read_bytes()
    assert "hopscotch.kv_groups" not in gguf.GGUFReader(tmp_path / "v2.gguf").fields
    assert "kv_groups" not in gguf_summary(tmp_path / "v2.gguf")


@pytest.mark.parametrize(
    "qtype,head_dim,n_cols,want",
    [
        (Q.Q4_1, 64, 384, Q.Q4_1),  # heads are whole 32-wide blocks: copied
        (Q.F16, 16, 32, Q.F16),
        (Q.Q4_K, 64, 256, Q.Q4_K),  # requantized to its own type
        (Q.Q4_K, 64, 384, Q.Q5_0),  # rows of 384 are no whole K blocks: llama.cpp's fallback
        (Q.Q6_K, 64, 128, Q.Q8_0),
        (Q.Q8_0, 16, 48, Q.F16),  # even the fallback does not fit
    ],
)
def test_cut_type(qtype, head_dim, n_cols, want):
    assert cut_type(qtype, head_dim, n_cols) == want


def test_select_columns_copies_whole_blocks_only():
    x = np.random.default_rng(0).standard_normal((3, 128)).astype(np.float32)
    data = gguf.quants.quantize(x, Q.Q8_0)
    cols = np.r_[32:64, 96:128]
    np.testing.assert_array_equal(
        gguf.quants.dequantize(select_columns(data, Q.Q8_0, cols), Q.Q8_0),
        gguf.quants.dequantize(data, Q.Q8_0)[:, cols],
    )
    with pytest.raises(ValueError, match="whole 32-wide Q8_0 blocks"):
        select_columns(data, Q.Q8_0, np.r_[16:48])


@pytest.fixture(scope="module")
def q4_k_m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Q4_K_M ``llama`` GGUF by llama.cpp's quantizer: 8 heads of 64 in 4 KV groups,
    ``attn_output`` 512 wide (two whole K blocks), so keeping 2 groups leaves one whole
    block row (requantized to Q4_K) and keeping 1 leaves 128 (no whole K block)."""
    d = tmp_path_factory.mktemp("q4_k_m_groups")
    hf = make_tiny_model(d / "hf", layers=5, hidden=256, heads=8, kv_heads=4, head_dim=64, intermediate=512)
    llama_quantize(llama_gguf(hf, d / "f32.gguf"), d / "k.gguf", LlamaFileType.MOSTLY_Q4_K_M)
    return d / "k.gguf"


def test_k_quant_source_with_skip_linear_and_group_cuts(q4_k_m, tmp_path, monkeypatch, capsys):
    """The parity gate of ``verify --plan`` passes the converted file and fails it against a
    plan cutting other groups."""
    plan = group_plan(q4_k_m, (1,), (3,), {2: (0, 3), 4: (1,)})
    wrong = plan.with_fields(kv_groups={2: (1, 2), 4: (1,)})
    out = tmp_path / "m.gguf"
    summary = convert(open_source(q4_k_m), plan, out, outtype="source")
    types = gguf_tensor_types(out)
    assert types["blk.2.attn_q.weight"] == types["blk.2.attn_output.weight"] == "Q4_K"
    # 256 columns left: Q4_K again; 128: llama.cpp's fallback for rows of no whole K block
    assert summary.requantized == {
        "blk.2.attn_output.weight": "Q4_K -> Q4_K", "blk.4.attn_output.weight": "Q4_K -> Q5_0"
    }
    assert types["blk.4.attn_output.weight"] == "Q5_0"
    said = dict(summary.rows())["requantized"]
    assert said == "blk.2.attn_output.weight (Q4_K -> Q4_K); blk.4.attn_output.weight (Q4_K -> Q5_0)"
    plan.save(tmp_path / "plan.json")
    wrong.save(tmp_path / "wrong.json")
    kept = plan_summary(tmp_path / "plan.json")["kv_groups"]
    assert kept == {"2": "keep 2/4 KV groups (0, 3)", "4": "keep 1/4 KV groups (1)"}
    verify = ["verify", str(out), "--reference", str(q4_k_m), "--ctx", "64", "--chunks", "1", "--no-speed",
              "--threads", "1", "--parity-windows", "1"]  # fmt: skip
    results = {}
    for name in ("plan", "wrong"):
        report = tmp_path / f"{name}.verify.json"
        code, text, err = run_cli(monkeypatch, capsys, *verify, "--plan", str(tmp_path / f"{name}.json"),
                                  "--json", str(report))  # fmt: skip
        results[name] = (code, json.loads(report.read_text())["limits"][0])
    (code, gate), (wrong_code, wrong_gate) = results["plan"], results["wrong"]
    print(f"Q4_K_M: gate {gate}; wrong groups {wrong_gate}")
    assert code == 0 and gate["name"].startswith("parity with torch") and gate["passed"]
    assert wrong_code == 1 and not wrong_gate["passed"]


def test_size_estimate_counts_the_smaller_tensors(tiny_llama, tmp_path):
    """Layers 1 and 3 each lose one of two groups: two query heads and one KV head of rows
    in q, k and v, two heads of attn_output columns (f32: 4 bytes each)."""
    from hopscotch_export.converters.needs import convert_needs
    from hopscotch_export.converters.outtypes import resolve_outtype

    src = open_source(tiny_llama)
    choice = resolve_outtype("f32", "hf", Q.F32)
    plan = group_plan(tiny_llama, (2,), (4,), {1: (1,), 3: (0,)})

    def disk(p: Plan) -> int:
        return sum(convert_needs(src, choice, tmp_path / "m.gguf", plan=p)[0].parts.values())

    hd, hidden = src.spec.head_dim, src.spec.hidden_size
    per_layer = (2 * hd + hd + hd) * hidden + hidden * 2 * hd
    assert disk(plan.with_fields(kv_groups={})) - disk(plan) == 2 * 4 * per_layer
