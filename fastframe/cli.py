"""The ``fastframe`` command line."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import IMPLEMENTATION, __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastframe",
        description="Length-prefixed framing for TCP: servers, clients and tools.",
    )
    parser.add_argument(
        "--version", action="version", version=f"fastframe {__version__} ({IMPLEMENTATION} codec, Python {sys.version.split()[0]})"
    )
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
