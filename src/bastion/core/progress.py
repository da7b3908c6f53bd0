"""Progress bars for work that takes seconds, shown only on an interactive terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["progress_enabled", "track", "task_progress"]

T = TypeVar("T")

_FORCE: bool | None = None


def progress_enabled() -> bool:
    """Progress bars go to stderr, and only when it is a terminal (never into logs or pipes)."""
    if _FORCE is not None:
        return _FORCE
    return sys.stderr.isatty()


def set_progress(enabled: bool | None) -> None:
    """Force progress bars on or off (``None`` restores the terminal check)."""
    global _FORCE
    _FORCE = enabled


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar on stderr when it is a terminal."""
    if not progress_enabled():
        yield from items
        return
    with _progress() as bar:
        yield from bar.track(items, total=total, description=description)


@contextlib.contextmanager
def task_progress(description: str, total: float | None) -> Iterator[_Advance]:
    """A progress bar for work advanced by hand: ``with task_progress("x", 10) as advance: ...``."""
    if not progress_enabled():
        yield _Advance(None, None)
        return
    with _progress() as bar:
        yield _Advance(bar, bar.add_task(description, total=total))


class _Advance:
    def __init__(self, bar: Progress | None, task: object) -> None:
        self._bar = bar
        self._task = task

    def __call__(self, amount: float = 1.0) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, amount)  # type: ignore[arg-type]
