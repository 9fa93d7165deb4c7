"""llama.cpp through llama-cpp-python, loaded once, with its log captured.

Both the converter (llama.cpp's quantizer) and verify (its inference) use it; its log is
read for facts (the KV cache line) and never printed between our progress displays.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .errors import HopscotchError

#: ggml.h log levels (llama-cpp-python's _logger.py has an older numbering).
_GGML_LOG_DEBUG, _GGML_LOG_CONT = 1, 5


class LlamaLog:
    """Captures llama.cpp's log (instead of printing it) so we can read facts from it."""

    def __init__(self) -> None:
        import llama_cpp

        self.lines: deque[str] = deque(maxlen=400)
        self._partial = ""
        self._level = 0
        self.count = 0
        self._listener: Callable[[str], None] | None = None

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            if level != _GGML_LOG_CONT:
                self._level = level
            if self._level == _GGML_LOG_DEBUG:  # thousands of graph lines per context
                return
            self._partial += text.decode("utf-8", errors="replace")
            *done, self._partial = self._partial.split("\n")
            self.lines.extend(done)
            self.count += len(done)
            if self._listener is not None:
                for line in done:
                    self._listener(line)

        self._callback = callback  # keep a reference: llama.cpp holds a raw pointer
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))

    @contextlib.contextmanager
    def listening(self, listener: Callable[[str], None]) -> Iterator[None]:
        """Call ``listener`` with every line logged inside the block (to follow a long call)."""
        self._listener = listener
        try:
            yield
        finally:
            self._listener = None

    def since(self, mark: int) -> list[str]:
        """Lines logged after ``mark`` (a previous ``count``), as far as the buffer reaches."""
        n = min(self.count - mark, len(self.lines))
        return list(self.lines)[len(self.lines) - n :] if n > 0 else []


_log: LlamaLog | None = None


def llama_library() -> tuple[Any, LlamaLog]:
    """Import llama_cpp once, initialise its backend and take over its log."""
    global _log
    try:
        import llama_cpp
    except ImportError as e:
        raise HopscotchError(
            f"llama-cpp-python is not usable ({e}); install it: pip install llama-cpp-python"
        ) from None
    if _log is None:
        llama_cpp.llama_backend_init()
        _log = LlamaLog()
    return llama_cpp, _log


def default_threads() -> int:
    """CPU cores this process may use (its affinity: a container's or taskset's share, not
    the machine's ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1
