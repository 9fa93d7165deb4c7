"""Chat formats that models of several families carry, as Ollama (Go) templates.

A family names the formats its models carry (:attr:`Family.chat_formats`); a format only
one family's models carry is defined in that family's module. ``ollama.py`` writes the
format whose marker a GGUF's Jinja chat template holds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatFormat:
    """A chat format: the marker that identifies it in a Jinja template, its Go template
    and its stop tokens."""

    #: formats are tried in ascending rank, the first whose marker the template holds wins: a
    #: template may hold several formats' markers (Phi-4's is ChatML with ``<|im_sep|>``), so
    #: the more particular format goes first
    rank: int
    marker: str
    template: str
    stops: tuple[str, ...]


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

DEEPSEEK_R1_FORMAT = ChatFormat(
    0, "<｜Assistant｜>", DEEPSEEK_R1, ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>")
)
CHATML_FORMAT = ChatFormat(3, "<|im_start|>", CHATML, ("<|im_start|>", "<|im_end|>"))
LLAMA3_FORMAT = ChatFormat(4, "<|start_header_id|>", LLAMA3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))
