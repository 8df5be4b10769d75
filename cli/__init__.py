"""`pathwatch`: one entry point, a subcommand per job.

The daemon's commands (run, calibrate, tail, view, keys, config) use `pathwatch.edge` only;
the model jobs (train, eval, export, bundle) import `pathwatch.export`, and with it torch,
inside their handlers. Bad input ends with one line on stderr and exit code 2, never a
traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

from rich.markup import escape

from . import bridge_commands, daemon_commands, model_commands
from .console import OneLineParser, UsageError, console, one_line


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="pathwatch", description="Diffusion-path anomaly monitor for "
                           "cameras.")
    sub = parser.add_subparsers(dest="command", required=True)
    model_commands.register(sub)
    daemon_commands.register(sub)
    bridge_commands.add_bridge_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `pathwatch ... | head` is normal use
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0
    except (UsageError, ValueError, OSError, RuntimeError) as e:
        # OSError: a file that exists where a folder should be, no permission, a full disk.
        message = str(e) if not isinstance(e, OSError) or not e.strerror else \
            f"{e.strerror}: {e.filename}" if e.filename else e.strerror
        console.print(f"[red]pathwatch {args.command}: error:[/] {escape(one_line(message))}",
                      highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    except ModuleNotFoundError as e:
        if e.name in ("torch", "safetensors", "onnx"):
            console.print(f"[red]pathwatch {args.command}: error:[/] needs {e.name}; install "
                          "the export extra with one runtime: pip install 'pathwatch[export,cpu]' (or [export,gpu])", highlight=False)
            return 2
        raise
