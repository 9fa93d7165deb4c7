"""Where verification text and questions come from: the built-in sample, a local file, or
a Hugging Face dataset (streamed through ``datasets``; offline it must already be in the cache)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import HopscotchError
from ..text_sources import HUB_FIX, stream_rows

BUILTIN_NAME = "built-in sample (hopscotch_export/verify/heldout.txt)"


@dataclass(frozen=True)
class HeldOutText:
    """Text to score, and a description of it for the report."""

    text: str
    source: str
    builtin: bool


def load_text(data: str | None, config: str | None = None, split: str = "test") -> HeldOutText:
    """The built-in sample when ``data`` is None, else a text file or a dataset's ``text`` column."""
    if data is None:
        text = resources.files("hopscotch_export.verify").joinpath("heldout.txt").read_text(encoding="utf-8")
        return HeldOutText(text, BUILTIN_NAME, True)
    path = Path(data).expanduser()
    if path.is_file():
        try:
            return HeldOutText(path.read_text(encoding="utf-8"), str(path), False)
        except UnicodeDecodeError:
            raise HopscotchError(f"--data {path} is not UTF-8 text; pass a plain text file") from None
    rows = load_rows(data, config, split, what="--data")
    if not rows or "text" not in rows[0]:
        columns = ", ".join(rows[0]) if rows else "none"
        raise HopscotchError(f"--data {data}: the dataset has no 'text' column (columns: {columns})")
    # wikitext-style rows keep their newline; other datasets hold one document per row
    text = "".join(t if t.endswith("\n") else t + "\n\n" for t in (str(r["text"]) for r in rows))
    label = f"{data}" + (f" ({config})" if config else "") + f" [{split}]"
    return HeldOutText(text, label, False)


def load_rows(name: str, config: str | None, split: str, what: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` rows (all when None) of a Hugging Face dataset split, streamed so
    that no more is downloaded, with a one-line error when unavailable."""
    looks_like_path = name.startswith((".", "/", "~")) or name.endswith((".txt", ".json", ".jsonl"))
    if looks_like_path:
        raise HopscotchError(f"{what} {name}: file not found")
    rows = stream_rows(f"{what} {name}", HUB_FIX, name, name=config, split=split)
    return [dict(r) for r in itertools.islice(rows, limit)]
