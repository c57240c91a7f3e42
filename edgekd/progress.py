"""Progress reporting that respects ``--quiet``: a rich progress bar on a terminal, nothing otherwise."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

_QUIET = False


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = quiet


def is_quiet() -> bool:
    return _QUIET or os.environ.get("EDGEKD_QUIET") == "1"


@contextlib.contextmanager
def muted() -> Iterator[None]:
    """Quiet inside the block (a tool's own progress bars, repeated many times by the planner)."""
    global _QUIET
    before, _QUIET = _QUIET, True
    try:
        yield
    finally:
        _QUIET = before


def log(msg: str) -> None:
    """A one-line status message on stderr (stdout is kept for results)."""
    if not is_quiet():
        print(msg, file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    """A one-line warning on stderr, shown even with ``--quiet``: something the user should know about their input."""
    print(f"warning: {msg}", file=sys.stderr, flush=True)


class _NullBar:
    def update(self, advance: float = 1, **fields: object) -> None:  # noqa: D401
        pass


class _RichBar:
    def __init__(self, progress, task) -> None:  # noqa: ANN001
        self.progress, self.task = progress, task

    def update(self, advance: float = 1, **fields: object) -> None:
        self.progress.update(self.task, advance=advance, **fields)


@contextlib.contextmanager
def bar(description: str, total: int) -> Iterator[_NullBar | _RichBar]:
    if is_quiet():
        yield _NullBar()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=not console.is_terminal) as p:
        task = p.add_task(description, total=total, info="")
        yield _RichBar(p, task)
