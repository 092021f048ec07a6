"""What a person at a terminal sees: tables and progress bars (``rich``, the ``cli`` extra).

Without ``rich`` tables fall back to tab-separated text and progress bars to
nothing; output that is not a terminal never gets either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

__all__ = ["print_table", "progress"]


def print_table(
    out: TextIO,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str = "",
    header: bool = True,
) -> None:
    """Rows of text as a table; the first column (pks, names) is never cut."""
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        if title:
            out.write(title + "\n")
        out.write("\t".join(headers) + "\n")
        for row in rows:
            out.write("\t".join(row) + "\n")
        return
    table = Table(box=box.SIMPLE_HEAD, show_header=header, show_edge=False)
    first = max((len(row[0]) for row in rows), default=0)
    for i, name in enumerate(headers):
        if i == 0:
            table.add_column(name, no_wrap=True, min_width=max(first, len(name)))
        else:
            table.add_column(name, overflow="fold")
    for row in rows:
        # markup=False: values are data, "[red]" in a record is text.
        table.add_row(*(_text(cell) for cell in row))
    console = Console(file=out, soft_wrap=False)
    if not out.isatty():
        # A table asked for in a file or pipe: as wide as it needs, nothing folded.
        wide = console.options.update_width(1 << 20)
        console = Console(file=out, width=max(console.measure(table, options=wide).maximum, 20))
    if title:
        out.write(title + "\n")
    console.print(table)


def _text(cell: str) -> Any:
    from rich.text import Text

    return Text(cell)


@contextlib.contextmanager
def progress(
    err: TextIO, label: str, total: int | None, enabled: bool
) -> Iterator[Callable[[int], None]]:
    """``advance(n)`` for a progress bar with rate and ETA on ``err`` when it is a terminal."""
    if not enabled or not err.isatty():
        yield lambda n: None
        return
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
    except ImportError:
        yield lambda n: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(file=err),
        transient=True,
    )
    with bar:
        task = bar.add_task(label, total=total, rate="")

        def advance(n: int) -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            if speed:
                bar.update(task, rate=f"{speed:,.0f} records/s")

        yield advance
