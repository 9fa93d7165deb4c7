"""The progress bar every long stage shows (rich), so they all look alike."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


def progress_bars(console: Console, *, in_bytes: bool = False, width: int = 22) -> Progress:
    """Bars labelled by task; counts in items, or in bytes with a transfer speed."""
    counts = (DownloadColumn(), TransferSpeedColumn()) if in_bytes else (MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(
        TextColumn(f"[bold]{{task.description:<{width}}}"),
        BarColumn(),
        *counts,
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
