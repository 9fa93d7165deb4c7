"""Text records from a Hugging Face dataset or a local file, read the same way for search's
calibration data and verify's held-out text and tasks, so that neither stage imports the other.

A record is plain text (``str``) or a chat (a list of ``{"role", "content"}`` messages).
Files other than ``.txt`` go through the ``datasets`` library, like hub datasets, so the
JSON and parquet variants it accepts (JSON lines, a JSON array, ...) all work. Datasets are
streamed: a search takes a few hundred rows, and must not download a whole split for them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

from .errors import HopscotchError

Message = dict[str, str]
Record = Union[str, list[Message]]

FILE_KINDS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
#: columns tried, in order, when ``--data-field`` is not given
AUTO_FIELDS = ("messages", "conversations", "text", "content")
#: what to check when a hub dataset cannot be read
HUB_FIX = "check the name, config and split, or pass a local file"
#: ShareGPT-style speaker names
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def is_local(spec: str) -> bool:
    """A spec names a local file when it exists or ends like one (so typos say "not found")."""
    return Path(spec).expanduser().is_file() or Path(spec).suffix.lower() in FILE_KINDS


def read_records(spec: str, config: str | None, split: str, field: str | None) -> Iterator[Record]:
    """Records of ``spec`` in their stored order (loaded lazily: the caller stops early)."""
    if is_local(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise HopscotchError(f"--data file {path} not found")
        kind = FILE_KINDS.get(path.suffix.lower())
        if kind is None:
            raise HopscotchError(f"--data {path}: unsupported file type; use {', '.join(FILE_KINDS)}")
        if kind == "text":
            return _paragraphs(path)
        fix = "check that it is JSON lines, a JSON array or parquet"
        return _rows(stream_rows(f"--data {path}", fix, kind, data_files=str(path), split="train"), field, str(path))
    return _rows(stream_rows(f"--data {spec}", HUB_FIX, spec, name=config, split=split), field, spec)


def _paragraphs(path: Path) -> Iterator[Record]:
    """A text file as documents separated by blank lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HopscotchError(f"--data {path} is not UTF-8 text") from None
    return (p.strip() for p in re.split(r"\n\s*\n", text) if p.strip())


def stream_rows(label: str, fix: str, path: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Rows of ``datasets.load_dataset(path, **kwargs)``, streamed: only the rows the caller
    takes are read. Offline, a hub dataset is read from the local cache instead (streaming
    needs the hub). Any failure, at loading or while reading, is one line: ``label``, the
    root cause, ``fix``."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()  # its own log repeats the error we raise
    try:
        try:
            dataset = datasets.load_dataset(path, streaming=True, **kwargs)
        except ConnectionError:  # offline or the hub unreachable: a cached copy may exist
            dataset = datasets.load_dataset(path, **kwargs)
        yield from dataset
    except Exception as e:  # datasets raises many types (hub, parsing, split); all are user-fixable
        while e.__cause__ is not None:  # "error while generating the dataset" hides the reason
            e = e.__cause__  # type: ignore[assignment]
        what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HopscotchError(f"{label}: cannot load it ({what}); {fix}") from None


def _rows(rows: Iterator[dict[str, Any]], field: str | None, name: str) -> Iterator[Record]:
    """The records of ``field`` (or the first of :data:`AUTO_FIELDS` present); the first row
    is read now, so a wrong column is named before any work."""
    first = next(rows, None)
    if first is None:
        raise HopscotchError(f"--data {name} has no rows; pass a file or split that holds data")
    columns = list(first)
    if field is None:
        field = next((f for f in AUTO_FIELDS if f in columns), None)
        if field is None:
            raise HopscotchError(f"--data {name} has columns {columns}; choose the text or chat one with --data-field")
    elif field not in columns:
        raise HopscotchError(f"--data-field {field!r} is not a column of {name}; columns: {columns}")
    return (_record(row[field], field, name) for row in itertools.chain([first], rows))


def _record(value: Any, field: str, name: str) -> Record:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return [_message(m, field, name) for m in value]
    raise HopscotchError(f"{name}: column {field!r} holds {type(value).__name__}, expected text or chat messages")


def _message(m: dict[str, Any], field: str, name: str) -> Message:
    # datasets may unify mixed rows' schemas: a ShareGPT message then has role=None too
    role = m.get("role") if m.get("role") is not None else m.get("from")
    content = m.get("content") if m.get("content") is not None else m.get("value")
    if role not in _ROLES or not isinstance(content, str):
        raise HopscotchError(
            f"{name}: column {field!r} has a message {m!r}; expected role user/assistant/system and text content"
        )
    return {"role": _ROLES[role], "content": content}
