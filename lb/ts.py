"""A TS: answers the names its table holds, and says nothing about the others.

``python -m lb.ts PORT TABLE_FILE [--project NAME]``

Runs on the event-loop core (``netkit.loop``): the listening socket and the
connected LSs (or ``nc`` users). With ``--project`` it announces itself to the catalog (type
``dns-ts``) at start and every ``--announce-interval`` seconds.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from functools import partial

from catalog.client import Announcer, catalog_addresses
from lb.cli import (
    add_logging_options,
    assignment_file,
    start_program,
)
from lb.discovery import ts_record
from lb.protocol import MAX_QUERY_LINE, decode_ts_query, encode_ts_answer
from lb.table import DnsTable, TableError, load_table
from netkit.accepting import Acceptor
from netkit.addresses import AddressError
from netkit.cliargs import port_number, positive_seconds
from netkit.connection import Closed, Connection, EndOfInput
from netkit.framing import LineTooLong
from netkit.listeners import format_address, open_listener
from netkit.loop import READ, WRITE, EventLoop, Watch

log = logging.getLogger("lb.ts")

DEFAULT_ANNOUNCE_INTERVAL = 60.0


def reply(table: DnsTable, line: bytes) -> bytes | None:
    """The TS's reply to one request line, or None: silence when the table lacks
    the name, and for a line that is not a request."""
    request = decode_ts_query(line)
    if request is None:
        return None
    query_id, name = request
    answer = table.lookup(name)
    if answer is None:
        return None
    return encode_ts_answer(query_id, answer)


class Peer:
    """A connection to the TS; ``reading`` turns false at its EOF, and the
    connection closes once the replies already due are sent."""

    __slots__ = ("conn", "reading", "watch")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.reading = True
        self.watch: Watch | None = None


class TopLevelServer:
    """The TS's event-loop policy: answer what the table holds, read only while
    the replies keep flowing out."""

    def __init__(
        self,
        listener: socket.socket,
        table: DnsTable,
        announcer: Announcer | None = None,
        loop: EventLoop | None = None,
    ) -> None:
        self.loop = loop or EventLoop()
        self.listener = listener
        self.table = table
        self.announcer = announcer
        self.acceptor = Acceptor(self.loop, listener, self._accept)
        self.peers: set[Peer] = set()

    def serve_forever(self) -> None:
        """Serves until ``stop()``."""
        if self.announcer is not None:
            self.announcer.start(self.loop)
        self.loop.run()

    def stop(self) -> None:
        """Ends ``serve_forever``; safe to call from a signal handler."""
        self.loop.stop()

    def close(self) -> None:
        if self.announcer is not None:
            self.announcer.close()
        for peer in list(self.peers):
            self._drop(peer)
        self.acceptor.close()
        self.listener.close()
        self.loop.close()

    def _accept(self, sock: socket.socket, address: object) -> None:
        name = format_address(address)
        try:
            conn = Connection(sock, name, max_line=MAX_QUERY_LINE)
        except OSError:  # reset before we got to it
            sock.close()
            return
        peer = Peer(conn)
        peer.watch = self.loop.watch(sock, partial(self._ready, peer), 0)
        self.peers.add(peer)
        log.info("%s connected", name)
        self._sync(peer)

    def _ready(self, peer: Peer, events: int) -> None:
        conn = peer.conn
        try:
            if events & WRITE:
                conn.flush()
            if events & READ:
                self._answer(peer)
        except (Closed, LineTooLong) as exc:
            log.info("%s: %s; closing", conn.name, exc)
            self._drop(peer)
            return
        self._sync(peer)

    def _answer(self, peer: Peer) -> None:
        conn = peer.conn
        try:
            lines = conn.read_lines()
        except EndOfInput as eof:
            # No more requests; a last line without its newline is still one,
            # and the replies already due still go out.
            log.info("%s disconnected", conn.name)
            peer.reading = False
            lines = [eof.rest] if eof.rest else []
        replies = []
        for line in lines:
            answer = reply(self.table, line)
            log.debug("%s asked %.300r: %r", conn.name, line, answer or "not here")
            if answer is not None:
                replies.append(answer)
        if replies:
            conn.send(b"".join(replies))

    def _sync(self, peer: Peer) -> None:
        conn = peer.conn
        if not peer.reading and not conn.wants_write:
            self._drop(peer)
            return
        events = WRITE if conn.wants_write else 0
        if peer.reading and not conn.backlogged:
            events |= READ
        assert peer.watch is not None
        peer.watch.set(events)

    def _drop(self, peer: Peer) -> None:
        if peer.watch is not None:
            peer.watch.close()
        peer.conn.close()
        self.peers.discard(peer)


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
        "--project", help="announce this TS to the catalog (CATALOG_HOST) under this project"
    )
    parser.add_argument(
        "--announce-interval",
        type=positive_seconds,
        default=DEFAULT_ANNOUNCE_INTERVAL,
        help="seconds between catalog announcements (default %(default)g)",
    )
    parser.add_argument("--host", default="", help="address to listen on (default: all interfaces)")
    add_logging_options(parser)
    return parser


def main(argv: list[str] | None = None, default_table: str | None = None) -> int:
    """The TS program; ``default_table`` is the assignment's file name for ts1/ts2."""
    parser = build_parser(default_table)
    args = parser.parse_args(argv)
    signals = start_program(args)
    path = args.table
    if path is None:  # ts1.py or ts2.py without a table argument
        assert default_table is not None
        path = assignment_file(default_table)
    try:
        table = load_table(path)
    except TableError as exc:
        parser.exit(1, f"{parser.prog}: {exc}\n")
    try:
        listener = open_listener(args.host, args.port)
    except OSError as exc:
        parser.exit(1, f"{parser.prog}: {exc.strerror or exc}\n")
    port = listener.getsockname()[1]
    announcer = None
    if args.project:
        try:
            catalogs = catalog_addresses()
        except AddressError as exc:
            parser.exit(2, f"{parser.prog}: bad CATALOG_HOST: {exc}\n")
        announcer = Announcer(
            lambda: ts_record(port, args.project, len(table), args.announce_interval),
            interval=args.announce_interval,
            catalogs=catalogs,
        )
    log.info("TS serving %d names from %s on port %d", len(table), path, port)
    if announcer is not None:
        log.info("announcing project %r to %s", args.project, catalog_hosts(announcer.catalogs))
    server = TopLevelServer(listener, table, announcer)
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
