"""Logging set-up shared by the programs, so that every log line looks alike."""

from __future__ import annotations

import logging
import sys


def setup_logging(verbosity: int = 0, quiet: bool = False) -> None:
    """INFO by default, DEBUG with ``-v``, WARNING with ``--quiet``; to standard error."""
    level = logging.WARNING if quiet else logging.DEBUG if verbosity > 0 else logging.INFO
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
