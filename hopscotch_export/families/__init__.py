"""The model families we convert, one class per family, registered by the names they read.

Adding a family is adding a module here with a :class:`Family` subclass decorated with
:func:`register` (and importing it at the end of this file); anything that a family does
differently is a class attribute or method of it, asked by the stage that needs it.
"""

from __future__ import annotations

from ..errors import SourceError
from .base import Family, supported_line
from .refused import REFUSED

#: Hugging Face class name or GGUF architecture -> its family
REGISTRY: dict[str, type[Family]] = {}


def register(family: type[Family]) -> type[Family]:
    """Class decorator: the family answers for its Hugging Face classes and GGUF architectures."""
    for name in (*family.hf_architectures, *family.gguf_archs):
        REGISTRY[name] = family
    return family


def family_for(architecture: str, where: str = "the model") -> type[Family]:
    """The family reading ``architecture`` (a Hugging Face class name or a GGUF
    ``general.architecture``), or a one-line refusal naming why and what is supported."""
    family = REGISTRY.get(architecture)
    if family is not None:
        return family
    why = REFUSED.get(architecture)
    reason = f"deci cannot hold it ({why})" if why else "it is not a family this tool knows"
    raise SourceError(f"{where} is {architecture!r}: {reason}. {supported_line()}")


from . import llama, granite, phi3, qwen2, qwen3  # noqa: E402  (the families register themselves, Llama first)
from .spec import ModelSpec  # noqa: E402

__all__ = ["REGISTRY", "Family", "ModelSpec", "family_for", "register"]
