"""What every command shares: the two consoles, the one-line usage error, progress, tables."""
from __future__ import annotations

import sys

from rich.console import Console

# Off a terminal (a pipe, a file, journald) rich would squeeze tables to 80 columns.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out = Console(width=None if sys.stdout.isatty() else 160)


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit code 2."""


def progress():
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def print_mapping(title: str, data: dict) -> None:
    from rich.table import Table

    t = Table(title=title, show_header=False)
    for k, v in data.items():
        t.add_row(k, str(v))
    out.print(t)
