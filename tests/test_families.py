"""Model families: Mistral (with and without a sliding window), DeepSeek-R1 distills' chat
format, and one-line refusals of what deci cannot hold (experts, q/k norms, Gemma)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gguf import GGUFReader, RopeScalingType

from hopscotch_export.errors import SourceError
from hopscotch_export.families import REGISTRY, family_for
from hopscotch_export.ollama import modelfile
from hopscotch_export.sources import open_source
from models import make_tiny_model, small_gguf
from test_cli import assert_one_line_error, run_cli
from test_linear_layers import check_parity, linear_plan


@pytest.fixture(scope="module")
def tiny_mistral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("mistral") / "m", "mistral", sliding_window=None)


@pytest.mark.parametrize("outtype,max_kl", [("f32", 1e-5), ("q8_0", 1e-3)])
def test_mistral_converts_and_llama_cpp_matches_torch_under_the_plan(tiny_mistral, tmp_path, outtype, max_kl):
    source = open_source(tiny_mistral)
    assert source.spec.architecture == "MistralForCausalLM" and source.spec.notice is None
    plan = linear_plan(source, skip=(2,), linear=(4,))
    wrong = plan.with_fields(skip=(3,))  # the plan not applied as written
    good, bad = check_parity(tiny_mistral, plan, wrong, outtype, tmp_path)
    assert good < max_kl and bad > max(100 * good, 1e-3)


def test_a_sliding_window_limits_the_exported_context(tmp_path, monkeypatch, capsys):
    path = make_tiny_model(tmp_path / "m", "mistral", layers=3, sliding_window=64)
    spec = open_source(path).spec
    assert spec.context_length == 64 and "limited to 64 tokens (from 2048)" in (spec.notice or "")
    out = tmp_path / "m.gguf"
    code, _, err = run_cli(monkeypatch, capsys, "convert", str(path), "-o", str(out), "--outtype", "f32")
    words = " ".join(err.split())  # the console wraps lines where the temporary path's length puts them
    assert code == 0 and "note:" in err and "attention slides over 64 tokens" in words
    assert GGUFReader(out).fields["deci.context_length"].contents() == 64


def _config_folder(path: Path, config: object) -> Path:
    config.save_pretrained(path)  # type: ignore[attr-defined]
    return path


@pytest.mark.parametrize(
    "name,why",
    [
        ("qwen3", "untied embeddings (its own lm_head: Qwen3-8B and larger)"),
        ("qwen3moe", "a mixture of experts; deci, and openelm that holds dense Qwen3, have one MLP per layer"),
        ("olmo2", "per-head q/k norms"),
        ("gemma2", "soft-capping"),
        ("mixtral", "mixture of experts"),
        ("llama-experts", "mixture of experts (num_local_experts=4)"),
        ("gpt2", "not a family this tool knows"),
    ],
)
def test_folders_deci_cannot_hold_are_refused_in_one_line(name, why, tmp_path, monkeypatch, capsys):
    import transformers as t

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=128)
    configs = {
        "qwen3": lambda: t.Qwen3Config(**small, architectures=["Qwen3ForCausalLM"]),  # untied by default
        "qwen3moe": lambda: t.Qwen3MoeConfig(**small, architectures=["Qwen3MoeForCausalLM"]),
        "olmo2": lambda: t.Olmo2Config(**small, architectures=["Olmo2ForCausalLM"]),
        "gemma2": lambda: t.Gemma2Config(**small, architectures=["Gemma2ForCausalLM"]),
        "mixtral": lambda: t.MixtralConfig(**small, architectures=["MixtralForCausalLM"]),
        "llama-experts": lambda: t.LlamaConfig(**small, architectures=["LlamaForCausalLM"], num_local_experts=4),
        "gpt2": lambda: t.GPT2Config(n_embd=32, n_layer=2, n_head=4, architectures=["GPT2LMHeadModel"]),
    }
    folder = _config_folder(tmp_path / name, configs[name]())
    out = tmp_path / "o.gguf"
    code, _, err = run_cli(monkeypatch, capsys, "convert", str(folder), "-o", str(out))
    assert_one_line_error(code, err, why, "Supported: LlamaForCausalLM (llama)", "Qwen2ForCausalLM (qwen2)")
    assert not out.exists()


def _mixtral_style_gguf(path: Path) -> Path:
    """A ``llama`` GGUF with expert tensors and an expert count, as Mixtral's files are."""
    shapes = {"token_embd.weight": (4, 8), "blk.0.attn_q.weight": (8, 8), "blk.0.ffn_down_exps.weight": (4, 8, 16),
              "output_norm.weight": (8,)}  # fmt: skip
    return small_gguf(path, "llama", shapes, block_count=1, context_length=64, embedding_length=8,
                      feed_forward_length=16, head_count=2, expert_count=4)  # fmt: skip


def test_a_mixture_of_experts_gguf_that_says_llama_is_refused(tmp_path, monkeypatch, capsys):
    gguf = _mixtral_style_gguf(tmp_path / "mixtral.gguf")
    with pytest.raises(SourceError, match="is a mixture of experts \\(llama.expert_count=4\\)"):
        open_source(gguf)
    out = tmp_path / "o.gguf"
    code, _, err = run_cli(monkeypatch, capsys, "convert", str(gguf), "-o", str(out))
    assert_one_line_error(code, err, "mixture of experts", "deci has one MLP per layer")
    assert not out.exists()


def test_every_registered_family_answers_for_its_names_and_only_them():
    for name, family in REGISTRY.items():
        assert name in family.hf_architectures + family.gguf_archs
        assert family_for(name) is family
    assert {f.name() for f in REGISTRY.values()} >= {"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"}


def test_deepseek_r1_distills_get_their_own_chat_format_in_the_modelfile():
    template = (
        "{% for message in messages %}{% if message['role'] == 'user' %}{{'<｜User｜>' + message['content']}}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
    )
    text = modelfile("m.gguf", template, "<｜end▁of▁sentence｜>")
    assert "<｜User｜>{{ .Content }}" in text and text.count('PARAMETER stop "<｜end▁of▁sentence｜>"') == 1
    assert "<|im_start|>" not in text
    # the Qwen2-based distill's template also mentions no ChatML: it is not mistaken for Qwen's format
    assert json.dumps(text)


#: so that a search that does start (before the refusal was moved) ends in seconds
_TINY_BUDGET = ("--samples", "4", "--heldout", "2", "--seq-len", "16", "--score-samples", "2", "--final-epochs", "1",
                "--max-new-tokens", "8", "--device", "cpu", "--no-verify")  # fmt: skip


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048},  # Qwen2.5's long context
        {"type": "dynamic", "factor": 2.0},
        {"rope_type": "longrope", "long_factor": [1.0] * 4, "short_factor": [1.0] * 4,
         "original_max_position_embeddings": 2048},
    ],
)  # fmt: skip
def test_rope_deci_cannot_carry_is_refused_before_the_search(rope, tmp_path, monkeypatch, capsys):
    """The family refuses it when the model is opened, in the line the converter gives."""
    kind = rope.get("rope_type", rope.get("type"))
    folder = make_tiny_model(tmp_path / "m", layers=3, hidden=32, intermediate=64, rope_scaling=rope)
    out = tmp_path / "o.gguf"
    code, _, err = run_cli(monkeypatch, capsys, str(folder), "--skips", "1", "-o", str(out), *_TINY_BUDGET)
    assert_one_line_error(code, err, f"rope scaling {kind!r} is not supported yet; supported: llama3, linear")
    assert "search" not in err and not any(tmp_path.glob("o.*"))  # no stage started, nothing written


@pytest.mark.parametrize(
    "keys,why",
    [
        (dict(rope_scaling_type=RopeScalingType.YARN, rope_scaling_factor=4.0),
         "rope scaling 'yarn' is not supported yet; supported: llama3, linear"),
        (dict(rope_scaling_attn_factors=0.5), "llama.rope.scaling.attn_factor=0.5 scales rotated q and k"),
    ],
)  # fmt: skip
def test_a_gguf_with_rope_torch_cannot_reproduce_is_refused_before_the_search(keys, why, tmp_path, monkeypatch,
                                                                                capsys):  # fmt: skip
    """llama.cpp would apply it to the file and torch would not: refused, not copied."""
    shapes = {"token_embd.weight": (4, 8), "blk.0.attn_q.weight": (8, 8), "output_norm.weight": (8,)}
    hparams = dict(block_count=1, context_length=64, embedding_length=8, feed_forward_length=16, head_count=2)
    plain = small_gguf(tmp_path / "plain.gguf", "llama", shapes, **hparams)
    assert open_source(plain).spec.rope_scaling is None  # the rest is sound
    gguf = small_gguf(tmp_path / "scaled.gguf", "llama", shapes, **hparams, **keys)
    out = tmp_path / "o.gguf"
    code, _, err = run_cli(monkeypatch, capsys, str(gguf), "--skips", "1", "-o", str(out), *_TINY_BUDGET)
    assert_one_line_error(code, err, why)
    assert "search" not in err and not any(tmp_path.glob("o.*"))


def test_a_tokenizer_the_converter_refuses_is_refused_before_the_search(tmp_path, monkeypatch, capsys):
    """The converter's tokenizer refusals come before the one command's search, not after it."""
    folder = make_tiny_model(tmp_path / "m", layers=3, hidden=32, intermediate=64)
    for name in ("tokenizer.model", "vocab.json", "merges.txt"):
        (folder / name).unlink(missing_ok=True)
    (folder / "tokenizer.json").write_text(
        json.dumps({"model": {"type": "WordPiece", "vocab": {"a": 0}}, "decoder": None, "pre_tokenizer": None})
    )
    out = tmp_path / "o.gguf"
    code, _, err = run_cli(monkeypatch, capsys, str(folder), "--skips", "1", "-o", str(out), *_TINY_BUDGET)
    assert_one_line_error(code, err, "is a WordPiece tokenizer; only BPE")
    assert "search" not in err and not any(tmp_path.glob("o.*"))
