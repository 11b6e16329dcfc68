"""``python -m catalog``: run the catalog server (see docs/catalog.md)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from catalog.client import DEFAULT_PORT
from catalog.persist import StateDirError, default_state_dir
from catalog.records import DEFAULT_LIFETIME, MAX_RECORDS
from catalog.server import (
    MAX_CONNECTIONS,
    REQUEST_TIMEOUT,
    SAVE_INTERVAL,
    CatalogServer,
    Config,
)
from netkit.cliargs import positive_int, positive_seconds, program_name
from netkit.logs import setup_logging
from netkit.signals import StopSignals

log = logging.getLogger("catalog")


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port from 1 to 65534 (the catalog also uses the next port)"
        )
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=program_name("python -m catalog"),
        description="A cctools-compatible catalog server: services announce themselves over "
        "UDP port P (or TCP P+1), clients query it over HTTP on TCP P.",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; "
        "0.0.0.0 or :: to serve the network)",
    )
    parser.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"port P (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--lifetime",
        type=positive_seconds,
        default=DEFAULT_LIFETIME,
        help=f"seconds a record lives without an update (default {DEFAULT_LIFETIME})",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="where records are kept across restarts "
        "(default $XDG_STATE_HOME/dht-catalog/PORT, i.e. ~/.local/state/dht-catalog/PORT)",
    )
    parser.add_argument(
        "--save-interval",
        type=positive_seconds,
        default=SAVE_INTERVAL,
        help="most seconds between two saves of the state file when records changed "
        f"(default {SAVE_INTERVAL:g}; what arrives meanwhile is in its journal)",
    )
    parser.add_argument(
        "--max-records",
        type=positive_int,
        default=MAX_RECORDS,
        help=f"most records kept at once (default {MAX_RECORDS})",
    )
    parser.add_argument(
        "--request-timeout",
        type=positive_seconds,
        default=REQUEST_TIMEOUT,
        help="seconds a peer has to send its whole request or update "
        f"(default {REQUEST_TIMEOUT:g})",
    )
    parser.add_argument(
        "--max-connections",
        type=positive_int,
        help=f"most TCP connections at once; beyond, the one idle for longest is closed "
        f"(default {MAX_CONNECTIONS}, fewer if the open file limit is lower)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log every request")
    parser.add_argument("--quiet", action="store_true", help="log only warnings and errors")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    config = Config(
        host=args.host,
        port=args.port,
        lifetime=args.lifetime,
        state_dir=args.state_dir or default_state_dir(args.port),
        save_interval=args.save_interval,
        max_records=args.max_records,
        request_timeout=args.request_timeout,
        max_connections=args.max_connections or MAX_CONNECTIONS,
        explicit_max_connections=args.max_connections is not None,
    )
    # Handlers before the sockets: a signal from now on stops the catalog cleanly,
    # through run(), which saves the records.
    signals = StopSignals(defer=True)
    try:
        server = CatalogServer(config)
    except (OSError, StateDirError) as exc:
        log.error("%s", exc.strerror if isinstance(exc, OSError) and exc.strerror else exc)
        return 1
    signals.attach(server.stop)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
