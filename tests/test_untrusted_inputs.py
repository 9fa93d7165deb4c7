"""Inputs that could reach outside their place: a plan's maps file, a safetensors header's
length, stop tokens in a Modelfile and paths in the printed ``ollama create`` command."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import struct
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from hopscotch_export.errors import PlanError, SourceError
from hopscotch_export.ollama import modelfile, ollama_create_command
from hopscotch_export.plan import load_plan
from hopscotch_export.sources import open_source
from test_linear_layers import small_plan

# --- the plan's maps file ---------------------------------------------------------------


def point_maps_at(plan_json: Path, name: str, data: bytes | None = None) -> None:
    """Make the plan name ``name`` as its maps file (with the hash of ``data``, when given)."""
    plan = json.loads(plan_json.read_text())
    plan["linear"]["file"] = name
    if data is not None:
        plan["linear"]["sha256"] = hashlib.sha256(data).hexdigest()
    plan_json.write_text(json.dumps(plan))


def load_in_thread(path: Path) -> BaseException | None:
    """What loading ``path`` raises, failing the test if it has not ended within 20 s (a read
    that blocks on a FIFO or never ends)."""
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            load_plan(path)
            result.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            result.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    assert result, f"loading {path} did not end"
    return result[0]


def test_maps_file_outside_the_plans_folder_is_refused(tmp_path):
    folder = tmp_path / "plans"
    folder.mkdir()
    small_plan().save(folder / "p.json")
    good = (folder / "p.linear.safetensors").read_bytes()
    (tmp_path / "elsewhere.safetensors").write_bytes(good)
    (folder / "link.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    for name in ("../elsewhere.safetensors", str(tmp_path / "elsewhere.safetensors"), "link.safetensors"):
        point_maps_at(folder / "p.json", name)
        with pytest.raises(PlanError, match="outside the plan's folder") as e:
            load_plan(folder / "p.json")
        assert "\n" not in str(e.value)
    point_maps_at(folder / "p.json", "p.linear.safetensors")
    assert load_plan(folder / "p.json").linear == (3, 5)


def test_maps_file_that_is_no_regular_file_or_too_large_is_refused(tmp_path):
    small_plan().save(tmp_path / "p.json")
    os.mkfifo(tmp_path / "fifo")  # with no writer: a plain read blocks for ever
    point_maps_at(tmp_path / "p.json", "fifo")
    assert "not a regular file" in str(load_in_thread(tmp_path / "p.json"))
    (tmp_path / "zero").symlink_to("/dev/zero")  # inside the folder by name, a device in fact
    point_maps_at(tmp_path / "p.json", "zero")
    assert "outside the plan's folder" in str(load_in_thread(tmp_path / "p.json"))
    # two 4x4 float32 maps take 128 bytes and a small header; 64 KiB of them is not this plan's
    big = (tmp_path / "p.linear.safetensors").read_bytes() + bytes(2**16)
    (tmp_path / "big.safetensors").write_bytes(big)
    point_maps_at(tmp_path / "p.json", "big.safetensors", big)
    error = load_in_thread(tmp_path / "p.json")
    assert isinstance(error, PlanError) and "larger than the" in str(error) and "bytes that maps" in str(error)


def test_safetensors_header_longer_than_the_format_allows_is_refused(tiny_llama, tmp_path):
    """The reference reader refuses headers over 100 MB; so does this one, before reading it."""
    folder = tmp_path / "m"
    folder.mkdir()
    for f in tiny_llama.iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    weights = folder / "model.safetensors"
    with open(weights, "wb") as f:  # a sparse file: the length fits inside it
        f.write(struct.pack("<Q", 100_000_001))
        f.truncate(8 + 100_000_001 + 8)
    with pytest.raises(SourceError, match="100,000,000 safetensors allows") as e:
        open_source(str(folder))
    assert "\n" not in str(e.value)


# --- Ollama -----------------------------------------------------------------------------


def ollama_parse(text: str) -> list[tuple[str, str]]:
    """(command, value) pairs as Ollama's Modelfile parser reads them: a rune-by-rune port of
    ``ParseFile`` and ``parseRuneForState`` (parser/parser.go) for the commands we write."""

    def unquote(s: str) -> tuple[str, bool]:
        if s[:3] == '"""':
            return (s[3:-3], True) if len(s) >= 6 and s[-3:] == '"""' else ("", False)
        if s[:1] == '"':
            return (s[1:-1], True) if len(s) >= 2 and s[-1] == '"' else ("", False)
        return s, True

    def step(state: str, r: str) -> tuple[str, str]:
        space, newline = r in " \t", r in "\r\n"
        if state == "nil":
            return ("comment", "") if r == "#" else ("nil", "") if space or newline else ("name", r)
        if state == "name":
            assert space or (r.isascii() and r.isalpha()), "invalid command"
            return ("value", "") if space else ("name", r)
        if state == "parameter":
            assert space or (r.isascii() and (r.isalnum() or r == "_")), "invalid parameter name"
            return ("value", "") if space else ("parameter", r)
        if state == "comment":
            return ("nil" if newline else "comment"), ""
        return ("nil" if space or newline else "value"), r

    commands: list[tuple[str, str]] = []
    state, buf, name = "nil", "", ""
    for r in text:
        nxt, r = step(state, r)
        if nxt != state:
            if state == "name":
                name = buf.lower()
                nxt = "parameter" if name == "parameter" else nxt
            elif state == "parameter":
                name = buf
            elif state == "value":
                value, ok = unquote(buf.strip())
                if not ok or r in (" ", "\t"):
                    buf += r
                    continue
                commands.append((name, value))
            buf, state = "", nxt
        if r.isprintable():
            buf += r
    assert state in ("nil", "comment", "value"), "unexpected end of file"
    if state == "value":
        value, ok = unquote(buf.strip())
        assert ok, "unexpected end of file"
        commands.append((name, value))
    return commands


@pytest.mark.parametrize(
    "eos",
    ["</s>", 'say "hi"', 'two\nlines', 'quote"\nthen newline', '""starts with two quotes', "tab\tinside",
     " padded ", 'end"'],
)  # fmt: skip
def test_stop_tokens_read_back_as_written(eos):
    text = modelfile("my model.gguf", "{{ x }}<|im_start|>", eos)
    parsed = ollama_parse(text)
    assert parsed[0] == ("from", "./my model.gguf")
    assert [v for k, v in parsed if k == "stop"] == ["<|im_start|>", "<|im_end|>", eos]


def test_a_stop_token_no_quoting_holds_is_left_out_with_a_comment():
    text = modelfile("m.gguf", None, 'x"""\ny')  # triple quotes before a newline end any quoted form
    assert [k for k, _ in ollama_parse(text)] == ["from"] and "# stop token" in text


def test_ollama_create_command_quotes_for_the_shell(tmp_path):
    modelfile_path = tmp_path / "it's a folder" / "m $(x).Modelfile"
    modelfile_path.parent.mkdir()
    command = ollama_create_command(modelfile_path, "my-model")
    shown = subprocess.run(["sh", "-c", command.replace("ollama create", "echo")], capture_output=True, text=True)
    assert shown.returncode == 0 and shown.stdout == "my-model -f m $(x).Modelfile\n", shown.stderr
