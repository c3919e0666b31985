"""The ``omniq-tasks`` command line: argument parsing and app import only."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omniq-tasks",
        description="Typed Python tasks on the OmniQ v1 protocol (Redis + Lua).",
    )
    parser.add_argument("--version", action="version", version=f"omniq-tasks {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stdout)
        return 0
    return 0
