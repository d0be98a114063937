"""Progress bars and summary tables (rich), shared by every long-running stage.

Bars show on a terminal and are silent otherwise (CI, tests, pipes) unless ATC_IL_PROGRESS=1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

T = TypeVar("T")
console = Console(stderr=True)


def enabled() -> bool:
    flag = os.environ.get("ATC_IL_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no", "")
    return sys.stderr.isatty()


def track(iterable: Iterable[T], description: str, total: int | None = None, show: bool | None = None) -> Iterator[T]:
    """Iterate with a progress bar (when enabled)."""
    if not (enabled() if show is None else show):
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        for item in iterable:
            yield item
            bar.advance(task)


def summary_table(title: str, rows: Mapping[str, object]) -> None:
    """Print a two-column summary table on stdout."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        if isinstance(value, float):
            value = f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.0f}"
        elif isinstance(value, int):
            value = f"{value:,}"
        table.add_row(str(key), str(value))
    Console().print(table)
