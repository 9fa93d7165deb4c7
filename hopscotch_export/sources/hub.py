"""Hub models as users name them: a Hugging Face model (``org/repo``), or a GGUF file of a
repository in the forms llama.cpp's ``-hf`` and Ollama use (``org/repo:Q4_K_M``,
``hf.co/org/repo:Q4_K_M``) or by its path (``org/repo/file.gguf``), at ``--revision``.

Files come through huggingface_hub's cache (its own progress bar on a terminal). The cache
is looked at first, so a model once downloaded opens offline (``HF_HUB_OFFLINE=1``) and
without a request; the hub is asked only for what the cache lacks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import SourceError

#: what the text of a hub name may start with (Ollama writes ``hf.co/``)
_PREFIXES = ("https://huggingface.co/", "https://hf.co/", "huggingface.co/", "hf.co/")
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: the quantization llama.cpp's ``-hf`` and Ollama take from a GGUF repository when none is named
DEFAULT_QUANT = "Q4_K_M"
#: files of a Hugging Face (safetensors) model that a search and a conversion read
HF_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja"]
_SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class HubRef:
    """A model named on the hub: a repository, and one of its GGUF files by path or by tag."""

    repo_id: str
    filename: str | None = None
    quant: str | None = None

    def __str__(self) -> str:
        if self.filename:
            return f"{self.repo_id}/{self.filename}"
        return f"{self.repo_id}:{self.quant}" if self.quant else self.repo_id


def parse_hub(text: str) -> HubRef | None:
    """The hub model ``text`` names, or None when it is no hub name."""
    for prefix in _PREFIXES:
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
            break
    name, colon, tag = text.partition(":")
    parts = name.split("/")
    if len(parts) < 2 or not all(_PART.match(p) for p in parts):
        return None
    if len(parts) == 2 and parts[1].lower().endswith(".gguf"):  # a local file that is not there
        return None
    rest = "/".join(parts[2:])
    if (rest and not rest.lower().endswith(".gguf")) or (colon and (rest or not _PART.match(tag))):
        return None
    return HubRef("/".join(parts[:2]), rest or None, tag or None)


def hub_path(ref: HubRef, revision: str | None = None) -> Path:
    """The local copy of ``ref``: a snapshot folder for a Hugging Face model, else the GGUF file."""
    filename = ref.filename or _choose_file(ref, revision)
    if filename is None:
        return _snapshot(ref.repo_id, revision)
    if _SPLIT.search(filename):
        raise SourceError(
            f"{ref.repo_id}/{filename} is one part of a split GGUF; merge the parts with `llama-gguf-split --merge` "
            "and pass the merged file"
        )
    return _download(ref.repo_id, filename, revision)


def _choose_file(ref: HubRef, revision: str | None) -> str | None:
    """The GGUF file ``ref`` names by its tag (None: the repository is a safetensors model),
    from the cached files when they have it, else from the hub's listing."""
    first: SourceError | None = None
    cached = _cached_files(ref.repo_id, revision)
    if cached is not None:
        try:
            return pick_file(cached, ref)
        except SourceError as e:
            first = e
    online = _online_files(ref.repo_id, revision)
    if online is None:
        raise first or SourceError(
            f"hub model {ref} is not in the local cache and the hub cannot be reached; download it with "
            f"`hf download {ref.repo_id}{_rev_flag(revision)}` when online, or pass a local file"
        )
    return pick_file(online, ref)


def pick_file(files: list[str], ref: HubRef) -> str | None:
    """Of a repository's ``files``, the GGUF whose name carries ``ref``'s tag (llama.cpp's
    ``-hf`` default Q4_K_M when none is named, or the only GGUF); None for a safetensors model."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf") and "mmproj" not in f.rsplit("/", 1)[-1].lower())
    if ref.quant is None and "config.json" in files and any(f.endswith(".safetensors") for f in files):
        return None
    if not ggufs:
        raise SourceError(f"hub repository {ref.repo_id} has neither GGUF files nor a safetensors model to read")
    tag = ref.quant or DEFAULT_QUANT
    pattern = re.compile(rf"(^|[-._/]){re.escape(tag)}($|[-.])", re.IGNORECASE)
    matches = [f for f in ggufs if pattern.search(f[: -len(".gguf")])]
    if not matches and ref.quant is None and len(ggufs) == 1:
        return ggufs[0]
    if len(matches) != 1:
        tags = ", ".join(ggufs[:8]) + (", ..." if len(ggufs) > 8 else "")
        what = "no" if not matches else f"{len(matches)}"
        raise SourceError(
            f"hub repository {ref.repo_id} has {what} GGUF file(s) for {tag} ({tags}); name one as "
            f"{ref.repo_id}/FILE.gguf or {ref.repo_id}:TAG"
        )
    return matches[0]


def _rev_flag(revision: str | None) -> str:
    return f" --revision {revision}" if revision else ""


def _snapshot_folder(repo_id: str, revision: str | None) -> Path | None:
    """The cached snapshot of ``repo_id`` at ``revision`` (a branch, tag or commit), if any.

    Read from the cache's layout rather than through ``snapshot_download``, which refuses a
    snapshot that holds only some of the repository's files (one GGUF of many)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    rev = revision or "main"
    ref = folder / "refs" / rev
    commit = ref.read_text().strip() if ref.is_file() else rev
    snapshot = folder / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def _cached_files(repo_id: str, revision: str | None) -> list[str] | None:
    """Paths of the files the cached snapshot holds, or None when nothing is cached."""
    snapshot = _snapshot_folder(repo_id, revision)
    if snapshot is None:
        return None
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def _online_files(repo_id: str, revision: str | None) -> list[str] | None:
    """The hub's listing of the repository; None when the hub cannot be reached (offline)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import (
        GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError,
    )  # fmt: skip

    if constants.is_offline_mode():
        return None
    try:
        return HfApi().list_repo_files(repo_id, revision=revision)
    except GatedRepoError:
        raise SourceError(f"hub model {repo_id} is gated: accept its licence on the hub and `hf auth login`") from None
    except RepositoryNotFoundError:
        raise SourceError(f"hub model {repo_id} does not exist (or is private: `hf auth login`)") from None
    except RevisionNotFoundError:
        raise SourceError(f"hub model {repo_id} has no revision {revision!r}; pass a branch, tag or commit") from None
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError):
        return None


def _download(repo_id: str, filename: str, revision: str | None) -> Path:
    """One file of a repository through the cache."""
    from huggingface_hub import hf_hub_download

    return _cached_else_fetched(
        lambda local: hf_hub_download(repo_id, filename, revision=revision, local_files_only=local),
        f"hub file {repo_id}/{filename}", f"hf download {repo_id} {filename}{_rev_flag(revision)}", "a local file",
    )  # fmt: skip


def _snapshot(repo_id: str, revision: str | None) -> Path:
    """The snapshot of a safetensors model through the cache; a download brings its README
    along (the model card, which names the licence) when the hub has one."""
    from huggingface_hub import snapshot_download

    def fetch(local: bool) -> str:
        patterns = HF_FILES if local else [*HF_FILES, "README.md"]
        return snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=local)

    return _cached_else_fetched(
        fetch, f"hub model {repo_id!r}", f"hf download {repo_id}{_rev_flag(revision)}", "a local folder"
    )


def _cached_else_fetched(fetch: Callable[[bool], str], what: str, command: str, instead: str) -> Path:
    """The cached copy (``fetch(True)``: local files only), else ``fetch(False)``, which
    downloads with huggingface_hub's progress bar when the hub is reachable."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(fetch(True))
    except (LocalEntryNotFoundError, HfHubHTTPError):  # not cached, or cached in part
        pass
    try:
        return Path(fetch(False))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as e:
        raise SourceError(
            f"{what} is not in the local cache and could not be downloaded ({type(e).__name__}); download it "
            f"with `{command}` or pass {instead}"
        ) from None
