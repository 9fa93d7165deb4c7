"""Search placement and memory estimate: dtype choice, GPU spreading, refusals before loading,
``--dry-run``, and a search on a model that accelerate dispatched with offloaded layers."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from hopscotch_export import estimates
from hopscotch_export.errors import HopscotchError
from hopscotch_export.families import ModelSpec, family_for
from hopscotch_export.plan import load_plan
from hopscotch_export.estimates import GiB, parameter_count, weight_bytes
from hopscotch_export.search import SearchOptions, run_search
from hopscotch_export.search import placement as placement_mod
from hopscotch_export.search.placement import plan_placement, search_parts
from hopscotch_export.sources import open_source

TINY = dict(samples=4, heldout=2, seq_len=16, score_samples=2, batch_size=2, shortlist=1, final_epochs=1)

#: Llama-3.1-8B's shapes
SPEC_8B = ModelSpec(
    family=family_for("LlamaForCausalLM"), n_layers=32, hidden_size=4096, intermediate_size=14336, n_heads=32,
    n_kv_heads=8, head_dim=128, vocab_size=128256, rms_eps=1e-5, rope_theta=5e5, context_length=131072,
    tie_embeddings=False,
)  # fmt: skip


def limits(monkeypatch: pytest.MonkeyPatch, **free: int) -> None:
    """Pretend the machine has ``free`` bytes: ram=..., cuda0=..., disk=..."""

    def available(where: str) -> int | None:
        key = where.split(":")[0] + (where.split(":")[1] if where.startswith("cuda") else "")
        return free.get(key)

    monkeypatch.setattr(estimates, "available", available)
    monkeypatch.setattr(placement_mod, "available", available)


def fake_gpus(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_parameter_count_of_llama_8b_shapes() -> None:
    p = parameter_count(SPEC_8B)
    total = p["embed"] + p["head"] + SPEC_8B.n_layers * p["layer"] + p["norm"]
    assert total == 8_030_261_248  # Llama-3.1-8B's published parameter count
    assert weight_bytes(SPEC_8B, "bfloat16") == 2 * total


def test_cpu_auto_dtype_is_float32_when_it_fits_else_bfloat16_with_a_notice(monkeypatch: pytest.MonkeyPatch) -> None:
    o = SearchOptions(skips=4, device="cpu", **TINY)  # type: ignore[arg-type]
    limits(monkeypatch, ram=64 * GiB)
    roomy = plan_placement(SPEC_8B, o)
    assert roomy.dtype == "float32" and roomy.notice is None and roomy.device_map is None
    limits(monkeypatch, ram=24 * GiB)
    tight = plan_placement(SPEC_8B, o)
    assert tight.dtype == "bfloat16" and "bfloat16" in (tight.notice or "")
    estimates.check(tight.needs)  # 16 GB of bf16 weights fit in 24 GiB


def test_a_model_that_cannot_fit_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    limits(monkeypatch, ram=8 * GiB)
    placement = plan_placement(SPEC_8B, SearchOptions(skips=4, device="cpu", **TINY))  # type: ignore[arg-type]
    with pytest.raises(HopscotchError) as e:
        estimates.check(placement.needs)
    message = str(e.value)
    assert "\n" not in message and "8.0 GiB" in message and "weights" in message and "--device cuda" in message


def test_gpu_placement_one_gpu_spread_and_offload(monkeypatch: pytest.MonkeyPatch) -> None:
    o = SearchOptions(skips=4, device="cuda", samples=64, heldout=16, seq_len=256)
    fake_gpus(monkeypatch, 2)
    limits(monkeypatch, ram=100 * GiB, cuda0=80 * GiB, cuda1=80 * GiB)
    one = plan_placement(SPEC_8B, o)
    assert one.device_map == {"": 0} and one.dtype == "bfloat16" and one.max_memory is None
    assert one.needs[0].where == "cuda:0" and one.cache_device == torch.device("cuda:0")

    limits(monkeypatch, ram=100 * GiB, cuda0=20 * GiB, cuda1=20 * GiB)
    spread = plan_placement(SPEC_8B, o)
    act = search_parts(SPEC_8B, o, "bfloat16")["activations"]
    assert spread.device_map == "sequential" and set(spread.max_memory or {}) == {0, 1}
    assert all(v == 20 * GiB - act - placement_mod.GPU_MARGIN for v in (spread.max_memory or {}).values())
    estimates.check(spread.needs)

    limits(monkeypatch, ram=100 * GiB, cuda0=14 * GiB, cuda1=14 * GiB)
    offload = plan_placement(SPEC_8B, o)
    assert "cpu" in (offload.max_memory or {}) and "CPU offload" in offload.describe()
    ram = next(n for n in offload.needs if n.where == "ram")
    assert ram.parts["offloaded weights"] > 0

    limits(monkeypatch, ram=4 * GiB, cuda0=14 * GiB, cuda1=14 * GiB)
    with pytest.raises(HopscotchError, match="free memory"):
        estimates.check(plan_placement(SPEC_8B, o).needs)


def test_a_gguf_source_searched_on_a_gpu_counts_its_whole_model_in_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GGUF source is built whole in RAM before it moves to the GPU; a Hugging Face folder
    loads straight there. With 12 GiB free, 8B bf16 weights (15 GiB) fit only the latter."""
    o = SearchOptions(skips=4, device="cuda", samples=64, heldout=16, seq_len=256)
    fake_gpus(monkeypatch, 1)
    limits(monkeypatch, ram=12 * GiB, cuda0=80 * GiB)
    hf = plan_placement(SPEC_8B, o, source_kind="hf")
    estimates.check(hf.needs)
    gguf = plan_placement(SPEC_8B, o, source_kind="gguf")
    (load,) = [n for n in gguf.needs if "loading the GGUF source" in n.what]
    assert load.where == "ram" and load.parts["weights, whole in RAM first"] == weight_bytes(SPEC_8B, "bfloat16")
    with pytest.raises(HopscotchError, match=r"^loading the GGUF source \(bfloat16\) before it moves to cuda:0 needs"):
        estimates.check(gguf.needs)
    limits(monkeypatch, ram=100 * GiB, cuda0=80 * GiB)
    estimates.check(gguf.needs)
    two = plan_placement(SPEC_8B, o, gpus=[0], processes=2, source_kind="gguf")  # torchrun: each process loads
    assert max(n.bytes for n in two.needs if "loading the GGUF source" in n.what) == 2 * load.bytes
    cpu = plan_placement(SPEC_8B, dataclasses.replace(o, device="cpu"), source_kind="gguf")
    assert not [n for n in cpu.needs if "loading" in n.what]  # on the CPU the search's own weights are these


def test_a_large_teacher_cache_stays_in_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 1)
    limits(monkeypatch, ram=400 * GiB, cuda0=80 * GiB)
    big = SearchOptions(skips=4, device="cuda", samples=2048, heldout=16, seq_len=1024)
    placed = plan_placement(SPEC_8B, big)
    assert placed.cache_device == torch.device("cpu")
    assert "teacher cache" in next(n for n in placed.needs if n.where == "ram").parts


def test_search_refuses_before_loading_and_writes_nothing(
    tiny_llama: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits(monkeypatch, ram=64 * 2**20)
    source = open_source(tiny_llama)
    monkeypatch.setattr(source, "load_torch", lambda *a, **k: pytest.fail("loaded weights before the check"))
    out = tmp_path / "plan.json"
    with pytest.raises(HopscotchError) as e:
        run_search(source, SearchOptions(skips=1, data=str(text_file), device="cpu", **TINY), out,  # type: ignore[arg-type]
                   console=Console(file=io.StringIO()))  # fmt: skip
    assert "\n" not in str(e.value) and "free memory" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_dry_run_prints_the_estimate_and_writes_nothing(tiny_llama: Path, tmp_path: Path) -> None:
    from hopscotch_export.cli import app

    result = CliRunner().invoke(
        app, ["search", str(tiny_llama), "--skips", "1", "-o", str(tmp_path / "p.json"), "--dry-run", "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    assert "weights" in result.output and "activations" in result.output and "float32" in result.output
    assert list(tmp_path.iterdir()) == []


def test_search_on_a_model_dispatched_with_offloaded_layers_gives_the_same_plan(
    tiny_llama: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accelerate on CPU: half the layers offloaded to disk and loaded at each forward
    (the nearest thing to two devices here); the search must not notice."""
    from transformers import AutoModelForCausalLM

    options = SearchOptions(skips=2, data=str(text_file), device="cpu", **TINY)  # type: ignore[arg-type]
    quiet = Console(file=io.StringIO())
    plain = run_search(open_source(tiny_llama), options, tmp_path / "plain.json", console=quiet)

    source = open_source(tiny_llama)
    n = source.spec.n_layers
    split_map: dict[str, Any] = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu",
                                  "lm_head": "cpu"}  # fmt: skip
    split_map |= {f"model.layers.{i}": "cpu" if i < n // 2 else "disk" for i in range(n)}
    dispatched: list[Any] = []

    def load_torch(dtype: torch.dtype, device_map: Any = None, max_memory: Any = None) -> Any:
        model = AutoModelForCausalLM.from_pretrained(
            tiny_llama, dtype=dtype, device_map=split_map, offload_folder=str(tmp_path / "offload")
        )
        dispatched.append(model)
        return model

    monkeypatch.setattr(source, "load_torch", load_torch)
    split = run_search(source, options, tmp_path / "split.json", console=quiet)
    assert set(dispatched[0].hf_device_map.values()) == {"cpu", "disk"}
    assert split.skip == plain.skip
    assert split.provenance["search"]["order"] == plain.provenance["search"]["order"]
    assert split.attn == pytest.approx(plain.attn, abs=1e-5) and split.mlp == pytest.approx(plain.mlp, abs=1e-5)
    assert json.loads((tmp_path / "split.json").read_text())["complete"]
    assert load_plan(tmp_path / "split.json").skip == plain.skip


def test_under_torchrun_each_process_uses_its_gpus_and_ram_counts_every_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    o = SearchOptions(skips=4, device="cuda", samples=64, heldout=16, seq_len=256)
    fake_gpus(monkeypatch, 4)
    limits(monkeypatch, ram=100 * GiB, cuda2=20 * GiB, cuda3=20 * GiB)
    group = plan_placement(SPEC_8B, o, gpus=[2, 3], processes=2)
    assert group.device == torch.device("cuda", 2) and set(group.max_memory or {}) == {2, 3}
    alone = plan_placement(SPEC_8B, o, gpus=[2, 3], processes=1)
    ram = {p.where: p.bytes for p in group.needs}["ram"]
    assert ram == 2 * {p.where: p.bytes for p in alone.needs}["ram"]


def test_dry_run_with_a_kv_budget_counts_the_linear_maps_the_search_will_hold(tiny_llama: Path) -> None:
    """``--kv-saving`` leaves ``skips`` 0 until the model is known: the estimate must use
    the blocks' worth the search will run with, as the search itself does."""
    from hopscotch_export.search.command import print_estimate

    source = open_source(tiny_llama)
    n = source.spec.n_layers
    budget = SearchOptions(skips=0, kv_saving=0.5, replace="linear", device="cpu")
    blocks = SearchOptions(skips=budget.for_model(n).skips, replace="linear", device="cpu")
    assert blocks.skips > 0

    def maps(options: SearchOptions) -> int:
        needs = print_estimate(source, options, Console(file=io.StringIO())).needs
        return sum(v for need in needs for k, v in need.parts.items() if k == "linear maps")

    assert maps(budget) == maps(blocks) > maps(SearchOptions(skips=0, kv_saving=0.01, replace="linear", device="cpu"))
