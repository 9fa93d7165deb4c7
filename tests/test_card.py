"""The model card the one command writes beside the GGUF: hub metadata that parses (the
source's hub id and licence carried over), and figures equal to the verify report's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from models import make_tiny_model
from test_cli import run_cli
from test_gates import ARGS
from test_hub import cache, fill_cache  # noqa: F401 (cache is a fixture)


def _rows(markdown: str, header: str) -> dict[str, list[str]]:
    """The rows of the Markdown table whose header line starts with ``header``, by first cell."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0]] = cells[1:]
    return rows


def test_card_of_a_hub_model(cache, monkeypatch, capsys, text_file: Path, tmp_path: Path) -> None:  # noqa: F811
    folder = make_tiny_model(tmp_path / "tiny", layers=5)
    (folder / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# tiny\n")
    fill_cache(cache, "org/tiny", {p.name: p for p in folder.iterdir()})

    out = tmp_path / "m.gguf"
    code, printed, err = run_cli(monkeypatch, capsys, "org/tiny", "-o", str(out), "--data", str(text_file), *ARGS)
    assert code == 0, err
    card = (tmp_path / "m.README.md").read_text()
    report = json.loads((tmp_path / "m.verify.json").read_text())
    plan = json.loads((tmp_path / "m.plan.json").read_text())

    front = re.match(r"^---\n(.*?)\n---\n", card, re.DOTALL)
    assert front is not None
    assert yaml.safe_load(front.group(1)) == {"base_model": "org/tiny", "license": "mit", "tags": ["gguf", "hopscotch"]}

    steps = _rows(card, "| step | layer |")  # what was removed: the plan's steps
    assert [int(r[0]) for r in steps.values()] == plan["skip"]
    assert [float(r[5]) for r in steps.values()] == [round(s["loss"], 4) for s in plan["provenance"]["search"]["steps"]]

    measured = _rows(card, "|  | reference | model |")  # the verify table
    ref, model = report["reference"], report["model"]
    for i, side in enumerate((ref, model)):
        ppl, uncertainty = (float(x) for x in measured["perplexity"][i].split(" ± "))
        assert (ppl, uncertainty) == (round(side["perplexity"]["ppl"], 4), round(side["perplexity"]["uncertainty"], 4))
        assert measured["file size"][i] == f"{side['file_bytes'] / 2**20:.2f} MiB"
    assert float(measured["perplexity"][2].rstrip("%")) == round(report["comparison"]["ppl_increase_pct"], 2)
    assert float(measured["KL from reference: mean"][2]) == round(report["comparison"]["divergence"]["mean_kl"], 5)
    settings = report["settings"]  # where llama.cpp ran, and why
    assert settings["placement"].startswith("all layers" if settings["gpu_offload_available"] else "CPU only (default")
    assert "llama-cli -m m.gguf -fa on -cnv" in card and "lms import m.gguf" in card
    assert "ollama create m -f m.Modelfile" in card
    assert f"upload YOUR_NAME/m {tmp_path / 'm.README.md'} README.md" in printed
