"""Damaged Hugging Face folders a user may bring: one line naming the file and the fix, exit 2."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from test_cli import assert_one_line_error, run_cli


def edit_json(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))

    return edit


def truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])


def split_into_shards(folder: Path) -> None:
    """An index naming two shards, of which only the first was downloaded."""
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "np") as f:
        names = sorted(f.keys())
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    weight_map = {n: f"model-0000{1 + (i % 2)}-of-00002.safetensors" for i, n in enumerate(names)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


CASES = {
    "invalid json": (lambda f: (f / "config.json").write_text('{"num_hidden_layers": 6,'), ["config.json is not valid JSON", "re-download"]),
    "json list": (lambda f: (f / "config.json").write_text("[1, 2]"), ["holds a JSON list, not an object"]),
    "missing key": (edit_json("config.json", lambda c: c.pop("num_hidden_layers")), ["lacks 'num_hidden_layers'", "re-download"]),
    "string size": (edit_json("config.json", lambda c: c.update(hidden_size="64")), ['"hidden_size" is \'64\', expected a positive number']),
    "zero layers": (edit_json("config.json", lambda c: c.update(num_hidden_layers=0)), ['"num_hidden_layers" is 0']),
    "architectures": (edit_json("config.json", lambda c: c.update(architectures="LlamaForCausalLM")), ['"architectures" is', "expected a list"]),
    "rope scaling": (edit_json("config.json", lambda c: c.update(rope_scaling="llama3")), ['"rope_scaling" is', "expected an object"]),
    "kv groups": (edit_json("config.json", lambda c: c.update(num_key_value_heads=3)), ["4 attention heads do not split into 3 KV head groups"]),
    "no tokenizer": (lambda f: (f / "tokenizer.json").unlink(), ["has no tokenizer (tokenizer.json", "copy the tokenizer files"]),
    "truncated weights": (truncate, ["model.safetensors is not a complete safetensors file", "re-download"]),
    "empty weights": (lambda f: (f / "model.safetensors").write_bytes(b""), ["not a complete safetensors file"]),
    "missing shard": (split_into_shards, ["lacks 1 of the 2 weight files", "model-00002-of-00002.safetensors", "re-download"]),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_damaged_folder_is_named_with_the_fix(case, tiny_llama, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama, folder)
    damage, needles = CASES[case]
    damage(folder)
    out = tmp_path / "o.gguf"
    code, _, err = run_cli(monkeypatch, capsys, "convert", str(folder), "-o", str(out))
    assert_one_line_error(code, err, *needles)
    assert not out.exists() and list(tmp_path.iterdir()) == [folder]


def test_unreadable_tokenizer_stops_the_search_in_one_line(tiny_llama, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama, folder)
    (folder / "tokenizer.json").write_text("{not json")
    out = tmp_path / "plan.json"
    args = ("search", str(folder), "--skips", "1", "-o", str(out), "--samples", "2", "--heldout", "1", "--device", "cpu")
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, "cannot load the tokenizer in", "re-download tokenizer.json")
    assert not out.exists()
