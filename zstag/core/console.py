"""Messages and progress on stderr, so stdout carries machine output only.

Progress bars appear only when stderr is a terminal and `--quiet` is not given; Rich honours
NO_COLOR. Every module that reports goes through here.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

stderr = Console(stderr=True, highlight=False)
_state = {"quiet": False, "verbose": False}


def configure(quiet: bool | None = None, verbose: bool | None = None) -> None:
    """Set what is shown; None keeps the current setting."""
    if quiet is not None:
        _state["quiet"] = quiet
    if verbose is not None:
        _state["verbose"] = verbose


def info(message: str) -> None:
    """A line of progress news (suppressed by --quiet)."""
    if not _state["quiet"]:
        stderr.print(message, markup=False, soft_wrap=True)


def debug(message: str) -> None:
    if _state["verbose"] and not _state["quiet"]:
        stderr.print(message, markup=False, soft_wrap=True, style="dim")


def warn(message: str) -> None:
    """Warnings always show: they say something was skipped or changed."""
    stderr.print(f"warning: {message}", markup=False, soft_wrap=True, style="yellow")


def error(message: str) -> None:
    stderr.print(f"error: {message}", markup=False, soft_wrap=True, style="bold red")


class ProgressBar:
    """What `progress` yields: `update(advance, **fields)`; this one shows nothing."""

    def update(self, advance: int = 0, **fields: Any) -> None:
        pass


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[ProgressBar]:
    """A progress bar on stderr when it is a terminal; otherwise a no-op with the same `update`."""
    if _state["quiet"] or not sys.stderr.isatty():
        yield ProgressBar()
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, transient=True) as bar:
        task = bar.add_task(description, total=total)

        class _Bar(ProgressBar):
            def update(self, advance: int = 0, **fields: Any) -> None:
                bar.update(task, advance=advance, **fields)

        yield _Bar()
