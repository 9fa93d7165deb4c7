"""Hopscotch on the real SmolLM2-135M-Instruct (CPU, small budget): the searched plan must
keep the model closer to the original than the baselines do, on held-out tokens.

One workspace (model, self-generated calibration chats, teacher) serves the search and the
baselines, so every number is measured on the same held-out tokens. The sizes are a little
smaller than bench/search.py's (docs/search-benchmark.md); there, at 4 skips, the searched
plan's held-out KL was 14% below LLM-Drop's, 16% below the same blocks without scales and
42% below random blocks with trained scales.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from hopscotch_export.search import SearchOptions
from hopscotch_export.search.baselines import llm_drop, random_choice
from hopscotch_export.search.greedy import SearchState
from hopscotch_export.search.display import Silent
from hopscotch_export.search.final import final_training, plan_metrics
from hopscotch_export.search.stages import search_workspace
from hopscotch_export.search.workspace import prepare
from hopscotch_export.sources import open_source
from hopscotch_export.torch_plan import BranchScales
from models import smollm2_gguf


@pytest.mark.slow
def test_searched_plan_beats_unscaled_random_and_llm_drop(tmp_path: Path) -> None:
    source = open_source(smollm2_gguf())
    options = SearchOptions(
        skips=4, samples=8, heldout=16, seq_len=32, batch_size=2, shortlist=2, final_epochs=3,
        max_new_tokens=128, device="cpu",
    )  # fmt: skip
    ref = source.model_ref()
    candidates = options.candidates(ref.n_layers)
    console = Console(file=io.StringIO())
    ws = prepare(source, options, console, data_file=tmp_path / "c.jsonl", save_data=True, force=False)
    state = SearchState(BranchScales(ref.n_layers))
    plan = search_workspace(ws, options, candidates, state, ref, tmp_path / "plan.json", Silent())
    heldout = plan.provenance["heldout"]
    kl = heldout["final"]["kl"]

    assert len(plan.skip) == 4 and 0 not in plan.skip
    assert kl < heldout["no_scales"]["kl"], "trained scales must repair the drift of the skipped blocks"

    rnd = random_choice(candidates, 4, seed=options.seed)
    rnd_scales, _ = final_training(ws, options, rnd, BranchScales(ref.n_layers), Silent())
    assert kl < plan_metrics(ws, rnd, rnd_scales, options.batch_size)["kl"], f"random blocks {rnd} did better"

    drop = llm_drop(ws.stack, ws.calib, candidates, 4, options.batch_size)
    assert kl < plan_metrics(ws, drop, BranchScales(ref.n_layers), options.batch_size)["kl"], (
        f"LLM-Drop's blocks {drop} did better"
    )
