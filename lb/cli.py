"""Command-line pieces shared by the TS, the LS and the client."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

from netkit.logs import setup_logging

SAMPLES = Path(__file__).resolve().parent / "samples"

log = logging.getLogger("lb")


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def start_program(args: argparse.Namespace) -> None:
    """Logging as asked, and SIGTERM handled like Ctrl-C, so that ``kill`` also
    stops a server through its clean-up path."""
    setup_logging(args.verbose, args.quiet)
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def assignment_file(name: str) -> Path:
    """The assignment's file ``name``: in the current directory, as the assignment
    reads it, or else the copy shipped in lb/samples/ (so the commands work anywhere)."""
    here = Path(name)
    if here.exists():
        return here
    log.info("no %s in the current directory; using the sample %s", name, SAMPLES / name)
    return SAMPLES / name
