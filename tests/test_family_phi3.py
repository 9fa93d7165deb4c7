"""Phi-3 / Phi-4: fused ``qkv_proj`` and ``gate_up_proj`` split for ``deci``, a sliding
window that limits the context, longrope and partial rotary embeddings refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from safetensors.numpy import load_file

from hopscotch_export.errors import SourceError
from hopscotch_export.ollama import modelfile
from hopscotch_export.plan import load_plan
from hopscotch_export.search import SearchOptions, run_search
from hopscotch_export.sources import open_source
from llama_utils import llama_logits, mean_kl
from models import make_tiny_model, save_gguf, small_gguf
from test_cli import assert_one_line_error, run_cli
from test_linear_layers import check_parity, linear_plan
from test_search import TINY, quiet


@pytest.fixture(scope="module")
def tiny_phi3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untied Phi-3 with GQA and a sliding window shorter than its context (as Phi-3-mini-4k)."""
    return make_tiny_model(tmp_path_factory.mktemp("phi3") / "m", "phi3", sliding_window=1024)


def test_fused_projections_are_split_by_rows(tiny_phi3):
    source = open_source(tiny_phi3)
    weights = load_file(tiny_phi3 / "model.safetensors")
    qkv, gate_up = (weights[f"model.layers.1.{n}.weight"] for n in ("self_attn.qkv_proj", "mlp.gate_up_proj"))
    parts = {t.name: t for t in source.tensors() if t.name.startswith("blk.1.")}
    assert not any("qkv" in name for name in parts)
    for name, rows in [("attn_q", qkv[:64]), ("attn_k", qkv[64:96]), ("attn_v", qkv[96:]),
                       ("ffn_gate", gate_up[:128]), ("ffn_up", gate_up[128:])]:  # fmt: skip
        assert np.array_equal(parts[f"blk.1.{name}.weight"].float32(), rows)
    # verify's torch layers read the fused tensors by their Hugging Face names, stacked again
    fused = source.hf_tensor("model.layers.1.self_attn.qkv_proj.weight")
    assert np.array_equal(fused.float32(), qkv) and np.array_equal(fused.rows(50, 110), qkv[50:110])


@pytest.mark.parametrize("outtype,max_kl", [("f32", 1e-5), ("q8_0", 1e-3)])
def test_phi3_converts_and_llama_cpp_matches_torch_under_the_plan(tiny_phi3, tmp_path, outtype, max_kl):
    source = open_source(tiny_phi3)
    assert source.spec.architecture == "Phi3ForCausalLM" and source.spec.context_length == 1024
    assert "limited to 1024 tokens (from 2048)" in (source.spec.notice or "")
    plan = linear_plan(source, skip=(2,), linear=(4,))
    wrong = plan.with_fields(skip=(3,))  # the plan not applied as written
    good, bad = check_parity(tiny_phi3, plan, wrong, outtype, tmp_path)
    print(f"phi3 {outtype}: parity KL {good:.3g}, wrong plan {bad:.3g}")
    assert good < max_kl and bad > max(100 * good, 1e-3)
    assert GGUFReader(tmp_path / "m.gguf").fields["deci.context_length"].contents() == 1024


def test_a_folder_named_phi3_with_a_gpt2_style_vocabulary_loads_in_llama_cpp(tiny_phi3, tmp_path):
    """llama.cpp applies Phi-3 token rules to a file whose general.name has "phi3" or "phi-3",
    and fails to load when the vocabulary lacks the tokens they name (SmolLM2's GPT-2 style
    one has no </s>, <s>, <unk>); the converter takes the name from the folder. The name it
    writes cannot trigger them, and the file matches torch."""
    import shutil

    import torch

    from hopscotch_export.converters import convert

    folder = tmp_path / "Phi3-mini-bpe"
    shutil.copytree(tiny_phi3, folder)
    out = tmp_path / "m.gguf"
    convert(open_source(folder), None, out, outtype="f32")
    assert GGUFReader(out).fields["general.name"].contents() == "Phi 3-mini-bpe"
    ids = list(range(100, 140))
    with torch.no_grad():
        want = open_source(folder).load_torch(torch.float32)(torch.tensor([ids])).logits[0].double().numpy()
    assert mean_kl(want, llama_logits(out, ids)) < 1e-5
    convert(open_source(folder), None, out, outtype="f32", name="my phi-3 and PHI3", force=True)
    assert GGUFReader(out).fields["general.name"].contents() == "my phi 3 and PHI 3"


def test_a_phi3_name_is_kept_for_a_vocabulary_with_the_tokens_its_rules_need():
    from hopscotch_export.converters.metadata import _not_phi3

    spm = {"<unk>", "<s>", "</s>", "<|endoftext|>", "<|user|>"}  # Phi-3-mini's own
    assert _not_phi3("Phi-3-mini-4k-instruct", spm) == "Phi-3-mini-4k-instruct"
    assert _not_phi3("Phi-3-mini-4k-instruct", spm - {"<unk>"}) == "Phi 3-mini-4k-instruct"
    assert _not_phi3("phi-4", set()) == "phi-4"


def test_a_tiny_search_runs_on_phi3(tiny_phi3, tmp_path, text_file):
    out = tmp_path / "plan.json"
    plan = run_search(open_source(tiny_phi3), SearchOptions(skips=1, data=str(text_file), **TINY), out, console=quiet())
    assert plan.complete and len(plan.skip) == 1 and load_plan(out).skip == plan.skip


_SMALL = dict(architectures=["Phi3ForCausalLM"], model_type="phi3", hidden_size=32, intermediate_size=64,
              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
              max_position_embeddings=8192)  # fmt: skip
_LONGROPE = {"long_factor": [1.0] * 4, "short_factor": [1.0] * 4, "original_max_position_embeddings": 4096}


@pytest.mark.parametrize(
    "config,why",
    [
        ({"rope_scaling": {"type": "su", **_LONGROPE}}, "rope scaling 'su'"),  # Phi-3-mini-128k's own config.json
        ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, **_LONGROPE}}, "rope scaling 'longrope'"),
        ({"partial_rotary_factor": 0.75}, "partial_rotary_factor=0.75 rotates only part of each head"),  # Phi-4-mini
    ],
)
def test_what_deci_cannot_hold_is_refused_in_one_line(config, why, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**_SMALL, **config}))
    with pytest.raises(SourceError, match="deci"):
        open_source(folder)
    out = tmp_path / "o.gguf"
    code, _, err = run_cli(monkeypatch, capsys, "convert", str(folder), "-o", str(out))
    assert_one_line_error(code, err, why, "Phi-3-mini-4k-instruct", "Supported: ")
    assert not out.exists()


def write_phi3_gguf(hf_dir: Path, out: Path, context: int, window: int) -> Path:
    """A ``phi3`` GGUF as llama.cpp's converter writes one: fused ``attn_qkv`` and ``ffn_up``
    (gate rows, then up rows) in transformers' row order."""
    from dataclasses import replace

    import gguf

    from hopscotch_export.converters.metadata import write_hparams
    from hopscotch_export.converters.vocab import add_hf_tokenizer

    spec = open_source(hf_dir).spec
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.PHI3, spec.n_layers)
    w = gguf.GGUFWriter(out, "phi3")
    write_hparams(w, replace(spec, context_length=context), ())
    w.add_sliding_window(window)
    add_hf_tokenizer(w, hf_dir, spec.vocab_size)
    for hf_name, value in load_file(hf_dir / "model.safetensors").items():
        w.add_tensor(names.get_name(hf_name, try_suffixes=(".weight", ".bias")), value)
    save_gguf(w)
    return out


@pytest.fixture(scope="module")
def phi3_gguf(tiny_phi3: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phi3_gguf(tiny_phi3, tmp_path_factory.mktemp("phi3gguf") / "phi3.gguf", 2048, 1024)


def test_a_phi3_gguf_is_read_split_and_limited_to_its_window(phi3_gguf, tiny_phi3):
    import torch

    source = open_source(phi3_gguf)
    assert source.spec.context_length == 1024 and "limited to 1024 tokens (from 2048)" in (source.spec.notice or "")
    hf = open_source(tiny_phi3)
    want = {t.name: t.float32() for t in hf.tensors()}
    got = {t.name: t.float32() for t in source.tensors()}
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    # the torch model built from the GGUF (fused tensors stacked again) is the Hugging Face one,
    # and llama.cpp's own phi3 graph agrees: the file has the layout llama.cpp reads
    ids = list(range(100, 140))
    with torch.no_grad():
        from_gguf = source.load_torch(torch.float32)(torch.tensor([ids])).logits[0].double().numpy()
        from_hf = hf.load_torch(torch.float32)(torch.tensor([ids])).logits[0].double().numpy()
    np.testing.assert_allclose(from_gguf, from_hf, atol=1e-5)
    assert mean_kl(from_hf, llama_logits(phi3_gguf, ids)) < 1e-5


def test_a_phi3_gguf_converts_and_matches_torch_under_the_plan(phi3_gguf, tmp_path):
    plan = linear_plan(open_source(phi3_gguf), skip=(2,), linear=(4,))
    good, bad = check_parity(phi3_gguf, plan, plan.with_fields(skip=(3,)), "f32", tmp_path)
    print(f"phi3 GGUF source f32: parity KL {good:.3g}, wrong plan {bad:.3g}")
    assert good < 1e-5 and bad > max(100 * good, 1e-3)


def _small_phi3_gguf(path: Path, rope_dims: int, factors: bool) -> Path:
    """A one-block ``phi3`` GGUF (head size 4) with a rotary dimension of ``rope_dims`` and,
    when ``factors``, longrope's factor tensors."""
    shapes = {"token_embd.weight": (4, 8), "blk.0.attn_qkv.weight": (24, 8), "blk.0.ffn_up.weight": (32, 8)}
    if factors:
        shapes |= {"rope_factors_long.weight": (2,), "rope_factors_short.weight": (2,)}
    return small_gguf(path, "phi3", shapes, block_count=1, context_length=64, embedding_length=8,
                      feed_forward_length=16, head_count=2, rope_dimension_count=rope_dims)  # fmt: skip


@pytest.mark.parametrize(
    "rope_dims,factors,why",
    [(4, True, "has rope_factors_long.weight: its rope scaling switches between two sets"),
     (2, False, "phi3.rope.dimension_count=2 (of a head of 4) rotates only part of each head")],
)  # fmt: skip
def test_a_phi3_gguf_with_rope_deci_cannot_express_is_refused(rope_dims, factors, why, tmp_path, monkeypatch, capsys):
    gguf_path = _small_phi3_gguf(tmp_path / "p.gguf", rope_dims, factors)
    assert open_source(_small_phi3_gguf(tmp_path / "plain.gguf", 4, False)).spec.head_dim == 4  # the rest is sound
    out = tmp_path / "o.gguf"
    code, _, err = run_cli(monkeypatch, capsys, "convert", str(gguf_path), "-o", str(out))
    assert_one_line_error(code, err, why, "Phi3ForCausalLM (phi3)")
    assert not out.exists()


def test_phi3_and_phi4_get_their_own_chat_format_in_the_modelfile():
    phi3 = ("{% for message in messages %}{{'<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n'}}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")  # fmt: skip
    text = modelfile("m.gguf", phi3, "<|endoftext|>")
    assert "<|{{ .Role }}|>\n{{ .Content }}<|end|>" in text and 'PARAMETER stop "<|end|>"' in text
    phi4 = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + "
            "'<|im_end|>'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}")
    text = modelfile("m.gguf", phi4, "<|endoftext|>")
    assert "<|im_start|>{{ .Role }}<|im_sep|>{{ .Content }}<|im_end|>" in text and "{{ .Role }}\n" not in text
