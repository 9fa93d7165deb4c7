"""Rope scaling read from a ``llama`` GGUF source and applied in torch: Llama 3's
``rope_freqs`` tensor and linear scaling's keys. torch on the GGUF source must compute what
llama.cpp computes on the unmodified file, or the search and the parity check run another
model than the one exported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hopscotch_export.plan import Plan
from hopscotch_export.sources import open_source
from hopscotch_export.verify.data import load_text
from hopscotch_export.verify.parity import FLOOR_MULTIPLE, SLACK, Parity, torch_parity
from hopscotch_export.verify.perplexity import make_windows
from hopscotch_export.verify.llama_model import LlamaSession
from models import llama_gguf, make_tiny_model

#: the rope scalings a Llama GGUF carries, as Hugging Face configs; positions past 256 (the
#: llama3 scaling's original context) are where they differ from plain rope
SCALINGS = {
    "plain": None,
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 256},
    "linear": {"rope_type": "linear", "factor": 4.0},
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """float32 ``llama`` GGUFs of one tiny model (same weights) under each rope scaling."""
    d = tmp_path_factory.mktemp("gguf_rope")
    hf = make_tiny_model(d / "hf", layers=3)
    config = json.loads((hf / "config.json").read_text())
    out = {}
    for kind, rope in SCALINGS.items():
        shutil.copytree(hf, d / kind)
        (d / kind / "config.json").write_text(json.dumps({**config, "rope_scaling": rope}))
        out[kind] = llama_gguf(d / kind, d / f"{kind}.gguf")
    return out


@pytest.fixture(scope="module")
def plain_floor(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> float:
    return unplanned_parity(sources["plain"], tmp_path_factory.mktemp("plain")).mean_kl


def unplanned_parity(path: Path, tmp_path: Path) -> Parity:
    """torch on the GGUF source with no plan against llama.cpp on the same file, 512 tokens."""
    plan = tmp_path / f"{path.stem}.plan.json"
    Plan.identity(open_source(path).model_ref()).save(plan)
    with LlamaSession(path, n_ctx=512, n_threads=1) as session:
        windows = make_windows(session.tokenize(load_text(None).text), 512, session.bos, 1)
        return torch_parity(session, str(path), plan, windows)


def test_the_rope_scaling_a_gguf_encodes_is_read(sources):
    llama3, linear = open_source(sources["llama3"]), open_source(sources["linear"])
    assert llama3.rope_freqs is not None and llama3.rope_freqs.max() == 8.0 and llama3.spec.rope_scaling is None
    assert linear.spec.rope_scaling == {"rope_type": "linear", "factor": 4.0} and linear.rope_freqs is None
    assert open_source(sources["plain"]).rope_freqs is None


@pytest.mark.parametrize("kind", ["llama3", "linear"])
def test_torch_on_a_scaled_gguf_source_matches_llama_cpp_at_the_plain_floor(sources, plain_floor, kind, tmp_path):
    floor = plain_floor
    parity = unplanned_parity(sources[kind], tmp_path)
    print(f"{kind}: torch vs llama.cpp mean KL {parity.mean_kl:.3g} (plain rope {floor:.3g})")
    assert parity.mean_kl <= FLOOR_MULTIPLE * floor + SLACK / 100 and parity.same_top > 0.99
