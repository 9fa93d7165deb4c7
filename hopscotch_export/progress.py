"""The progress bar every long stage shows (rich), so they all look alike; plain lines
when the output is not a terminal."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

#: Off a terminal, a task prints a line when it passes another tenth of its total, at most
#: every ``GAP`` seconds (a short task prints its start and end only), and at least every
#: ``EVERY`` seconds (a CI job that prints nothing for long may be killed as hung).
GAP = 5.0
EVERY = 60.0


def progress_bars(console: Console, *, in_bytes: bool = False, width: int = 22) -> Progress:
    """Bars labelled by task; counts in items, or in bytes with a transfer speed.

    Off a terminal (CI, ``2>&1 | tee log``) the same calls print :class:`PlainProgress` lines."""
    if not console.is_terminal:
        return PlainProgress(console, in_bytes=in_bytes, width=width)
    counts = (DownloadColumn(), TransferSpeedColumn()) if in_bytes else (MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(
        TextColumn(f"[bold]{{task.description:<{width}}}"),
        BarColumn(),
        *counts,
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@dataclass
class _Shown:
    """What the last line of a task said: its label, time, tenth of the total, count."""

    label: str
    at: float
    tenth: int = 0
    completed: float = 0.0


class PlainProgress(Progress):
    """A task's progress as plain lines, ``step 2/4  37/120  00:41``: when it starts, as it
    passes tenths of its total (:data:`GAP`, :data:`EVERY`), and when it ends. A rich bar
    redraws itself with carriage returns, and a log file keeps every frame; a rich bar off
    a terminal shows nothing until it ends."""

    def __init__(
        self, console: Console, *, in_bytes: bool = False, width: int = 22,
        get_time: Callable[[], float] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(console=console, get_time=get_time, disable=True)
        self._in_bytes = in_bytes
        self._width = width
        self._shown: dict[TaskID, _Shown] = {}

    def add_task(self, description: str, *args: Any, **kwargs: Any) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        # the label a task started with: the converter updates it to the tensor being written
        self._shown[task_id] = _Shown(description, self.get_time())
        self._print(self._task(task_id))
        return task_id

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._maybe_print(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_print(task_id)

    def stop(self) -> None:
        """The last count of every task that moved since its last line (an interrupted one too)."""
        for task in self.tasks:
            if task.completed != self._shown[task.id].completed:
                self._print(task)
        super().stop()

    def _task(self, task_id: TaskID) -> Task:
        return next(t for t in self.tasks if t.id == task_id)

    def _maybe_print(self, task_id: TaskID) -> None:
        task, shown = self._task(task_id), self._shown[task_id]
        if task.completed == shown.completed:
            return
        since = self.get_time() - shown.at
        if task.finished or (_tenth(task) > shown.tenth and since >= GAP) or since >= EVERY:
            self._print(task)

    def _print(self, task: Task) -> None:
        shown = self._shown[task.id]
        shown.at, shown.tenth, shown.completed = self.get_time(), _tenth(task), task.completed
        show = decimal if self._in_bytes else (lambda n: str(int(n)))
        count = show(task.completed) if task.total is None else f"{show(task.completed)}/{show(task.total)}"
        line = f"{shown.label:<{self._width}}  {count}  {_clock(task.elapsed or 0.0)}"
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)


def _tenth(task: Task) -> int:
    """How many tenths of its total a task has done (0 without a total)."""
    return math.floor(10 * task.completed / task.total) if task.total else 0


def _clock(seconds: float) -> str:
    """``01:05`` or ``1:02:03``."""
    minutes, s = divmod(int(seconds), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
