"""Writing outputs so that nothing a user owns is lost.

Every output goes to a temporary file beside its destination and is renamed over it only
when complete; an existing file is replaced only with ``force``. A temporary file is
named after its output, process and host, so a run killed mid-write (SIGKILL, power cut)
leaves nothing under the output name, and the next run for that output removes what the
dead process left. Two runs writing one output never mix: each writes its own temporary
file, the rename is atomic, and without ``force`` a file that appeared meanwhile is kept.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import HopscotchError

#: errno values of a write that failed for lack of room: full disk, quota, file size limit.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def check_writable(path: Path | str, force: bool) -> None:
    """Fail early (before hours of work) if ``path`` may not be replaced or cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise HopscotchError(f"{path} is a folder, not a file; give -o a file path (a name inside that folder)")
    if path.exists() and not force:
        raise HopscotchError(f"{path} already exists; pass --force to overwrite it or choose another -o")
    if path.exists() and not path.is_file():
        raise HopscotchError(f"{path} is not a regular file; choose another -o")
    folder = path.parent
    nearest = folder
    while not nearest.exists() and nearest != nearest.parent:
        nearest = nearest.parent
    if not nearest.is_dir():
        raise HopscotchError(f"{nearest} is a file, not a folder, so {path} cannot be written there; choose another -o")
    if nearest != folder:
        raise HopscotchError(f"folder {folder} does not exist; create it (mkdir -p {folder}) or choose another -o")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise HopscotchError(
            f"folder {folder} is not writable (permissions or a read-only disk); "
            "choose another -o or fix its permissions"
        )


def check_work_dir(work_dir: Path | None) -> None:
    """Fail early on a ``--work-dir`` that is not an existing folder."""
    if work_dir is not None and not Path(work_dir).is_dir():
        raise HopscotchError(f"--work-dir {work_dir} is not an existing folder; create it or pass another")


@contextlib.contextmanager
def atomic_output(path: Path | str, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    A full disk while writing becomes a one-line :class:`HopscotchError`; the temporary
    file is removed however the block ends.
    """
    path = Path(path)
    check_writable(path, force)
    tmp = temp_file(path)
    try:
        with disk_errors(path):
            yield tmp
        _publish(tmp, path, force)
    finally:
        tmp.unlink(missing_ok=True)


def temp_file(path: Path, folder: Path | None = None, suffix: str = ".tmp", fix: str = "choose another -o") -> Path:
    """A new empty file in ``folder`` (default: beside ``path``) named after ``path``, this
    process and host, after removing the ones that dead processes of this host left there."""
    folder, prefix = _sweep(path, folder)
    try:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    except OSError as e:
        raise HopscotchError(f"cannot create a file in {folder} ({e.strerror}); {fix}") from None
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def temp_folder(path: Path, folder: Path | None = None, fix: str = "choose another -o") -> Iterator[Path]:
    """A new folder named as :func:`temp_file` names its files, removed with its contents
    however the block ends; one that a dead process left is removed by the next call."""
    folder, prefix = _sweep(path, folder)
    try:
        made = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=folder))
    except OSError as e:
        raise HopscotchError(f"cannot create a folder in {folder} ({e.strerror}); {fix}") from None
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


def _sweep(path: Path, folder: Path | None) -> tuple[Path, str]:
    """The folder for ``path``'s temporary files and their name prefix (``path``'s name,
    this process and host), after removing those of dead processes of this host there."""
    folder = Path(folder or path.parent)
    host = socket.gethostname()
    _remove_stale(folder, path.name, host)
    return folder, f".{path.name}.{os.getpid()}@{host}."


@contextlib.contextmanager
def disk_errors(path: Path, fix: str = "choose another -o", what: str | None = None) -> Iterator[None]:
    """Turn running out of room while writing ``path`` (``what``, default its name) into a
    one-line error."""
    try:
        yield
    except OSError as e:
        if e.errno not in _NO_ROOM:
            raise
        raise HopscotchError(
            f"the disk of {path.parent} ran out of room while writing {what or path.name} ({os.strerror(e.errno)}); "
            f"nothing was kept; free space there or {fix}"
        ) from None


def write_text_atomic(path: Path | str, text: str, force: bool = False) -> None:
    """Write a small text file through :func:`atomic_output`."""
    with atomic_output(path, force) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _publish(tmp: Path, path: Path, force: bool) -> None:
    """Give ``tmp`` the name ``path`` in one step, so readers see the old file or the new.

    Without ``force`` a file that appeared at ``path`` while we wrote (another run) is
    kept: a hard link fails when the name is taken, where a rename would replace it.
    """
    # mkstemp makes the file private (0600); give it the permissions a plain open() would,
    # so that, for example, Ollama's service user can read the GGUF.
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        if force:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise HopscotchError(
                f"{path} appeared while this run was writing it (another run?) and was left as it is; "
                "pass --force to overwrite it or choose another -o"
            ) from None
        except OSError:  # a file system without hard links (FAT, some network shares)
            if path.exists():
                raise HopscotchError(
                    f"{path} appeared while this run was writing it; pass --force or choose another -o"
                ) from None
            os.replace(tmp, path)
    except HopscotchError:
        raise
    except OSError as e:
        raise HopscotchError(f"cannot write {path} ({e.strerror}); choose another -o") from None


def _remove_stale(folder: Path, name: str, host: str) -> None:
    """Delete temporary files (and folders) for output ``name`` whose writer on this host is gone."""
    pattern = re.compile(re.escape(f".{name}.") + r"(\d+)@" + re.escape(host) + r"\.[^/]*\.tmp")
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            m = pattern.fullmatch(entry.name)
            if m and not _alive(int(m.group(1))):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                    continue
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
