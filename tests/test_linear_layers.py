"""Linear attention layers: a fitted map in place of an attention block, from plan to GGUF.

A ``deci`` layer with head_count n_head and head_count_kv 0 computes
``x + attn_output · RMSNorm(x; attn_norm)`` (llama.cpp ``src/models/deci.cpp``); the plan
carries the map, torch applies it through ``scaled_model``, and llama.cpp must agree.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.numpy import save as save_safetensors

from hopscotch_export.converters.convert import convert
from hopscotch_export.converters.outtypes import map_type, resolve_outtype
from hopscotch_export.errors import PlanError
from hopscotch_export.summary import gguf_summary, gguf_tensor_types, plan_summary
from hopscotch_export.plan import FORMAT, ModelRef, Plan, load_plan, maps_path
from hopscotch_export.sources import ModelSource, open_source
from hopscotch_export.torch_plan import (
    BranchScales, LinearAttention, apply_plan, decoder_layers, plan_maps, scaled_model,
)
from hopscotch_export.verify.data import load_text
from hopscotch_export.verify.layerwise import planned_logits
from hopscotch_export.verify.parity import torch_parity
from hopscotch_export.verify.perplexity import make_windows
from hopscotch_export.verify.llama_model import LlamaSession

REF = ModelRef("LlamaForCausalLM", 6, 4, "abc123")
Q = gguf.GGMLQuantizationType


def small_plan(**changes) -> Plan:
    rng = np.random.default_rng(0)
    maps = {3: rng.standard_normal((4, 4)), 5: rng.standard_normal((4, 4))}
    base = dict(skip=(2,), attn=(1.0, 0.5, 1.0, [0.1, 0.2, 0.3, 0.4], 1.0, 2.0), mlp=(1.0,) * 6,
                linear=(3, 5), maps=maps)  # fmt: skip
    base |= changes
    return Plan(REF, base.pop("skip"), base.pop("attn"), base.pop("mlp"), **base)


# --- plan format 2 ------------------------------------------------------------------------


def test_plan_round_trip_with_maps(tmp_path):
    plan = small_plan()
    plan.save(tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["format"] == FORMAT == "hopscotch-plan/3"
    assert data["linear"]["layers"] == [3, 5] and data["linear"]["file"] == "p.linear.safetensors"
    maps_file = tmp_path / "p.linear.safetensors"
    assert maps_path(tmp_path / "p.json") == maps_file
    assert data["linear"]["sha256"] == hashlib.sha256(maps_file.read_bytes()).hexdigest()
    loaded = load_plan(tmp_path / "p.json")
    assert loaded.linear == (3, 5) and loaded.skip == (2,)
    assert [loaded.kind(i) for i in range(6)] == ["keep", "keep", "skip", "linear", "keep", "linear"]
    for i in (3, 5):
        assert loaded.maps[i].dtype == np.float32
        np.testing.assert_array_equal(loaded.maps[i], plan.maps[i])
    assert loaded.attn_factor(3).tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert loaded.kept_attention == [0, 1, 3, 4, 5]
    summary = plan_summary(tmp_path / "p.json")
    assert summary["layer_kinds"][2:4] == ["skip", "linear"] and summary["linear_attention"] == [3, 5]
    with pytest.raises(Exception, match="--force"):  # neither file is replaced without force
        plan.save(tmp_path / "p.json")
    plan.save(tmp_path / "p.json", force=True)
    # no linear layers: no maps file, and the JSON says so
    Plan.identity(REF, skip=(2,)).save(tmp_path / "q.json")
    assert json.loads((tmp_path / "q.json").read_text())["linear"] == {"layers": []}
    assert not maps_path(tmp_path / "q.json").exists()
    with pytest.raises(ValueError, match="maps file"):
        plan.to_json()


def test_maps_file_missing_tampered_or_wrong_shape(tmp_path):
    small_plan().save(tmp_path / "p.json")
    maps_file = tmp_path / "p.linear.safetensors"
    good = maps_file.read_bytes()
    maps_file.unlink()
    with pytest.raises(PlanError, match="missing; copy it beside the plan"):
        load_plan(tmp_path / "p.json")
    other = small_plan(maps={3: np.zeros((4, 4)), 5: np.eye(4)})
    maps_file.write_bytes(other.maps_bytes())
    with pytest.raises(PlanError, match="sha256 mismatch"):
        load_plan(tmp_path / "p.json")
    wrong = save_safetensors({"layer.3": np.zeros((4, 3), np.float32), "layer.5": np.zeros((4, 4), np.float32)})
    maps_file.write_bytes(wrong)
    data = json.loads((tmp_path / "p.json").read_text())
    data["linear"]["sha256"] = hashlib.sha256(wrong).hexdigest()
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(PlanError, match=r"shape \(4, 3\), the model needs \(4, 4\)") as e:
        load_plan(tmp_path / "p.json")
    assert "\n" not in str(e.value)
    maps_file.write_bytes(good)
    data["linear"]["layers"] = [3]
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(PlanError, match="sha256 mismatch"):
        load_plan(tmp_path / "p.json")


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"linear": (2, 3), "maps": {2: np.eye(4), 3: np.eye(4)}}, "both skipped and linear"),
        ({"linear": (0,), "maps": {0: np.eye(4)}}, "layer 0 linear"),
        ({"linear": (6,), "maps": {6: np.eye(4)}}, "out of range"),
        ({"linear": (3, 3), "maps": {3: np.eye(4)}}, "more than once"),
        ({"linear": (3,), "maps": {}}, "one map per linear layer"),
        ({"linear": (3,), "maps": {3: np.eye(5)}}, "shape"),
        ({"linear": (3,), "maps": {3: np.full((4, 4), np.nan)}}, "not finite"),
    ],
)
def test_bad_linear_layers_are_refused(changes, message):
    with pytest.raises(PlanError, match=message):
        small_plan(**changes)


def v1_json(ref: ModelRef, skip: list[int]) -> dict:
    """A plan file as version 1 wrote it, by hand."""
    n = ref.n_layers
    return {
        "format": "hopscotch-plan/1", "complete": True,
        "model": {"architecture": ref.architecture, "n_layers": n, "hidden_size": ref.hidden_size,
                  "fingerprint": ref.fingerprint},
        "skip": skip,
        "scales": {"attn": np.linspace(0.7, 1.3, n).tolist(), "mlp": [1.0] * (n - 1) + [[0.5] * ref.hidden_size]},
        "provenance": {"seed": 1},
    }  # fmt: skip


def test_v1_plan_loads_and_converts_as_before(tiny_llama, tmp_path):
    """A version 1 file is a plan without linear layers; its GGUF equals the one of the same
    plan saved as version 2 and carries no ``hopscotch.linear`` key. (Checked once against
    the converter before format 2, commit 52ecd9f: the same bytes for f32, q4_0 and a Q4_1
    GGUF source.)"""
    src = open_source(tiny_llama)
    (tmp_path / "v1.json").write_text(json.dumps(v1_json(src.model_ref(), [2, 4])))
    v1 = load_plan(tmp_path / "v1.json")
    assert v1.linear == () and v1.maps == {} and v1.skip == (2, 4)
    v1.save(tmp_path / "v2.json")
    v2 = load_plan(tmp_path / "v2.json")
    convert(src, v1, tmp_path / "v1.gguf", outtype="f32")
    convert(src, v2, tmp_path / "v2.gguf", outtype="f32")
    assert (tmp_path / "v1.gguf").read_bytes() == (tmp_path / "v2.gguf").read_bytes()
    fields = gguf.GGUFReader(tmp_path / "v1.gguf").fields
    assert "hopscotch.skip" in fields and "hopscotch.linear" not in fields
    bad = v1_json(src.model_ref(), [2]) | {"linear": {"layers": []}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(PlanError, match="has no 'linear' field"):
        load_plan(tmp_path / "bad.json")


# --- torch --------------------------------------------------------------------------------


def test_scaled_model_linear_layer_equals_hand_computation(tiny_llama):
    model = open_source(tiny_llama).load_torch(torch.float32)
    layers = decoder_layers(model)
    h = model.config.hidden_size
    scales = channel_scales(len(layers), h)
    weight = torch.nn.Parameter(torch.randn(h, h) / h**0.5)
    original = layers[3].self_attn
    seen: dict[str, torch.Tensor] = {}
    handle = layers[3].register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
    ids = torch.tensor([[5, 17, 300, 42, 9, 1000]])
    try:
        with scaled_model(model, scales, [2], {3: weight}):
            assert isinstance(layers[3].self_attn, LinearAttention) and layers[3].self_attn.weight is weight
            loss = model(ids).logits.square().mean()
        loss.backward()
    finally:
        handle.remove()
    assert layers[3].self_attn is original  # restored
    layer, x = layers[3], seen["x"].detach()
    with torch.no_grad():
        mid = x + scales.attn[3] * (layer.input_layernorm(x) @ weight.T)
        want = mid + scales.mlp[3] * layer.mlp(layer.post_attention_layernorm(mid))
    torch.testing.assert_close(seen["y"].detach(), want, rtol=1e-5, atol=1e-5)
    assert weight.grad is not None and weight.grad.abs().sum() > 0  # the search can train the map
    assert scales.attn.grad is not None and scales.attn.grad[3].abs().sum() > 0


def channel_scales(n: int, hidden: int) -> BranchScales:
    """Channel scales far from 1, trainable, for the hand computation."""
    scales = BranchScales(n, hidden)
    with torch.no_grad():
        scales.attn.uniform_(0.5, 1.5)
        scales.mlp.uniform_(0.5, 1.5)
    return scales


def test_layerwise_logits_equal_whole_model_with_linear_layers(tiny_qwen2):
    """verify's layer-by-layer torch path reads the map from the plan, not the source."""
    source = open_source(tiny_qwen2)
    plan = linear_plan(source, skip=(2,), linear=(1, 4), channel=True)
    windows = [list(range(100, 132)), list(range(400, 432))]
    model = source.load_torch(torch.float32)
    with apply_plan(model, plan), torch.no_grad():
        whole = [model(torch.tensor([w])).logits[0].numpy() for w in windows]
    maps_before = {i: m.copy() for i, m in plan.maps.items()}
    for a, b in zip(planned_logits(source, plan, windows, whole[0].shape[1]), whole):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
    for i, m in maps_before.items():
        np.testing.assert_array_equal(plan.maps[i], m)
    assert all(t.device.type == "cpu" for t in plan_maps(plan).values())


# --- llama.cpp parity ---------------------------------------------------------------------


def fitted_maps(source: ModelSource, layers: tuple[int, ...], tokens: int = 512) -> dict[int, np.ndarray]:
    """Ridge least-squares maps from each layer's normed input to its attention output, on
    the built-in text: maps of the size the search would fit (a random map of unit gain
    dwarfs a real model's attention output, and so would its rounding)."""
    model = source.load_torch(torch.float32)
    tok = source.load_tokenizer()
    ids = torch.tensor([tok.encode(load_text(None).text)[:tokens]])
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(i: int):
        return lambda m, args, kwargs, out: seen.update({i: (kwargs["hidden_states"][0], out[0][0])})

    blocks = decoder_layers(model)
    handles = [blocks[i].self_attn.register_forward_hook(keep(i), with_kwargs=True) for i in layers]
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    maps = {}
    for i, (x, y) in seen.items():
        x, y = x.double(), y.double()
        gram = x.T @ x + 1e-2 * len(x) * torch.eye(x.shape[1], dtype=torch.float64)
        maps[i] = torch.linalg.solve(gram, x.T @ y).T.float().numpy()
    return maps


def linear_plan(
    source: ModelSource, skip: tuple[int, ...], linear: tuple[int, ...], channel: bool = False, seed: int = 0,
    fitted: bool = False,
) -> Plan:
    """Scales 0.5..1.5 (per channel on linear layers when ``channel``) and random maps of
    unit gain, or :func:`fitted_maps` when ``fitted``."""
    ref = source.model_ref()
    rng = np.random.default_rng(seed)
    n, h = ref.n_layers, ref.hidden_size

    def attn(i: int) -> float | list[float]:
        return rng.uniform(0.5, 1.5, h).tolist() if channel and i in linear else float(rng.uniform(0.5, 1.5))

    maps = fitted_maps(source, linear) if fitted else {i: rng.standard_normal((h, h)) / h**0.5 for i in linear}
    mlp = tuple(float(x) for x in rng.uniform(0.5, 1.5, n))
    return Plan(ref, skip, tuple(attn(i) for i in range(n)), mlp, linear=linear, maps=maps)


def check_parity(
    spec: Path, plan: Plan, wrong: Plan, outtype: str, tmp_path: Path, ctx: int = 64
) -> tuple[float, float]:
    """Mean KL of the converted file against torch under ``plan``, and under ``wrong``."""
    out = tmp_path / "m.gguf"
    convert(open_source(spec), plan, out, outtype=outtype)
    plan.save(tmp_path / "plan.json")
    wrong.save(tmp_path / "wrong.json")
    with LlamaSession(out, n_ctx=ctx, n_threads=1) as s:
        windows = make_windows(s.tokenize(load_text(None).text), ctx, s.bos if s.add_bos else None, 1)
        good = torch_parity(s, spec, tmp_path / "plan.json", windows)
        bad = torch_parity(s, spec, tmp_path / "wrong.json", windows)
    return good.mean_kl, bad.mean_kl


@pytest.mark.parametrize(
    "fixture,outtype,channel,max_kl,bite",
    [
        ("tiny_llama", "f32", False, 1e-5, 100),
        ("tiny_llama", "f16", True, 1e-4, 100),
        ("tiny_llama", "q8_0", False, 1e-3, 100),
        ("tiny_llama", "q4_0", False, 1e-2, 4),  # llama.cpp's quantizer on the f16 intermediate
        ("tiny_qwen2", "f32", True, 1e-5, 100),
        ("tiny_llama_bias", "f32", True, 1e-5, 100),  # attn_output.bias of a linear layer is dropped
    ],
)
def test_llama_cpp_matches_torch_with_linear_layers(request, tmp_path, fixture, outtype, channel, max_kl, bite):
    """``bite``: how many times the KL against a wrong map (one negated) exceeds the right one's."""
    spec = request.getfixturevalue(fixture)
    source = open_source(spec)
    plan = linear_plan(source, skip=(2,), linear=(1, 4), channel=channel)
    wrong = plan.with_fields(maps={1: plan.maps[1], 4: -plan.maps[4]})
    good, bad = check_parity(spec, plan, wrong, outtype, tmp_path)
    assert good < max_kl
    assert bad > max(bite * good, 1e-3)
    out = tmp_path / "m.gguf"
    types = gguf_tensor_types(out)
    if outtype != "q4_0":  # llama.cpp's quantizer picks its own types
        assert types["blk.1.attn_output.weight"] == outtype.upper()
    assert "blk.1.attn_q.weight" not in types and "blk.1.attn_output.bias" not in types
    assert "blk.1.attn_norm.weight" in types and "blk.2.attn_norm.weight" not in types
    info = gguf_summary(out)
    assert info["layer_kinds"] == ["keep", "linear", "skip", "keep", "linear", "keep"]
    assert info["linear_attention"] == [1, 4]
    fields = gguf.GGUFReader(out).fields
    assert list(fields["hopscotch.linear"].contents()) == [1, 4]


@pytest.mark.parametrize(
    "outtype,source_type,hidden,want",
    [
        ("f32", Q.BF16, 64, Q.F32),
        ("q8_0", Q.F16, 64, Q.Q8_0),
        ("q8_0", Q.F16, 48, Q.F16),  # rows of 48 are not whole Q8_0 blocks
        ("q4_k_m", Q.F16, 256, Q.F16),  # the f16 intermediate: llama.cpp's quantizer picks the type
        ("source", Q.Q4_1, 64, Q.Q4_1),  # kept: gguf-py encodes Q4_1
        ("source", Q.Q4_K, 256, Q.Q8_0),  # gguf-py has no K-quant encoder
        ("source", Q.BF16, 64, Q.BF16),
    ],
)
def test_map_type(outtype, source_type, hidden, want):
    assert map_type(resolve_outtype(outtype, "gguf", source_type), source_type, hidden) == want


@pytest.mark.slow
def test_smollm2_q4_1_source_with_linear_layers(smollm2, tmp_path):
    """The bundled Q4_1 GGUF kept as it is; least-squares maps, written as Q4_1 like the
    source's attn_output. Measured: KL 0.015, as for the same plan without linear layers
    (0.016, llama.cpp's Q4_1 arithmetic against float32 torch); swapped maps: 0.83."""
    source = open_source(smollm2)
    plan = linear_plan(source, skip=(3,), linear=(6, 20), fitted=True)
    wrong = plan.with_fields(maps={6: plan.maps[20], 20: plan.maps[6]})
    good, bad = check_parity(smollm2, plan, wrong, "source", tmp_path)
    assert gguf_tensor_types(tmp_path / "m.gguf")["blk.6.attn_output.weight"] == "Q4_1"
    assert good < 3e-2
    assert bad > 10 * good


def test_inspect_prints_layer_kinds(tmp_path):
    from typer.testing import CliRunner

    from hopscotch_export.cli import app

    small_plan().save(tmp_path / "p.json")
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    assert "keep keep skip linear keep linear" in result.output
