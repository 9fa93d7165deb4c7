"""Granite (``GraniteForCausalLM``): its embedding, residual, attention and logits multipliers
folded into a plain ``deci`` file, checked against transformers' own Granite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from hopscotch_export.converters import convert
from hopscotch_export.search import SearchOptions, run_search
from hopscotch_export.sources import open_source
from hopscotch_export.decoder_stack import Stack
from hopscotch_export.torch_plan import apply_plan
from hopscotch_export.verify.layerwise import planned_logits
from models import make_tiny_model, small_gguf
from test_cli import assert_one_line_error, run_cli
from test_linear_layers import check_parity, linear_plan
from test_search import TINY, quiet

#: every one far from 1 (Granite 3.x: 12, 0.22, 0.0078125, 8)
MULTIPLIERS = dict(embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.0078,
                   logits_scaling=8.0)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_granite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tied, GQA, q/k/v/o biases, the multipliers above. The embedding and the final norm
    are enlarged (a tied head of std 0.02 divided by 8 gives nearly uniform logits, so a
    wrong plan would hardly show) and every bias is random (q's and o's start at zero)."""
    from transformers import AutoModelForCausalLM

    path = make_tiny_model(tmp_path_factory.mktemp("granite") / "m", "granite", tied=True, attention_bias=True,
                           **MULTIPLIERS)  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(1)
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0, 0.05)
        model.model.norm.weight.uniform_(20, 40)
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(path)
    return path


def test_the_multipliers_are_folded_into_weights_and_the_tied_head_is_written_apart(tiny_granite, tmp_path):
    source = open_source(tiny_granite)
    spec = source.spec
    assert spec.architecture == "GraniteForCausalLM" and spec.tie_embeddings
    assert spec.folded == pytest.approx(
        {"token_embd": 12.0, "attn_q": 0.0078 * 16**0.5, "attn_output": 0.22, "ffn_down": 0.22, "output": 1 / 8}
    )
    out = tmp_path / "m.gguf"
    convert(source, None, out, outtype="f32", console=quiet())
    tensors = {t.name: np.asarray(t.data) for t in GGUFReader(out).tensors}
    embed = source.hf_tensor("model.embed_tokens.weight").float32()
    np.testing.assert_allclose(tensors["token_embd.weight"], 12.0 * embed, rtol=1e-6)
    np.testing.assert_allclose(tensors["output.weight"], embed / 8, rtol=1e-6)
    q_bias = source.hf_tensor("model.layers.0.self_attn.q_proj.bias").float32()
    assert np.abs(tensors["blk.0.attn_q.bias"]).sum() == pytest.approx(0.0312 * np.abs(q_bias).sum(), rel=1e-5)
    o = source.hf_tensor("model.layers.0.self_attn.o_proj.weight").float32()
    np.testing.assert_allclose(tensors["blk.0.attn_output.weight"], 0.22 * o, rtol=1e-6)
    assert not any("scale" in k for k in GGUFReader(out).fields if k.startswith("deci."))


def test_stack_and_layerwise_reference_equal_transformers_granite_under_the_plan(tiny_granite):
    """The search's stack and verify's reference apply the embedding and logits multipliers
    that ``GraniteModel.forward`` does; the plan's hooks compose with the residual one."""
    source = open_source(tiny_granite)
    plan = linear_plan(source, skip=(2,), linear=(4,))
    model = source.load_torch(torch.float32)
    windows = [list(range(100, 132)), list(range(400, 432))]
    with apply_plan(model, plan), torch.no_grad():
        whole = model(torch.tensor(windows)).logits
        stacked = Stack(model).forward_logits(torch.tensor(windows))
    torch.testing.assert_close(stacked, whole, rtol=0, atol=1e-5 * float(whole.abs().max()))
    for a, b in zip(planned_logits(source, plan, windows, whole.shape[-1]), whole):
        np.testing.assert_allclose(a, b.numpy(), rtol=0, atol=1e-5 * float(whole.abs().max()))


@pytest.mark.parametrize("outtype,max_kl", [("f32", 1e-5), ("q8_0", 1e-3)])
def test_granite_converts_and_llama_cpp_matches_torch_under_the_plan(tiny_granite, tmp_path, outtype, max_kl):
    source = open_source(tiny_granite)
    plan = linear_plan(source, skip=(2,), linear=(4,))
    wrong = plan.with_fields(skip=(3,))  # the plan not applied as written
    good, bad = check_parity(tiny_granite, plan, wrong, outtype, tmp_path)
    print(f"granite {outtype}: KL {good:.3g} under the plan, {bad:.3g} under the wrong one")
    assert good < max_kl and bad > max(100 * good, 1e-3)


def test_a_tiny_search_runs_on_granite(tiny_granite, text_file, tmp_path):
    options = SearchOptions(skips=1, data=str(text_file), **TINY)  # type: ignore[arg-type]
    plan = run_search(open_source(tiny_granite), options, tmp_path / "plan.json", console=quiet())
    held = plan.provenance["heldout"]
    assert plan.complete and len(plan.skip) == 1 and plan.model.architecture == "GraniteForCausalLM"
    assert held["original"]["kl"] == pytest.approx(0, abs=1e-6) and held["final"]["kl"] > 0


@pytest.mark.parametrize(
    "name,why",
    [
        ("logits-zero", '"logits_scaling" is 0, expected a finite non-zero number'),
        ("hybrid", "Granite 4's hybrid layout"),
        ("moe", "mixture of experts"),
    ],
)
def test_what_granite_cannot_be_is_refused_in_one_line(name, why, tmp_path, monkeypatch, capsys):
    import transformers as t

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=128)  # fmt: skip
    configs = {
        "logits-zero": lambda: t.GraniteConfig(**small, architectures=["GraniteForCausalLM"], logits_scaling=0),
        "hybrid": lambda: t.GraniteMoeHybridConfig(**small, architectures=["GraniteMoeHybridForCausalLM"],
                                                   mamba_n_heads=8),
        "moe": lambda: t.GraniteMoeSharedConfig(**small, architectures=["GraniteMoeSharedForCausalLM"]),
    }
    folder = tmp_path / name
    configs[name]().save_pretrained(folder)
    out = tmp_path / "o.gguf"
    code, _, err = run_cli(monkeypatch, capsys, "convert", str(folder), "-o", str(out))
    assert_one_line_error(code, err, why)
    assert not out.exists()


def test_a_granite_gguf_is_refused_saying_why(tmp_path, monkeypatch, capsys):
    """llama.cpp's ``granite`` GGUFs keep the multipliers as keys; Granite is read from its
    Hugging Face folder, and such a file is told so, not taken for an unknown family."""
    gguf = small_gguf(tmp_path / "granite.gguf", "granite", {"token_embd.weight": (4, 8)}, block_count=1)
    out = tmp_path / "o.gguf"
    code, _, err = run_cli(monkeypatch, capsys, "convert", str(gguf), "-o", str(out))
    assert_one_line_error(code, err, "is 'granite': llama.cpp's granite GGUFs keep Granite's four multipliers",
                          "Hugging Face folder")  # fmt: skip
    assert "not a family this tool knows" not in err
    assert not out.exists()
