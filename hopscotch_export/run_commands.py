"""How to run an exported file so that its saving holds: what llama.cpp and Ollama are told.

Without flash attention llama.cpp pads every layer's V cache to the widest layer's, so a
removed block keeps its V cache (kv_cache.py); a quantized KV cache needs flash attention
too. Every command we print, and the Modelfile's notes, carry both settings.
"""

from __future__ import annotations

import shlex
from pathlib import Path

#: why the flags are there, in one line (printed and written into the Modelfile)
WHY_FLASH_ATTENTION = (
    "flash attention keeps the KV cache saving: without it llama.cpp pads every layer's V cache "
    "to the widest, so removed blocks keep their V cache"
)


def llama_cpp_command(gguf: Path, cache_type: str = "f16") -> str:
    """``llama-cli`` with flash attention on and, unless f16, the KV cache type."""
    cache = f" -ctk {cache_type} -ctv {cache_type}" if cache_type != "f16" else ""
    return f"llama-cli -m {shlex.quote(str(gguf))} -fa on{cache} -cnv"


def ollama_environment(cache_type: str = "f16") -> str:
    """The variables ``ollama serve`` needs (they are the server's, not the Modelfile's)."""
    cache = f" OLLAMA_KV_CACHE_TYPE={cache_type}" if cache_type != "f16" else ""
    return f"OLLAMA_FLASH_ATTENTION=1{cache}"


def lm_studio_command(gguf: Path) -> str:
    """LM Studio's import of a GGUF (``lms``, its command line); flash attention is a setting
    of the loaded model there, not a flag."""
    return f"lms import {shlex.quote(str(gguf))}"
