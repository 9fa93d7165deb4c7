"""Loading and converting large tensors without whole float32 copies: a GGUF source is
loaded tensor by tensor (same weights as transformers' loader), and matrices are
converted a block of rows at a time (same bytes as converting them whole)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hopscotch_export.converters import convert
from hopscotch_export.converters import tensors as tensors_mod
from hopscotch_export.plan import Plan
from hopscotch_export.sources import open_source


@pytest.mark.slow
def test_gguf_source_loads_the_weights_transformers_loads(smollm2: Path) -> None:
    from transformers import AutoModelForCausalLM

    ours = open_source(smollm2).load_torch(torch.float32)
    theirs = AutoModelForCausalLM.from_pretrained(smollm2.parent, gguf_file=smollm2.name, dtype=torch.float32)
    a, b = ours.state_dict(), theirs.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)  # q/k rows back in transformers' order included
    assert ours.lm_head.weight is ours.model.embed_tokens.weight and not ours.training


@pytest.mark.parametrize("outtype", ["f16", "q8_0", "bf16"])
def test_conversion_by_row_blocks_writes_the_same_file(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outtype: str
) -> None:
    source = open_source(tiny_llama)
    ref = source.model_ref()
    n, hidden = ref.n_layers, ref.hidden_size
    per_channel = [list(np.linspace(0.5, 1.5, hidden)) for _ in range(n)]  # a factor per row
    plan = Plan.identity(ref, (2,)).with_fields(attn=tuple(per_channel), mlp=tuple(per_channel))
    whole = tmp_path / "whole.gguf"
    convert(source, plan, whole, outtype=outtype)
    monkeypatch.setattr(tensors_mod, "CHUNK_ELEMENTS", 1000)  # 64-wide rows: blocks of 15 rows
    blocks = tmp_path / "blocks.gguf"
    convert(open_source(tiny_llama), plan, blocks, outtype=outtype)
    assert blocks.read_bytes() == whole.read_bytes()


def test_a_hugging_face_folder_loads_without_hub_kernels(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU, transformers swaps layers for kernels downloaded from the Hub unless told not to;
    seen on an H200 offline: the search failed with a traceback before its first step."""
    from transformers import PreTrainedModel

    asked: list[object] = []
    real = PreTrainedModel.set_use_kernels

    def record(self: PreTrainedModel, use_kernels: object, *args: object, **kwargs: object) -> None:
        asked.append(use_kernels)
        real(self, use_kernels, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "set_use_kernels", record)
    model = open_source(str(tiny_llama)).load_torch(torch.float32)
    assert asked == [False] and not model.use_kernels
