"""An Ollama Modelfile for a converted GGUF.

Ollama templates are Go templates, not Jinja; for the chat formats the families know
(:func:`families.chat_formats`) we write the equivalent TEMPLATE and stop tokens, otherwise
we leave TEMPLATE out and Ollama falls back to the GGUF's own ``tokenizer.chat_template``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from .families import chat_formats
from .run_commands import WHY_FLASH_ATTENTION, ollama_environment


def modelfile(gguf_name: str, chat_template: str | None, eos_token: str | None, cache_type: str = "f16") -> str:
    """Modelfile text for ``FROM ./gguf_name`` with the model's chat format and stop tokens,
    and notes on the server settings it needs (a Modelfile cannot set them)."""
    lines = [
        f"# Start Ollama with {ollama_environment(cache_type)} ollama serve:",
        f"# {WHY_FLASH_ATTENTION}.",
        f"FROM ./{gguf_name}",
        "",
    ]
    stops: list[str] = []
    for fmt in chat_formats():
        if chat_template and fmt.marker in chat_template:
            lines += [f'TEMPLATE """{fmt.template}"""', ""]
            stops = list(fmt.stops)
            break
    else:
        if chat_template:
            lines += ["# TEMPLATE: Ollama uses the chat template stored in the GGUF", ""]
    if eos_token and eos_token not in stops:
        stops.append(eos_token)
    for s in stops:
        quoted = modelfile_string(s)
        lines.append(f"PARAMETER stop {quoted}" if quoted else f"# stop token {json.dumps(s)}: no quoting holds it")
    return "\n".join(lines).rstrip() + "\n"


def modelfile_string(s: str) -> str | None:
    """``s`` quoted so that Ollama's Modelfile parser reads it back as ``s``; None if no
    quoting does.

    The parser has no escapes. A value ends at a newline where the text so far, trimmed, is
    whole: unquoted, or in one or three double quotes (which it strips); it drops
    unprintable characters other than tabs and newlines. So one quote on each side serves
    unless ``s`` starts with two quotes or has a quote before a newline; three cover most
    of the rest.
    """
    if any(not (c.isprintable() or c in "\t\r\n") for c in s):
        return None
    for quote in ('"', '"""'):
        text = quote + s + quote
        ends = [i for i, c in enumerate(text) if c in "\r\n"]
        if _unquoted(text) == s and all(_unquoted(text[:i].strip()) is None for i in ends):
            return text
    return None


def _unquoted(text: str) -> str | None:
    """The value Ollama's parser takes from ``text`` if the value ended here; None while a
    quoted string is still open."""
    if text.startswith('"""'):
        return text[3:-3] if len(text) >= 6 and text.endswith('"""') else None
    if text.startswith('"'):
        return text[1:-1] if len(text) >= 2 and text.endswith('"') else None
    return text


def ollama_create_command(modelfile_path: Path, name: str) -> str:
    """The shell command that imports the model, its paths and name quoted for the shell
    (from the Modelfile's folder, unless it is a bare name)."""
    create = f"ollama create {shlex.quote(name)} -f {shlex.quote(modelfile_path.name)}"
    folder = str(modelfile_path.parent)
    return create if folder == "." else f"cd {shlex.quote(folder)} && {create}"
