"""Model sources: a Hugging Face folder, a hub id (from the local cache), or a GGUF file.

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

__all__ = ["ModelSource", "SourceTensor", "open_source", "GgufFileSource", "HfFolderSource"]

_HUB_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja"]


def open_source(spec: str | Path) -> ModelSource:
    """Open a model by path or hub id; raise :class:`SourceError` with the fix otherwise."""
    if str(spec).startswith(PREFIX):
        return GgufFileSource(bundled_path(str(spec)[len(PREFIX):]))
    path = Path(spec).expanduser()
    if path.is_dir():
        return HfFolderSource(path)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise SourceError(f"{path} is a file but not a .gguf; pass a GGUF file or a Hugging Face folder")
        return GgufFileSource(path)
    text = str(spec)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return HfFolderSource(_hub_snapshot(text))
    raise SourceError(
        f"{spec} not found; pass a Hugging Face folder, a hub id like org/name, a .gguf file, or bundled:smollm2"
    )


def _hub_snapshot(repo_id: str) -> Path:
    """The cached snapshot of ``repo_id``, downloading it when the hub is reachable."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as e:
        raise SourceError(
            f"hub model {repo_id!r} is not in the local cache and could not be downloaded "
            f"({type(e).__name__}); download it with `hf download {repo_id}` or pass a local folder"
        ) from None
