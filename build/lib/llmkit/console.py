"""The one rich console: progress and logs go to stderr, results (tables, JSON) to stdout."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

err = Console(stderr=True, highlight=False, emoji=False)  # ":x:" in a path or message stays as typed
out = Console(highlight=False, emoji=False)


def progress(*extra_columns, transient: bool = False) -> Progress:
    """A progress bar with the columns every stage shows, plus stage-specific ones."""
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=transient,
        disable=not err.is_terminal and not _force_progress(),
    )


def _force_progress() -> bool:
    import os

    return os.environ.get("LLMKIT_PROGRESS", "") == "1"
