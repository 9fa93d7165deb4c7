"""An Ollama Modelfile for a converted GGUF.

Ollama templates are Go templates, not Jinja; for the chat formats it knows we write the
equivalent TEMPLATE and stop tokens, otherwise we leave TEMPLATE out and Ollama falls back
to the GGUF's own ``tokenizer.chat_template``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from .run_commands import WHY_FLASH_ATTENTION, ollama_environment

CHATML = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""

LLAMA3 = """{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""

#: DeepSeek-R1 and its distills (Llama and Qwen2 models with DeepSeek's own chat format)
DEEPSEEK_R1 = """{{- if .System }}{{ .System }}{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}<｜User｜>{{ .Content }}
{{- else if eq .Role "assistant" }}<｜Assistant｜>{{ .Content }}<｜end▁of▁sentence｜>
{{- end }}
{{- end }}<｜Assistant｜>"""

#: Phi-3 (``<|user|>`` ... ``<|end|>``) and Phi-4 (ChatML with ``<|im_sep|>`` after the role)
PHI3 = """{{- range .Messages }}<|{{ .Role }}|>
{{ .Content }}<|end|>
{{ end }}<|assistant|>
"""
PHI4 = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}<|im_sep|>{{ .Content }}<|im_end|>{{ end }}"
    "<|im_start|>assistant<|im_sep|>"
)

#: (marker found in the Jinja template, Go template, stop tokens); the first that matches wins
KNOWN_FORMATS = [
    ("<｜Assistant｜>", DEEPSEEK_R1, ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"]),
    ("<|im_sep|>", PHI4, ["<|im_start|>", "<|im_sep|>", "<|im_end|>"]),
    ("<|end|>", PHI3, ["<|end|>", "<|user|>", "<|assistant|>"]),
    ("<|im_start|>", CHATML, ["<|im_start|>", "<|im_end|>"]),
    ("<|start_header_id|>", LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
]


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
    for marker, template, format_stops in KNOWN_FORMATS:
        if chat_template and marker in chat_template:
            lines += [f'TEMPLATE """{template}"""', ""]
            stops = list(format_stops)
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
