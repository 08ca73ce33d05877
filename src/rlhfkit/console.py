"""Terminal output: one rich console (stderr) for messages and progress bars."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def setup_logging(level: int = logging.INFO) -> None:
    """Send rlhfkit's log records (e.g. skipped invalid records) to the rich console, and quiet the
    libraries' own progress bars and notices (rlhfkit shows one progress bar per stage)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.ERROR)  # e.g. tied weights noted at every checkpoint
    logger = logging.getLogger("rlhfkit")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(RichHandler(console=console, show_path=False, show_time=False))
    logger.setLevel(level)


@contextlib.contextmanager
def progress_bar(description: str, total: int, completed: int = 0, enabled: bool = True) -> Iterator[Callable]:
    """A progress bar; yields ``advance(n=1)``. Disabled (a no-op) on non-main processes or when
    ``RLHFKIT_NO_PROGRESS`` is set."""
    if not enabled or os.environ.get("RLHFKIT_NO_PROGRESS"):
        yield lambda n=1: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, completed=completed)
        yield lambda n=1: progress.advance(task, n)
