"""The TS program (the server is ``lb.tserver``): answers the names its table
holds, and says nothing about the others.

``python -m lb.ts PORT TABLE_FILE [--project NAME [--secret-file FILE] [--also-plain]]``

Runs on the event-loop core (``netkit.loop``): the listening socket and the
connected LSs (or ``nc`` users). Without ``--project`` it speaks the
assignment's plain text to anyone. With ``--project`` it announces itself to the
catalog (type ``dns-ts``, the record signed with the project's secret) at start
and every ``--announce-interval`` seconds, and serves only peers that complete a
mutual TLS handshake with that secret (``netkit.security``): the project's LSs.
A peer that speaks plain text gets one line saying so and is closed, unless
``--also-plain`` lets it be answered as by a TS without ``--project``.
"""

from __future__ import annotations

import argparse
import sys

from catalog.client import Announcer, catalog_addresses
from lb.cli import (
    add_logging_options,
    add_secret_option,
    assignment_file,
    connection_limit,
    start_program,
)
from lb.discovery import TS_TYPE, ts_record
from lb.table import TableError, load_table
from lb.tserver import DEFAULT_ANNOUNCE_INTERVAL, DEFAULT_MAX_CONNECTIONS, TopLevelServer, log
from netkit.addresses import AddressError
from netkit.cliargs import port_number, positive_int, positive_seconds
from netkit.listeners import open_listener
from netkit.security import SecretError, load_secret, require_service_name


def build_parser(default_table: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="A top-level DNS server (TS): answers 'NAME' or 'ID NAME' lines with the "
        "table's entry for NAME, and stays silent for names it does not hold.",
    )
    parser.add_argument("port", type=port_number, help="TCP port to listen on (0: any)")
    if default_table is None:
        parser.add_argument("table", help="table file: 'DomainName IPaddress A' lines")
    else:
        parser.add_argument(
            "table",
            nargs="?",
            default=None,
            help=f"table file (default: {default_table} here, else the shipped sample)",
        )
    parser.add_argument(
        "--project",
        help="announce this TS to the catalog (CATALOG_HOST) under this project, and serve "
        "only the project's LSs (mutual TLS with the project's secret)",
    )
    add_secret_option(parser, "the secret the LSs must hold, which also signs the catalog record")
    parser.add_argument(
        "--also-plain",
        action="store_true",
        help="with --project: also answer plain-text lines (the assignment's LS, nc); "
        "anyone who can connect can then read the table",
    )
    parser.add_argument(
        "--announce-interval",
        type=positive_seconds,
        default=DEFAULT_ANNOUNCE_INTERVAL,
        help="seconds between catalog announcements (default %(default)g)",
    )
    parser.add_argument(
        "--max-connections",
        type=positive_int,
        default=None,
        help=f"peers connected at once (default {DEFAULT_MAX_CONNECTIONS}, less if the open file "
        "limit is lower); past it a new one takes the place of the one idle longest for a "
        "second that has not proved the secret, and is refused if none has",
    )
    parser.add_argument("--host", default="", help="address to listen on (default: all interfaces)")
    add_logging_options(parser)
    return parser


def main(argv: list[str] | None = None, default_table: str | None = None) -> int:
    """The TS program; ``default_table`` is the assignment's file name for ts1/ts2."""
    parser = build_parser(default_table)
    args = parser.parse_args(argv)
    if not args.project and (args.secret_file or args.also_plain):
        parser.error("--secret-file and --also-plain go with --project (without it, plain text)")
    signals = start_program(args)
    path = args.table
    if path is None:  # ts1.py or ts2.py without a table argument
        assert default_table is not None
        path = assignment_file(default_table)
    try:
        table = load_table(path)
    except TableError as exc:
        parser.exit(1, f"{parser.prog}: {exc}\n")
    secret = None
    if args.project:
        try:
            secret = load_secret(args.secret_file)
            catalogs = catalog_addresses()
        except SecretError as exc:
            parser.exit(2, f"{parser.prog}: {exc}\n")
        except AddressError as exc:
            parser.exit(2, f"{parser.prog}: bad CATALOG_HOST: {exc}\n")
    try:
        listener = open_listener(args.host, args.port)
    except OSError as exc:
        parser.exit(1, f"{parser.prog}: {exc.strerror or exc}\n")
    port = listener.getsockname()[1]
    announcer = tls = None
    log.info("TS serving %d names from %s on port %d", len(table), path, port)
    if secret is not None:
        announcer = Announcer(
            lambda: secret.sign_record(
                ts_record(port, args.project, len(table), args.announce_interval)
            ),
            interval=args.announce_interval,
            catalogs=catalogs,
        )
        tls = secret.server_context()
        require_service_name(tls, TS_TYPE, args.project)
        log.info("announcing project %r to %s", args.project, catalog_hosts(catalogs))
        log.info("LSs must hold the secret %s (%s)", secret.fingerprint, secret.path)
        if args.also_plain:
            log.warning("also answering plain text (--also-plain): anyone can read the table")
    server = TopLevelServer(
        listener,
        table,
        announcer,
        tls=tls,
        plain_too=args.also_plain,
        max_connections=connection_limit(args.max_connections, DEFAULT_MAX_CONNECTIONS),
    )
    signals.attach(server.stop)
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0


def catalog_hosts(catalogs: list[tuple[str, int]]) -> str:
    return ", ".join(f"{host}:{port}" for host, port in catalogs)


if __name__ == "__main__":
    sys.exit(main())
