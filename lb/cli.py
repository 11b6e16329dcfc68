"""Command-line pieces shared by the TS, the LS and the client."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from netkit.listeners import RESERVED_FDS, connection_capacity, raise_open_file_limit
from netkit.logs import setup_logging
from netkit.signals import StopSignals

SAMPLES = Path(__file__).resolve().parent / "samples"

log = logging.getLogger("lb")


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def add_secret_option(parser: argparse.ArgumentParser, role: str) -> None:
    """``--secret-file``, for a program of a project; ``role`` says what the secret does."""
    parser.add_argument(
        "--secret-file",
        type=Path,
        metavar="FILE",
        help=f"with --project: {role} (default: $DHT_SECRET_FILE, else ~/.config/dht/secret, "
        "created if missing; see docs/lb.md, Security)",
    )


def start_program(args: argparse.Namespace) -> StopSignals:
    """Logging as asked, and SIGINT/SIGTERM handled (``netkit.signals``): the
    server attaches its stop to the result once its loop exists."""
    setup_logging(args.verbose, args.quiet)
    return StopSignals()


def assignment_file(name: str) -> Path:
    """The assignment's file ``name``: in the current directory, as the assignment
    reads it, or else the copy shipped in lb/samples/ (so the commands work anywhere)."""
    here = Path(name)
    if here.exists():
        return here
    log.info("no %s in the current directory; using the sample %s", name, SAMPLES / name)
    return SAMPLES / name


def connection_limit(requested: int | None, default: int) -> int:
    """The connections a server holds at once: ``requested`` (a warning if the open
    file limit cuts it), else ``default``, at most what the limit allows."""
    wanted = default if requested is None else requested
    limit = raise_open_file_limit(wanted + RESERVED_FDS)
    return connection_capacity(wanted, limit, explicit=requested is not None)
