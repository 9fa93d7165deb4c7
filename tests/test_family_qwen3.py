"""Qwen3 with tied embeddings, written as llama.cpp's ``openelm``: q, k and v fused into
``attn_qkv`` with the per-head q/k norms, KV-group cuts per layer, and llama.cpp agreeing
with torch under the plan (the removed groups' query heads zeroed before ``o_proj``); the
search removes KV groups only and every layer keeps one; untied Qwen3 is refused."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import LlamaFileType

from hopscotch_export.converters.convert import convert
from hopscotch_export.converters.quantize import llama_quantize
from hopscotch_export.errors import PlanError, SourceError
from hopscotch_export.families.chat_formats import CHATML
from hopscotch_export.summary import gguf_summary, gguf_tensor_types
from hopscotch_export.ollama import modelfile
from hopscotch_export.plan import Plan
from hopscotch_export.sources import open_source
from models import llama_gguf, make_planted_model, make_tiny_model, small_gguf
from test_cli import assert_one_line_error, run_cli
from test_linear_layers import check_parity, linear_plan


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 layers of 4 query heads in 2 KV groups, heads of 16, q/k norm weights 0.3..2."""
    return make_tiny_model(tmp_path_factory.mktemp("qwen3") / "hf", "qwen3", tied=True, head_dim=16)


@pytest.fixture(scope="module")
def qwen3_q4_k_m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``qwen3`` GGUF that llama.cpp's quantizer made Q4_K_M: 8 heads of 64 in 4 KV groups,
    rows of 256 (whole K blocks); some layers' ``attn_v`` are Q6_K beside Q4_K q and k."""
    d = tmp_path_factory.mktemp("qwen3_k")
    hf = make_tiny_model(d / "hf", "qwen3", layers=5, hidden=256, heads=8, kv_heads=4, head_dim=64, intermediate=512,
                         tied=True)  # fmt: skip
    llama_quantize(llama_gguf(hf, d / "f32.gguf", arch="qwen3"), d / "k.gguf", LlamaFileType.MOSTLY_Q4_K_M)
    return d / "k.gguf"


def cut_plan(model: Path, groups: dict[int, tuple[int, ...]]) -> Plan:
    """Every scale 0.5..1.5, ``groups`` kept in the layers named, no block removed."""
    return linear_plan(open_source(model), skip=(), linear=()).with_fields(kv_groups=groups)


@pytest.mark.parametrize(
    "fixture,outtype,groups,wrong,max_kl,bite",
    [
        ("tiny_qwen3", "f32", {1: (1,), 3: (0,), 4: (1,)}, {1: (0,), 3: (1,), 4: (1,)}, 1e-5, 100),
        ("tiny_qwen3", "q8_0", {1: (1,), 3: (0,), 4: (1,)}, {1: (0,), 3: (1,), 4: (1,)}, 1e-3, 100),
        # q/k Q4_K re-encoded as Q6_K where attn_v is Q6_K; attn_output of 2 and 1 groups: Q4_K, Q5_0
        ("qwen3_q4_k_m", "source", {2: (0, 3), 4: (1,)}, {2: (1, 2), 4: (1,)}, 1e-3, 10),
    ],
)  # fmt: skip
def test_llama_cpp_matches_torch_under_a_plan_with_group_cuts(
    request, tmp_path, fixture, outtype, groups, wrong, max_kl, bite
):  # fmt: skip
    model = request.getfixturevalue(fixture)
    plan = cut_plan(model, groups)
    good, bad = check_parity(model, plan, plan.with_fields(kv_groups=wrong), outtype, tmp_path)
    print(f"qwen3 {fixture} {outtype}: parity KL {good:.3g}, wrong groups {bad:.3g}")
    assert good < max_kl
    assert bad > max(bite * good, 1e-3)
    out = tmp_path / "m.gguf"
    spec = open_source(model).spec
    hd, n, n_kv = spec.head_dim, spec.n_heads, spec.n_kv_heads
    fields = gguf.GGUFReader(out).fields
    assert fields["general.architecture"].contents() == "openelm"
    kv = [len(groups.get(i, range(n_kv))) for i in range(spec.n_layers)]
    assert fields["openelm.attention.head_count_kv"].contents() == kv
    assert fields["openelm.attention.head_count"].contents() == [k * n // n_kv for k in kv]
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in gguf.GGUFReader(out).tensors}  # ggml order
    for i, k in enumerate(kv):  # q heads, then k, then v, of the kept groups
        assert shapes[f"blk.{i}.attn_qkv.weight"] == (spec.hidden_size, (k * n // n_kv + 2 * k) * hd)
        assert shapes[f"blk.{i}.attn_output.weight"] == (k * n // n_kv * hd, spec.hidden_size)
        assert shapes[f"blk.{i}.attn_q_norm.weight"] == shapes[f"blk.{i}.attn_k_norm.weight"] == (hd,)
    assert "output.weight" not in shapes and not any(".attn_q.weight" in name for name in shapes)
    assert gguf_summary(out)["kv_groups"]["1" if 1 in groups else "2"].startswith("keep ")


def test_a_k_quant_mix_fuses_into_the_most_precise_part_type(qwen3_q4_k_m, tmp_path):
    source_types = gguf_tensor_types(qwen3_q4_k_m)
    assert source_types["blk.2.attn_q.weight"] == "Q4_K" and source_types["blk.2.attn_v.weight"] == "Q6_K"
    assert source_types["blk.1.attn_v.weight"] == "Q4_K"
    summary = convert(open_source(qwen3_q4_k_m), cut_plan(qwen3_q4_k_m, {2: (0, 3)}), tmp_path / "m.gguf",
                      outtype="source")  # fmt: skip
    types = gguf_tensor_types(tmp_path / "m.gguf")
    assert types["blk.2.attn_qkv.weight"] == "Q6_K" and types["blk.1.attn_qkv.weight"] == "Q4_K"
    assert summary.requantized["blk.2.attn_qkv.weight"] == "attn_q Q4_K -> Q6_K, attn_k Q4_K -> Q6_K"
    assert "blk.1.attn_qkv.weight" not in summary.requantized  # one type: the rows are copied


def _untied_qwen3_gguf(path: Path) -> Path:
    """The header of a ``qwen3`` GGUF with its own ``output.weight``, as Qwen3-8B's files have."""
    shapes = {"token_embd.weight": (4, 8), "blk.0.attn_q.weight": (8, 8), "output_norm.weight": (8,),
              "output.weight": (4, 8)}  # fmt: skip
    return small_gguf(path, "qwen3", shapes, block_count=1, context_length=64, embedding_length=8,
                      feed_forward_length=16, head_count=2)  # fmt: skip


@pytest.mark.parametrize("kind", ["folder", "gguf"])
def test_untied_qwen3_is_refused_in_one_line(tmp_path, monkeypatch, capsys, kind):
    if kind == "folder":
        model = make_tiny_model(tmp_path / "untied", "qwen3", layers=2, hidden=32, intermediate=64, head_dim=8)
    else:
        model = _untied_qwen3_gguf(tmp_path / "untied.gguf")
    out = tmp_path / "m.gguf"
    code, _, err = run_cli(monkeypatch, capsys, str(model), "--skips", "1", "--unit", "group", "-o", str(out))
    assert_one_line_error(code, err, "untied embeddings", "openelm, whose head is always the token embedding")
    assert not any(tmp_path.glob("m.*"))


@pytest.mark.parametrize(
    "config,message",
    [
        ({"attention_bias": True}, "a Qwen3 with q/k/v biases, which openelm has no tensors for"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
         "rope scaling 'linear' on a Qwen3 is not supported yet (openelm is written with plain rope)"),
    ],
    ids=["bias", "rope-scaling"],
)  # fmt: skip
def test_a_qwen3_openelm_cannot_hold_is_refused_in_one_line(tmp_path, monkeypatch, capsys, config, message):
    model = make_tiny_model(tmp_path / "hf", "qwen3", layers=2, hidden=32, intermediate=64, head_dim=8, tied=True,
                            **config)  # fmt: skip
    out = tmp_path / "p.json"
    code, _, err = run_cli(monkeypatch, capsys, "search", str(model), "--skips", "1", "--unit", "group", "-o", str(out))
    assert_one_line_error(code, err, message)
    assert not out.exists()


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "--unit block removes whole attention blocks, but Qwen3 is written as llama.cpp's openelm, where "
             "every layer keeps at least one KV group; pass --unit group"),
        (["--unit", "auto"], "--unit auto removes whole attention blocks"),
        (["--replace", "linear"], "--unit block and --replace linear remove whole attention blocks"),
        (["--unit", "group", "--replace", "linear"], "--replace linear removes whole attention blocks, but Qwen3 "
                                                     "is written as llama.cpp's openelm, where every layer keeps at "
                                                     "least one KV group; pass --unit group without --replace"),
        (["--unit", "group", "--skips", "3"], "the budget is 6 KV groups, but with every layer keeping one (layer 0 "
                                            "and protected layers all theirs), at most 5 of the 12 can go"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["run", "dry-run"])
@pytest.mark.parametrize("command", [["search"], []], ids=["search", "one-command"])
def test_a_search_that_would_remove_blocks_is_refused_in_one_line(
    tiny_qwen3, tmp_path, monkeypatch, capsys, command, dry_run, args, message
):  # fmt: skip
    """Refused alike by the search and by ``--dry-run``, which prints no estimate for it."""
    out = tmp_path / ("p.json" if command else "m.gguf")
    skips = [] if "--skips" in args else ["--skips", "1"]
    given = [str(tiny_qwen3), *skips, *args, *dry_run, "-o", str(out)]
    code, printed, err = run_cli(monkeypatch, capsys, *command, *given)
    assert_one_line_error(code, err, message)
    assert list(tmp_path.iterdir()) == [] and "search:" not in printed


def test_skips_auto_lowers_its_most_blocks_to_the_groups_that_may_go():
    from hopscotch_export.families.qwen3 import Qwen3
    from hopscotch_export.search import SearchOptions

    options = SearchOptions(skips=8, curve=True, max_kl=1.0, unit="group").for_model(6).for_family(Qwen3, 6, 2)
    assert options.skips == 2 and options.keep_last_group  # 5 layers x 1 group: 2 blocks' worth of 2


@pytest.mark.parametrize("skip,linear", [((2,), ()), ((), (2,))], ids=["skip", "linear"])
def test_a_plan_that_removes_a_block_is_refused_by_the_converter(tiny_qwen3, tmp_path, skip, linear):
    plan = linear_plan(open_source(tiny_qwen3), skip=skip, linear=linear)
    with pytest.raises(PlanError, match=r"removes the whole attention block of layers \[2\]; .*--unit group"):
        convert(open_source(tiny_qwen3), plan, tmp_path / "m.gguf", outtype="f32")
    assert not (tmp_path / "m.gguf").exists()


def test_the_one_command_on_a_tiny_qwen3_folder(tmp_path, text_file, monkeypatch, capsys):
    """Search one block's worth of KV groups, convert, verify. Layer 3's attention does
    nothing, so both its groups would go first; its last stays, and another layer gives one."""
    model = make_planted_model(tmp_path / "hf", 6, 3, "qwen3", tied=True, head_dim=16)
    out = tmp_path / "m.gguf"
    code, _, err = run_cli(
        monkeypatch, capsys, str(model), "--skips", "1", "--unit", "group", "-o", str(out), "--data",
        str(text_file), "--samples", "4", "--heldout", "2", "--seq-len", "32", "--score-samples", "2",
        "--batch-size", "2", "--final-epochs", "1", "--device", "cpu", "--ctx", "64", "--chunks", "1", "--no-speed",
        "--threads", "1", "--parity-windows", "1",
    )  # fmt: skip
    assert code == 0, err
    plan = json.loads((tmp_path / "m.plan.json").read_text())
    assert plan["skip"] == [] and len(plan["kv_groups"]) == 2 and "3" in plan["kv_groups"]  # each keeps one group
    fields = gguf.GGUFReader(out).fields
    assert fields["general.architecture"].contents() == "openelm"
    assert sorted(fields["openelm.attention.head_count_kv"].contents()) == [1, 1, 2, 2, 2, 2]
    report = json.loads((tmp_path / "m.verify.json").read_text())
    gate = report["limits"][0]
    assert report["passed"] is True and gate["name"].startswith("parity with torch") and gate["passed"]
    assert f'TEMPLATE """{CHATML}"""' in (tmp_path / "m.Modelfile").read_text()  # SmolLM2's tokenizer: ChatML
    card = (tmp_path / "m.README.md").read_text()
    assert "KV groups cut (from layers" in card and "llama.cpp's `openelm` architecture" in card


def test_qwen3s_chat_template_gets_chatml_in_the_modelfile():
    """Qwen3's template (with its ``<think>`` handling) is ChatML to Ollama, stops included."""
    template = (
        "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + "
        "'\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- if enable_thinking "
        "is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
    )
    text = modelfile("m.gguf", template, "<|im_end|>")
    assert f'TEMPLATE """{CHATML}"""' in text
    assert 'PARAMETER stop "<|im_start|>"' in text and text.count('PARAMETER stop "<|im_end|>"') == 1


def test_the_card_names_openelm_and_the_kv_groups_cut(tiny_qwen3, tmp_path):
    """The card describes what was written: openelm, KV groups cut from two layers, no block removed."""
    from hopscotch_export.card import model_card

    plan = cut_plan(tiny_qwen3, {1: (1,), 3: (0,)})
    card = model_card(tmp_path / "m.gguf", tmp_path / "m.Modelfile", plan, None, open_source(tiny_qwen3), None,
                      "f16", "m", None)  # fmt: skip
    assert "with 2 of its 12 KV groups cut (from layers 1, 3, 16.7% of the KV cache)" in card
    assert "llama.cpp's `openelm` architecture" in card and "deci" not in card and "blocks removed" not in card
    assert "KV groups: layer 1 keeps [1]; layer 3 keeps [0]." in card


@pytest.mark.parametrize("missing", ["attn_q", "attn_k", "attn_v"])
def test_a_layer_missing_a_part_of_attn_qkv_is_refused_naming_it(missing):
    """A damaged file lacking one of a layer's q, k, v: named, not a KeyError, nor k/v dropped."""
    from hopscotch_export.converters.tensors import OutTensor, fuse_qkv

    def tensor(name: str) -> OutTensor:
        return OutTensor(name, (8, 8), gguf.GGMLQuantizationType.F32, lambda: np.zeros((8, 8), np.float32))

    names = [f"blk.{i}.{k}.weight" for i in range(2) for k in ("attn_q", "attn_k", "attn_v")]
    tensors = [tensor(n) for n in names if n != f"blk.1.{missing}.weight"]
    with pytest.raises(SourceError, match=rf"but no blk\.1\.{missing}\.weight, so its attention cannot be written"):
        fuse_qkv(tensors)
    assert [t.name for t in fuse_qkv([tensor(n) for n in names])] == ["blk.0.attn_qkv.weight", "blk.1.attn_qkv.weight"]
