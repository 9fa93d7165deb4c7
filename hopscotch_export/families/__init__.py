"""The model families we convert, one class per family, registered by the names they read.

Adding a family is adding a module here with a :class:`Family` subclass and naming it in
:data:`FAMILIES`; anything that a family does differently is a class attribute or method of
it, asked by the stage that needs it.
"""

from __future__ import annotations

from .base import REGISTRY, Family, ModelSpec, chat_formats, family_for, gguf_help, register, supported_line
from .granite import Granite
from .llama import Llama, Mistral
from .phi3 import Phi3
from .qwen2 import Qwen2
from .qwen3 import Qwen3

#: every family, in the order refusals list them (Llama first)
FAMILIES: tuple[type[Family], ...] = (Llama, Mistral, Granite, Phi3, Qwen2, Qwen3)
register(*FAMILIES)

__all__ = [
    "FAMILIES", "REGISTRY", "Family", "ModelSpec", "chat_formats", "family_for", "gguf_help", "supported_line",
]  # fmt: skip
