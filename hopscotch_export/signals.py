"""SIGTERM handled like Ctrl-C, and the exit status that says which signal stopped a run.

A KeyboardInterrupt is what every stage already cleans up after: the search saves the plan
of its last finished step, and ``files.atomic_output`` removes its temporary file. Python
raises it for SIGINT only; a terminated run (``kill``, a CI timeout, a scheduler, torchrun
stopping its processes) would die where it stood. Here both signals raise it, and the CLI
exits with the shell's convention, 128 + the signal number (130, 143).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

_received: int | None = None

Handler = Callable[[int, "FrameType | None"], None]


def raising(error: type[KeyboardInterrupt]) -> Handler:
    """A signal handler that records the signal and raises ``error``. A repeated SIGTERM is
    ignored while the first one's clean-up runs (senders follow up with SIGKILL if it hangs);
    a second Ctrl-C still interrupts the clean-up, as a user pressing it twice expects."""

    def handle(signum: int, frame: FrameType | None) -> None:
        global _received
        _received = signum
        if signum == signal.SIGTERM:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise error(f"stopped by {signal.Signals(signum).name}")

    return handle


@contextlib.contextmanager
def interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt inside the block; the previous handlers
    come back after it (the CLI can run inside another program, a test for one). A signal
    the parent set to be ignored stays ignored (``cmd &`` in a script: Ctrl-C is not for it)."""
    global _received
    _received = None
    if threading.current_thread() is not threading.main_thread():  # handlers live in the main thread only
        yield
        return
    handler = raising(KeyboardInterrupt)
    wanted = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, handler) for s in wanted}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)  # None: set outside Python


def received() -> int | None:
    """The signal that stopped the run, if one did."""
    return _received


def exit_code(default: int) -> int:
    """128 + the signal that stopped the run, else ``default``."""
    return 128 + _received if _received is not None else default
