"""What long work shows while it runs: log lines and progress bars on stderr (rich).

``CELLPIPE_NO_PROGRESS=1`` turns the bars off (logs, CI, tests). Library functions
take plain callbacks (``progress(done, total)``); the bars here drive them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def log(message: str) -> None:
    console.print(f"[dim]cellpipe[/dim] {message}")


@contextmanager
def progress(description: str, total: int | None = None, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """A progress bar driven by ``update(done, total=None, info="")``; ``info`` shows beside it.

    ``enabled`` False: no bar (a DDP process other than rank 0)."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled or os.environ.get("CELLPIPE_NO_PROGRESS") == "1",
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=total, info="")

        def update(done: int, total: int | None = None, info: str = "") -> None:
            bar.update(task, completed=done, info=info, **({"total": total} if total is not None else {}))

        yield update
