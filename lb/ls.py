"""The assignment's ls.py, and ``python -m lb.ls``: the LS program (the server is ``lb.lserver``).

``python lb/ls.py lsListenPort ts1Hostname ts1ListenPort ts2Hostname ts2ListenPort``
(any number of TS pairs, plain text as in the assignment), or ``--project NAME``
to take them from the catalog as well: those that prove the project's secret.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if not __package__:  # run as a file, as the assignment does: put the repository on the path
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from catalog.client import catalog_addresses
from lb.cli import add_logging_options, add_secret_option, connection_limit, start_program
from lb.discovery import TS_TYPE, CatalogWatcher, Endpoint
from lb.lserver import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_REFRESH,
    DEFAULT_TIMEOUT,
    LoadBalancer,
)
from netkit.addresses import AddressError
from netkit.cliargs import nonnegative_seconds, port_number, positive_int, positive_seconds
from netkit.listeners import open_listener
from netkit.security import SecretError, load_secret, service_name

log = logging.getLogger("lb.ls")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="The load-balancing server (LS): resolves each client's host names "
        "by asking every TS at once and relaying the first answer.",
    )
    parser.add_argument("port", type=port_number, help="TCP port to listen on (0: any)")
    parser.add_argument(
        "servers",
        nargs="*",
        metavar="TS_HOST TS_PORT",
        help="the TSs, as host and port pairs (any number)",
    )
    parser.add_argument(
        "--project",
        help="also use every TS of this project listed in the catalog (CATALOG_HOST) that "
        "proves the project's secret (mutual TLS)",
    )
    add_secret_option(parser, "the secret the catalog's TSs must hold (the pairs are plain text)")
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        help="seconds to wait for a TS answer before NAME - TIMED OUT (default %(default)g)",
    )
    parser.add_argument(
        "--refresh",
        type=positive_seconds,
        default=DEFAULT_REFRESH,
        help="seconds between catalog queries with --project (default %(default)g)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=nonnegative_seconds,
        default=DEFAULT_IDLE_TIMEOUT,
        help="close a client with no query waiting that has sent nothing for this long "
        "(default %(default)g; 0: never)",
    )
    parser.add_argument(
        "--max-clients",
        type=positive_int,
        default=None,
        help=f"clients connected at once (default {DEFAULT_MAX_CLIENTS}, less if the open file "
        "limit is lower); past it a new one takes the place of the one idle longest, if that "
        "has sent nothing for a second, and is refused if none has",
    )
    parser.add_argument("--host", default="", help="address to listen on (default: all interfaces)")
    add_logging_options(parser)
    return parser


def server_pairs(parser: argparse.ArgumentParser, words: list[str]) -> list[Endpoint]:
    """The ``TS_HOST TS_PORT`` pairs of the command line; exits with a message if malformed."""
    if len(words) % 2:
        parser.error("TSs are given as pairs: TS_HOST TS_PORT")
    pairs = []
    for host, port in zip(words[::2], words[1::2], strict=True):
        try:
            number = port_number(port)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"TS {host}: {exc}")
        if not number:
            parser.error(f"TS {host}: port 0 cannot be connected to")
        pairs.append((host, number))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    servers = server_pairs(parser, args.servers)
    if not servers and not args.project:
        parser.error("give at least one TS_HOST TS_PORT pair, or --project")
    if args.secret_file and not args.project:
        parser.error("--secret-file goes with --project (the TSs given as pairs are plain text)")
    signals = start_program(args)
    watcher = secret = None
    if args.project:
        try:
            secret = load_secret(args.secret_file)
            watcher = CatalogWatcher(
                args.project, args.refresh, catalog_addresses(), trusted=secret.record_signed_by_us
            )
        except SecretError as exc:
            parser.exit(2, f"{parser.prog}: {exc}\n")
        except AddressError as exc:
            parser.exit(2, f"{parser.prog}: bad CATALOG_HOST: {exc}\n")
    try:
        listener = open_listener(args.host, args.port)
    except OSError as exc:
        parser.exit(1, f"{parser.prog}: {exc.strerror or exc}\n")
    server = LoadBalancer(
        listener,
        args.timeout,
        servers,
        watcher,
        tls=secret.client_context() if secret is not None else None,
        server_name=service_name(TS_TYPE, args.project) if args.project else None,
        idle_timeout=args.idle_timeout,
        max_clients=connection_limit(args.max_clients, DEFAULT_MAX_CLIENTS),
    )
    log.info(
        "LS listening on port %d; TSs: %s; time-out %g s",
        listener.getsockname()[1],
        ", ".join(f"{host}:{port}" for host, port in servers) or "none fixed",
        args.timeout,
    )
    if secret is not None:
        log.info(
            "taking TSs of project %r from the catalog every %g s: those holding the secret %s (%s)",
            args.project,
            args.refresh,
            secret.fingerprint,
            secret.path,
        )
    signals.attach(server.stop)
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
