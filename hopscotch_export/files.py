"""Writing outputs so that nothing a user owns is lost.

Every output goes to a temporary file beside its destination and is renamed over it only
when complete; an existing file is replaced only with ``force``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import HopscotchError


def check_writable(path: Path, force: bool) -> None:
    """Fail early (before hours of work) if ``path`` exists and may not be replaced."""
    if path.exists() and not force:
        raise HopscotchError(f"{path} already exists; pass --force to overwrite it or choose another -o")
    if not path.parent.exists():
        raise HopscotchError(f"directory {path.parent} does not exist; create it first")


@contextlib.contextmanager
def atomic_output(path: Path | str, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    check_writable(path, force)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give it the permissions a plain open() would,
        # so that, for example, Ollama's service user can read the GGUF.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path | str, text: str, force: bool = False) -> None:
    """Write a small text file through :func:`atomic_output`."""
    with atomic_output(path, force) as tmp:
        tmp.write_text(text, encoding="utf-8")
