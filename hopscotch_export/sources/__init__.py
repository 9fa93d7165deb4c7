"""Model sources: a Hugging Face folder, a hub model (from the local cache, downloaded when
the hub is reachable: see :mod:`.hub`), or a GGUF file.

Both search (torch model) and convert (tensors one at a time) read models through
:func:`open_source`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SourceError
from .base import ModelSource, SourceTensor
from .bundled import PREFIX, bundled_path
from .gguf_file import GgufFileSource
from .hf import HfFolderSource
from .hub import HubRef, hub_path, parse_hub

__all__ = ["ModelSource", "SourceTensor", "open_source", "local_model", "hub_ref", "GgufFileSource", "HfFolderSource"]


def open_source(spec: str | Path, revision: str | None = None) -> ModelSource:
    """Open a model by path or hub name (at ``revision``); raise :class:`SourceError` with the fix otherwise."""
    local = local_model(str(spec), revision)
    if local.startswith(PREFIX):
        return GgufFileSource(bundled_path(local[len(PREFIX):]))
    path = Path(local).expanduser()
    if path.is_dir():
        return HfFolderSource(path)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise SourceError(f"{path} is a file but not a .gguf; pass a GGUF file or a Hugging Face folder")
        return GgufFileSource(path)
    raise SourceError(
        f"{spec} not found; pass a Hugging Face folder, a hub id like org/name (or org/name:Q4_K_M, "
        "org/name/file.gguf for a GGUF repository), a .gguf file, or bundled:smollm2"
    )


def hub_ref(spec: str) -> HubRef | None:
    """The hub model ``spec`` names; None for a local path, ``bundled:`` or anything else."""
    if spec.startswith(PREFIX) or spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists():
        return None
    return parse_hub(spec)


def local_model(spec: str, revision: str | None = None) -> str:
    """``spec`` as a local path: a hub model's cached (or downloaded) folder or GGUF file;
    other specs unchanged. Resolved once, so that every stage reads the same revision."""
    ref = hub_ref(spec)
    if ref is None:
        if revision is not None:
            raise SourceError(f"--revision applies to hub models; {spec} is not one (drop --revision)")
        return spec
    return str(hub_path(ref, revision))
