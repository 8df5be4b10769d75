"""What every command shares: the two consoles, the one-line usage error, progress, tables."""
from __future__ import annotations

import argparse
import math
import re
import sys

from rich.console import Console
from rich.markup import escape

# Off a terminal (a pipe, a file, journald) rich would squeeze tables to 80 columns.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out = Console(width=None if sys.stdout.isatty() else 160)


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors as one line (no usage block) and exit code 2."""

    def error(self, message: str):
        console.print(f"[red]{self.prog}: error:[/] {escape(one_line(message))} "
                      f"(see {self.prog} --help)", highlight=False, soft_wrap=True)
        raise SystemExit(2)


def one_line(text: str) -> str:
    """Control characters a user typed (a newline in an argument) shown escaped, so an
    error stays one line."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", lambda m: repr(m.group())[1:-1], text)


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def whole(minimum: int):
    """An argparse type: a whole number >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value
    parse.__name__ = f"whole number >= {minimum}"
    return parse


def plain_name(text: str) -> str:
    """An argparse type: a file name of letters, digits, '.', '_' and '-', no path."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a plain name (letters, digits, "
                                         "'.', '_', '-'; no '/' and no leading '.')")
    return text


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
