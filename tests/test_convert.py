"""The converter is correct when llama.cpp's logits equal the torch model under the plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hopscotch_export.converters.convert import convert
from hopscotch_export.plan import Plan
from hopscotch_export.sources import open_source
from hopscotch_export.torch_plan import apply_plan
from llama_utils import llama_logits, mean_kl
from models import smollm2_tokenizer

TEXT = "The capital of France is Paris. def add(a, b):\n    return a + b  # 1234 apples\n"


def tokens() -> list[int]:
    tok = smollm2_tokenizer()
    return [tok.bos_token_id or 1, *tok.encode(TEXT, add_special_tokens=False)]


def random_plan(source_path: Path, skip: tuple[int, ...], channel: bool = False, seed: int = 0) -> Plan:
    """A plan with scales far from 1 (0.3..2.0, some layers per channel)."""
    src = open_source(source_path)
    ref = src.model_ref()
    rng = np.random.default_rng(seed)
    n, h = ref.n_layers, ref.hidden_size

    def scale(i: int) -> float | list[float]:
        if channel and i % 2:
            return rng.uniform(0.3, 2.0, h).tolist()
        return float(rng.uniform(0.3, 2.0))

    return Plan(ref, skip, tuple(scale(i) for i in range(n)), tuple(scale(i) for i in range(n)))


def torch_logits(source_path: Path, plan: Plan | None, toks: list[int]) -> np.ndarray:
    model = open_source(source_path).load_torch(torch.float32)
    ids = torch.tensor([toks])
    with torch.no_grad():
        if plan is None:
            return model(ids).logits[0].double().numpy()
        with apply_plan(model, plan):
            return model(ids).logits[0].double().numpy()


@pytest.mark.parametrize(
    "fixture,skip,channel",
    [("tiny_llama", (2, 4), False), ("tiny_qwen2", (1, 3, 5), True), ("tiny_llama_bias", (3,), True)],
)
def test_f32_matches_torch_under_plan(request, tmp_path, fixture, skip, channel):
    path = request.getfixturevalue(fixture)
    plan = random_plan(path, skip, channel)
    out = tmp_path / "m.gguf"
    summary = convert(open_source(path), plan, out, outtype="f32")
    biases = {"tiny_llama": 0, "tiny_qwen2": 3, "tiny_llama_bias": 4}[fixture]
    assert summary.tensors_dropped == len(skip) * (5 + biases)  # attn_norm, q, k, v, o (+ biases)
    toks = tokens()
    got = llama_logits(out, toks)
    want = torch_logits(path, plan, toks)
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=0)
    assert (got.argmax(-1) == want.argmax(-1)).all()
    # the check bites: the torch model without the plan is far from the converted file
    unplanned = torch_logits(path, None, toks)
    assert mean_kl(unplanned, got) > 100 * max(mean_kl(want, got), 1e-6)


@pytest.mark.parametrize("outtype,max_kl", [("f16", 1e-3), ("bf16", 5e-3), ("q8_0", 5e-3), ("q4_k_m", 0.2)])
def test_lower_precision_stays_close(tiny_llama, tmp_path, outtype, max_kl):
    plan = random_plan(tiny_llama, (2, 5))
    out = tmp_path / f"m-{outtype}.gguf"
    convert(open_source(tiny_llama), plan, out, outtype=outtype)
    toks = tokens()
    kl = mean_kl(torch_logits(tiny_llama, plan, toks), llama_logits(out, toks))
    assert kl < max_kl


def write_qwen2_gguf(hf_dir: Path, out: Path) -> None:
    """A plain ``qwen2`` GGUF of a Hugging Face folder (NEOX q/k order, as llama.cpp writes)."""
    import gguf

    from hopscotch_export.converters.metadata import write_hparams
    from hopscotch_export.converters.vocab import add_hf_tokenizer

    src = open_source(hf_dir)
    s = src.spec
    w = gguf.GGUFWriter(out, "qwen2")
    write_hparams(w, s, ())  # per-layer head counts are read by every architecture
    add_hf_tokenizer(w, hf_dir, s.vocab_size)
    for t in src.tensors():
        w.add_tensor(t.name, t.float32())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("ftype", ["MOSTLY_Q8_0", "MOSTLY_Q5_1"])
def test_quantized_qwen2_gguf_source_keeps_types(tiny_qwen2, tmp_path, ftype):
    """A quantized ``qwen2`` GGUF: q/k rows permuted and scales folded without requantizing."""
    from gguf import LlamaFileType

    from hopscotch_export.converters.quantize import llama_quantize

    f32 = tmp_path / "q.f32.gguf"
    write_qwen2_gguf(tiny_qwen2, f32)
    q8 = tmp_path / "q.quant.gguf"
    llama_quantize(f32, q8, LlamaFileType[ftype])
    toks = tokens()
    source_q8 = llama_logits(q8, toks)

    src = open_source(q8)
    plan = random_plan(q8, (2, 4), channel=True)
    out = tmp_path / "deci.gguf"
    convert(src, plan, out, outtype="source")
    got = llama_logits(out, toks)

    from hopscotch_export.summary import gguf_tensor_types

    written, original = gguf_tensor_types(out), gguf_tensor_types(q8)
    assert written == {k: v for k, v in original.items() if k in written}
    assert set(original) - set(written) == {
        f"blk.{i}.{t}" for i in plan.skip for t in (
            "attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight",
            "attn_q.bias", "attn_k.bias", "attn_v.bias",
        )
    }
    # reference: the f32 HF model under the same plan; the floor is the unmodified Q8_0 file
    floor = mean_kl(torch_logits(tiny_qwen2, None, toks), source_q8)
    kl = mean_kl(torch_logits(tiny_qwen2, plan.with_fields(model=open_source(tiny_qwen2).model_ref()), toks), got)
    assert kl < 3 * floor + 1e-4
    assert (got[-1].argmax() == source_q8[-1].argmax()) or kl < 1e-3


def test_empty_plan_on_real_gguf_is_identical(smollm2, tmp_path):
    src = open_source(smollm2)
    out = tmp_path / "smol.gguf"
    convert(src, Plan.identity(src.model_ref()), out, outtype="source")
    toks = tokens()
    np.testing.assert_array_equal(llama_logits(out, toks), llama_logits(smollm2, toks))


@pytest.mark.slow
def test_smollm2_plan_matches_torch_reference(smollm2, tmp_path):
    src = open_source(smollm2)
    plan = random_plan(smollm2, (5, 11, 19, 26)).with_fields(
        attn=tuple(float(x) for x in np.linspace(0.8, 1.2, 30)), mlp=tuple(float(x) for x in np.linspace(1.1, 0.9, 30))
    )
    out = tmp_path / "smol4.gguf"
    convert(src, plan, out, outtype="source")
    toks = tokens()
    floor = mean_kl(torch_logits(smollm2, None, toks), llama_logits(smollm2, toks))
    got = llama_logits(out, toks)
    planned = torch_logits(smollm2, plan, toks)
    kl = mean_kl(planned, got)
    assert kl < 2 * floor + 1e-3
    assert mean_kl(torch_logits(smollm2, None, toks), got) > 10 * kl  # the check bites


@pytest.mark.slow
def test_smollm2_kv_cache_shrinks_by_skipped_share(smollm2, tmp_path):
    """With flash attention, llama.cpp allocates K/V only for the 26 of 30 layers kept."""
    from hopscotch_export.verify.llama_model import LlamaSession

    src = open_source(smollm2)
    out = tmp_path / "smol4.gguf"
    convert(src, Plan.identity(src.model_ref(), skip=(5, 11, 19, 26)), out, outtype="source")
    with LlamaSession(smollm2, n_ctx=1024) as full, LlamaSession(out, n_ctx=1024) as cut:
        assert cut.kv_cache.bytes == full.kv_cache.bytes * 26 // 30
