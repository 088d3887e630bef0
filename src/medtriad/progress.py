"""Progress bars for long work (rich), silenced when not wanted or not on a terminal."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

_console = Console(stderr=True)


def make_progress(transient: bool = False) -> Progress:
    """A rich Progress writing to stderr: description, bar, n/N, elapsed and remaining time."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console,
        transient=transient,
        disable=not _console.is_terminal,
    )


def track(items: Iterable[T], total: int | None = None, description: str = "working", enabled: bool = True) -> Iterator[T]:
    """Yield from `items` while drawing a progress bar (only on a terminal and when enabled)."""
    if not enabled or not _console.is_terminal:
        yield from items
        return
    with make_progress() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
