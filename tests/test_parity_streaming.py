"""Layer-by-layer parity equals the whole-model torch path, and row reads equal whole reads.

The reference here is the previous implementation of the parity check: the whole source
model loaded by transformers in float32 under ``apply_plan``.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf.quants import dequantize

from hopscotch_export.converters.convert import convert
from hopscotch_export.families import family_for
from hopscotch_export.plan import Plan
from hopscotch_export.estimates import GiB, weight_bytes
from hopscotch_export.sources import ModelSource, open_source
from hopscotch_export.sources.layout import read_rows
from hopscotch_export.torch_plan import apply_plan
from hopscotch_export.verify.data import load_text
from hopscotch_export.verify.divergence import log_softmax, token_kl
from hopscotch_export.verify.layerwise import planned_logits
from hopscotch_export.verify.parity import Parity, _all_logits, parity_needs, torch_parity
from hopscotch_export.verify.perplexity import make_windows
from hopscotch_export.verify.llama_model import LlamaSession
from models import make_tiny_model

Q = gguf.GGMLQuantizationType


def scaled_plan(source: ModelSource, skip: tuple[int, ...], channel: bool = False) -> Plan:
    """Scales far from 1, per channel on odd layers when ``channel``."""
    ref = source.model_ref()
    rng = np.random.default_rng(1)

    def scale(i: int) -> float | list[float]:
        return rng.uniform(0.5, 1.5, ref.hidden_size).tolist() if channel and i % 2 else float(rng.uniform(0.5, 1.5))

    return Plan(ref, skip, tuple(scale(i) for i in range(ref.n_layers)), tuple(scale(i) for i in range(ref.n_layers)))


def mean_kl(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    n = got[0].shape[1]
    return float(np.concatenate([token_kl(log_softmax(e[:, :n]), log_softmax(g)) for e, g in zip(expected, got)]).mean())


def check_against_whole_model(
    spec: Path | str, skip: tuple[int, ...], channel: bool, tmp_path: Path, ctx: int, n: int, outtype: str = "f32"
) -> Parity:
    """Convert ``spec`` under a plan; ``torch_parity`` on the result gives the mean KL of the
    old whole-model path, and (for Hugging Face sources, where it is cheap) the same logits."""
    source = open_source(spec)
    plan = scaled_plan(source, skip, channel)
    plan_path, gguf_path = tmp_path / "plan.json", tmp_path / "m.gguf"
    plan.save(plan_path)
    convert(source, plan, gguf_path, outtype=outtype)
    model = source.load_torch(torch.float32)  # the old path: the whole model in float32
    with LlamaSession(gguf_path, n_ctx=ctx, n_threads=1) as s:
        windows = make_windows(s.tokenize(load_text(None).text), ctx, s.bos if s.add_bos else None, n)
        with apply_plan(model, plan), torch.no_grad():
            whole = [model(torch.tensor([w])).logits[0].numpy() for w in windows]
        if source.kind == "hf":
            for a, b in zip(planned_logits(source, plan, windows, s.n_vocab), whole):
                np.testing.assert_allclose(a, b[:, : a.shape[1]], rtol=0, atol=1e-5 * np.abs(b).max())
        steps: list[tuple[int, int]] = []
        parity = torch_parity(s, spec, plan_path, windows, lambda done, total: steps.append((done, total)))
        old_kl = mean_kl(whole, [_all_logits(s, w) for w in windows])
    assert parity.mean_kl == pytest.approx(old_kl, rel=1e-4, abs=1e-9)
    assert parity.tokens == n * ctx
    layers = source.spec.n_layers
    assert steps == [(i, layers + n) for i in range(1, layers + n + 1)]
    return parity


@pytest.mark.parametrize("fixture,skip,channel", [("tiny_llama", (2, 4), False), ("tiny_qwen2", (1, 3), True)])
def test_streaming_parity_equals_whole_model(request, tmp_path, fixture, skip, channel):
    """tiny_llama: untied, GQA, Llama 3 rope scaling; tiny_qwen2: tied, q/k/v biases."""
    parity = check_against_whole_model(request.getfixturevalue(fixture), skip, channel, tmp_path, ctx=64, n=2)
    assert parity.mean_kl < 1e-4 and parity.same_top > 0.98  # an f32 file: only float rounding


def write_qwen2_gguf(hf_dir: Path, out: Path) -> None:
    """A ``qwen2`` GGUF as llama.cpp's converter writes one: scalar hyper-parameters (which
    transformers' GGUF config reader needs), q/k rows in rotate-half order, F32 tensors."""
    from hopscotch_export.converters.vocab import add_hf_tokenizer

    s = open_source(hf_dir).spec
    w = gguf.GGUFWriter(out, "qwen2")
    w.add_context_length(s.context_length)
    w.add_embedding_length(s.hidden_size)
    w.add_block_count(s.n_layers)
    w.add_feed_forward_length(s.intermediate_size)
    w.add_head_count(s.n_heads)
    w.add_head_count_kv(s.n_kv_heads)
    w.add_layer_norm_rms_eps(s.rms_eps)
    w.add_rope_freq_base(s.rope_theta)
    add_hf_tokenizer(w, hf_dir, s.vocab_size)
    for t in open_source(hf_dir).tensors():
        w.add_tensor(t.name, t.float32())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_streaming_parity_on_a_qwen2_gguf_source(tiny_qwen2, tmp_path):
    """A ``qwen2`` GGUF (q/k in rotate-half order): its config and tensors come from the file."""
    src = tmp_path / "q.gguf"
    write_qwen2_gguf(tiny_qwen2, src)
    assert check_against_whole_model(src, (2,), True, tmp_path, ctx=32, n=1).mean_kl < 1e-4


@pytest.mark.slow
def test_streaming_parity_on_smollm2(smollm2, tmp_path):
    """The real Q4_1 ``llama`` GGUF: tied head, q/k rows stored in llama.cpp's order."""
    parity = check_against_whole_model(smollm2, (3, 9), False, tmp_path, ctx=64, n=1, outtype="source")
    assert parity.mean_kl < 2e-2  # llama.cpp's Q4_1 arithmetic against float32 torch


RANGES = [(0, 1), (3, 17), (-5, None), (0, None), (7, 7)]


def check_rows(t) -> None:
    whole = t.float32()
    n = t.shape[0]
    for a, b in RANGES:
        start, stop = a % n if a < 0 else a, n if b is None else b
        np.testing.assert_array_equal(t.rows(start, stop), whole[start:stop], err_msg=f"{t.name} {start}:{stop}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_rows_equal_whole_tensor_safetensors(tmp_path, dtype):
    src = open_source(make_tiny_model(tmp_path, layers=1, dtype=dtype))
    for t in src.tensors():
        assert t.qtype == {torch.float32: Q.F32, torch.float16: Q.F16, torch.bfloat16: Q.BF16}[dtype]
        check_rows(t)
    with pytest.raises(ValueError):
        t.rows(0, t.shape[0] + 1)


TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]


def test_rows_equal_whole_tensor_gguf_types(tmp_path):
    """Row reads at the file offsets gguf-py's reader reports, for every type we read."""
    from test_quant_scale import make_tensor

    rng = np.random.default_rng(0)
    path = tmp_path / "types.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for qt in TYPES:
        w.add_tensor(qt.name, make_tensor(qt, (24, 512), rng), raw_dtype=None if qt in (Q.F32, Q.F16) else qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tensors = gguf.GGUFReader(str(path)).tensors
    assert sorted(t.tensor_type for t in tensors) == sorted(TYPES)
    for t in tensors:
        whole = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        for start, stop in ((0, 1), (5, 19), (20, 24)):
            got = read_rows(path, t.data_offset, (24, 512), t.tensor_type, start, stop)
            np.testing.assert_array_equal(got, whole[start:stop], err_msg=t.name)


def test_rows_of_smollm2_tensors_in_hf_layout(smollm2):
    """Q8_0 embedding, Q4_1 q/k with llama.cpp's row order undone, F32 norm."""
    src = open_source(smollm2)
    names = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
             "model.layers.0.self_attn.k_proj.weight", "model.layers.0.input_layernorm.weight"]
    for name in names:
        check_rows(src.hf_tensor(name))
    q = src.hf_tensor(names[1])
    assert q.qtype == Q.Q4_1 and not src.q_k_rope_neox
    stored = next(t for t in src.tensors() if t.name == "blk.0.attn_q.weight").float32()
    assert not np.array_equal(q.float32(), stored)  # reordered ...
    np.testing.assert_array_equal(np.sort(q.float32(), axis=0), np.sort(stored, axis=0))  # ... rows only


def test_parity_needs_are_bounded_by_one_layer():
    """Llama 3 8B shapes: a few GiB, not the 32 GB of the model in float32."""
    from hopscotch_export.families import ModelSpec

    spec = ModelSpec(family_for("llama"), 32, 4096, 14336, 32, 8, 128, 128256, 1e-5, 5e5, 8192, False)
    (need,) = parity_needs(spec, windows=2, tokens=512)
    assert need.where == "ram"
    assert 2 * GiB < need.bytes < min(4 * GiB, weight_bytes(spec, "float32") / 8)
    assert parity_needs(spec, 4, 512)[0].bytes > need.bytes
    assert parity_needs(spec, 2, 4096)[0].bytes == need.bytes  # at most PARITY_TOKENS are compared
