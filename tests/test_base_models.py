"""Base models (a tokenizer without a chat template) calibrate on plain text they write."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from hopscotch_export.search import SearchOptions, run_search
from hopscotch_export.search.generate import builtin_openings
from hopscotch_export.search.workspace import prepare
from hopscotch_export.sources import open_source
from models import make_tiny_model

TINY = dict(samples=4, heldout=2, seq_len=32, score_samples=2, batch_size=2, shortlist=1, final_epochs=1, device="cpu")


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama whose tokenizer has no chat template and no pad token."""
    path = make_tiny_model(tmp_path_factory.mktemp("base") / "tiny", layers=3)
    (path / "chat_template.jinja").unlink()
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    config.pop("pad_token", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    assert open_source(path).load_tokenizer().chat_template is None
    return path


def test_base_model_search_runs_on_plain_text_it_wrote(base_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    log = io.StringIO()
    options = SearchOptions(skips=1, max_new_tokens=24, **TINY)  # type: ignore[arg-type]
    plan = run_search(open_source(base_model), options, out, console=Console(file=log, width=300))

    assert "has no chat template (a base model)" in log.getvalue()
    data = plan.provenance["data"]
    assert data["kind"] == "generated-text" and data["openings"].endswith("openings.txt")
    assert plan.complete and len(plan.skip) == 1
    rows = [json.loads(line) for line in (tmp_path / "plan.calibration.jsonl").read_text().splitlines()]
    assert rows and all(set(r) == {"text"} for r in rows)  # plain text, no chat messages
    openings = builtin_openings()
    assert all(any(r["text"].startswith(o[:12]) for o in openings) for r in rows)  # each continues an opening
    assert any(len(r["text"]) > len(o) + 20 for r in rows for o in openings if r["text"].startswith(o))

    # a resumed search rereads those texts and packs the very same tokens
    ws = prepare(
        open_source(base_model), options, Console(file=io.StringIO()),
        data_file=tmp_path / "plan.calibration.jsonl", save_data=False, force=False,
    )  # fmt: skip
    assert ws.calib.hash == data["hash"] and ws.data["kind"] == "generated-text"
