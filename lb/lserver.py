"""The LS: one selectors loop over the clients, the TS links and the catalog watch.

``python -m lb.ls PORT [TS_HOST TS_PORT]... [--project NAME] [--timeout 5]``

The loop does the socket I/O and the time-keeping; what to send where is
decided by ``lb.balancer.Balancer``. Per turn: wait for sockets (no longer
than the next query deadline or TS reconnection), feed what arrived to the
balancer, expire due queries, (re)connect due TSs, then send out what the
balancer queued.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from functools import partial

from catalog.client import catalog_addresses
from lb.balancer import Balancer
from lb.cli import add_logging_options, start_program
from lb.discovery import CatalogWatcher, Endpoint
from lb.protocol import MAX_QUERY_LINE, line_too_long_answer
from lb.tslink import CONNECTING, DOWN, RESOLVING, UP, TsLink
from netkit.accepting import Acceptor
from netkit.addresses import AddressError
from netkit.cliargs import port_number, positive_seconds
from netkit.connection import Closed, Connection, EndOfInput
from netkit.framing import LineTooLong
from netkit.listeners import format_address, open_listener
from netkit.loop import READ, WRITE, EventLoop, Watch

log = logging.getLogger("lb.ls")

DEFAULT_TIMEOUT = 5.0
DEFAULT_REFRESH = 5.0
# A client with this many queries unanswered is not read from until some are
# answered: its queries wait in its socket, not in our memory.
MAX_UNANSWERED = 10_000


class Client:
    """A client of the LS. ``reading`` turns false at its EOF; the LS then
    sends the answers still due and closes."""

    __slots__ = ("conn", "reading", "watch")

    def __init__(self, conn: Connection, watch: Watch) -> None:
        self.conn = conn
        self.reading = True
        self.watch = watch

    def __str__(self) -> str:
        return self.conn.name


class LoadBalancer:
    """The LS's event-loop policy around the sans-IO ``Balancer``: feed it what
    arrives, wake it at its deadlines, send what it queues, keep the TS links up."""

    def __init__(
        self,
        listener: socket.socket,
        timeout: float = DEFAULT_TIMEOUT,
        servers: list[Endpoint] | None = None,
        watcher: CatalogWatcher | None = None,
        max_unanswered: int = MAX_UNANSWERED,
        loop: EventLoop | None = None,
    ) -> None:
        self.loop = loop or EventLoop()
        self.listener = listener
        self.timeout = timeout
        self.balancer = Balancer(timeout)
        self.static = set(servers or ())
        self.wanted = set(self.static)  # the static TSs and those the catalog lists
        self.watcher = watcher
        self.max_unanswered = max_unanswered
        self.acceptor = Acceptor(self.loop, listener, self._accept)
        self.links: dict[Endpoint, TsLink] = {}
        self._link_watches: dict[TsLink, Watch] = {}
        self.clients: set[Client] = set()
        self._dirty: set[Client] = set()
        # Wakes the loop at the next query deadline or TS (re)connection attempt.
        self._alarm = self.loop.alarm(lambda: None)
        self.loop.add_turn_hook(self._after_turn)

    def serve_forever(self) -> None:
        """Serves until ``stop()``."""
        for endpoint in sorted(self.static):
            self._add_link(endpoint)
        if self.watcher is not None:
            self._watcher_watch = self.loop.watch(
                self.watcher.wakeup, lambda _: self._refresh(self.loop.time()), READ
            )
            self.watcher.start()
        self.loop.run()

    def stop(self) -> None:
        """Ends ``serve_forever``; safe to call from a signal handler."""
        self.loop.stop()

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        for client in list(self.clients):
            self._drop_client(client)
        for endpoint in list(self.links):
            self._remove_link(endpoint)
        self.acceptor.close()
        self.listener.close()
        self.loop.close()
        stats = self.balancer.stats
        log.info(
            "LS stopped: %d answered, %d timed out, %d invalid; %d late or extra answers ignored",
            stats.answered,
            stats.timed_out,
            stats.invalid,
            stats.ignored,
        )

    def _after_turn(self) -> None:
        """After each turn's input: time-outs, due connection attempts, output."""
        now = self.loop.time()
        self.balancer.expire(now)
        self._tend_links(now)
        self._deliver(now)
        self._alarm.set(self._next_deadline())

    def _next_deadline(self) -> float | None:
        deadlines = [link.due for link in self.links.values() if link.state != UP]
        query_deadline = self.balancer.next_deadline()
        if query_deadline is not None:
            deadlines.append(query_deadline)
        return min(deadlines, default=None)

    # Clients

    def _accept(self, sock: socket.socket, address: object) -> None:
        name = format_address(address)
        try:
            conn = Connection(sock, name, max_line=MAX_QUERY_LINE)
        except OSError:  # reset before we got to it
            sock.close()
            return
        client = Client(conn, self.loop.watch(sock, lambda _: None, 0))
        client.watch.handler = partial(self._client_ready, client)
        self.clients.add(client)
        self.balancer.open_client(client)
        log.info("client %s connected", name)
        self._dirty.add(client)

    def _client_ready(self, client: Client, mask: int) -> None:
        self._dirty.add(client)
        if mask & WRITE:
            try:
                client.conn.flush()
            except Closed as exc:
                log.info("client %s gone: %s", client, exc)
                self._drop_client(client)
                return
        if mask & READ:
            self._read_client(client, self.loop.time())

    def _read_client(self, client: Client, now: float) -> None:
        try:
            lines = client.conn.read_lines()
        except LineTooLong as exc:
            log.warning("client %s sent a line over %d bytes; closing", client, MAX_QUERY_LINE)
            client.reading = False
            self.balancer.client_lines(client, exc.lines, now)
            self.balancer.client_error(client, line_too_long_answer())
        except EndOfInput as eof:
            # No more queries (a last one without its newline still counts), but
            # the answers still due go out.
            log.debug("client %s: %s", client, eof)
            client.reading = False
            if eof.rest:
                self.balancer.client_lines(client, [eof.rest], now)
        except Closed as exc:
            # A failed receive: if the client is gone, sending the answers due fails and drops it.
            log.debug("client %s: %s", client, exc)
            client.reading = False
        else:
            self.balancer.client_lines(client, lines, now)

    def _sync_client(self, client: Client) -> None:
        conn = client.conn
        unanswered = self.balancer.unanswered(client)
        if not client.reading and not unanswered and not conn.wants_write:
            log.info("client %s done", client)
            self._drop_client(client)
            return
        events = WRITE if conn.wants_write else 0
        if client.reading and not conn.backlogged and unanswered < self.max_unanswered:
            events |= READ
        client.watch.set(events)

    def _drop_client(self, client: Client) -> None:
        client.watch.close()
        client.conn.close()
        self.clients.discard(client)
        self.balancer.close_client(client)

    # TSs

    def _add_link(self, endpoint: Endpoint) -> None:
        self.links[endpoint] = TsLink(*endpoint, connect_timeout=self.timeout)
        self._tend_links(self.loop.time())
        self._alarm.set(self._next_deadline())

    def _remove_link(self, endpoint: Endpoint) -> None:
        link = self.links.pop(endpoint)
        self._forget_socket(link)
        self.balancer.close_server(link)
        link.close()

    def _forget_socket(self, link: TsLink) -> None:
        watch = self._link_watches.pop(link, None)
        if watch is not None:
            watch.close()

    def _refresh(self, now: float) -> None:
        assert self.watcher is not None
        listed = self.watcher.take()
        if listed is None:
            return
        self.wanted = self.static | listed
        for endpoint in sorted(self.wanted - self.links.keys()):
            log.info("TS %s:%d is listed in the catalog; adding it", *endpoint)
            self._add_link(endpoint)
        for endpoint in sorted(self.links.keys() - self.wanted):
            if self.links[endpoint].state == UP:
                # A catalog restarted without its records lists no TS until each
                # announces again (a minute, by default); a TS still connected goes
                # on answering until then, and is dropped when its connection breaks.
                continue
            log.info("TS %s:%d is no longer listed in the catalog; dropping it", *endpoint)
            self._remove_link(endpoint)

    def _link_ready(self, link: TsLink, mask: int) -> None:
        now = self.loop.time()
        if link.state == DOWN:
            return  # dropped earlier in this turn (the catalog no longer lists it)
        if link.state == CONNECTING:
            reason = link.finish_connect()
            if reason:
                self._link_down(link, now, reason)
            else:
                self.balancer.open_server(link)
                self._sync_link(link)
            return
        assert link.conn is not None
        try:
            if mask & WRITE:
                link.conn.flush()
            if mask & READ:
                self.balancer.server_lines(link, link.conn.read_lines(), now)
        except (Closed, LineTooLong) as exc:
            self._link_down(link, now, str(exc))
            return
        self._sync_link(link)

    def _link_down(self, link: TsLink, now: float, reason: str) -> None:
        endpoint = (link.host, link.port)
        if endpoint not in self.wanted:
            log.info(
                "TS %s is no longer listed in the catalog and its connection is gone (%s); "
                "dropping it",
                link,
                reason,
            )
            self._remove_link(endpoint)
            return
        self._forget_socket(link)
        self.balancer.close_server(link)
        link.fail(now, reason)

    def _tend_links(self, now: float) -> None:
        """Starts due connection attempts and gives up on those taking too long."""
        for link in self.links.values():
            if link.state == UP or link.due > now:
                continue
            if link.state == CONNECTING:
                self._link_down(link, now, "connect timed out")
            elif link.state in (DOWN, RESOLVING):
                link.connect(now)
                if link.state == CONNECTING:
                    self._sync_link(link)

    def _sync_link(self, link: TsLink) -> None:
        assert link.sock is not None
        if link.state == CONNECTING:
            events = WRITE
        else:
            assert link.conn is not None
            events = READ | (WRITE if link.conn.wants_write else 0)
        watch = self._link_watches.get(link)
        if watch is None or watch.fileobj is not link.sock:
            if watch is not None:
                watch.close()
            watch = self._link_watches[link] = self.loop.watch(
                link.sock, partial(self._link_ready, link), 0
            )
        watch.set(events)

    # Output

    def _deliver(self, now: float) -> None:
        """Sends what the balancer queued, and updates what each peer waits for."""
        for peer, data in self.balancer.take_output().items():
            if isinstance(peer, Client):
                self._dirty.add(peer)
                try:
                    peer.conn.send(data)
                except Closed as exc:
                    log.info("client %s gone: %s", peer, exc)
                    self._drop_client(peer)
            else:
                self._send_to_link(peer, data, now)
        dirty, self._dirty = self._dirty, set()
        for client in dirty:
            if client in self.clients:
                self._sync_client(client)

    def _send_to_link(self, link: TsLink, data: bytes, now: float) -> None:
        conn = link.conn
        if link.state != UP or conn is None:
            return
        if conn.backlogged:
            if not link.dropping:
                log.warning("TS %s is not reading its queries; skipping it until it does", link)
                link.dropping = True
            return
        link.dropping = False
        try:
            conn.send(data)
        except Closed as exc:
            self._link_down(link, now, str(exc))
            return
        self._sync_link(link)


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
        "--project", help="also use every TS of this project listed in the catalog (CATALOG_HOST)"
    )
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
    signals = start_program(args)
    watcher = None
    if args.project:
        try:
            watcher = CatalogWatcher(args.project, args.refresh, catalog_addresses())
        except AddressError as exc:
            parser.exit(2, f"{parser.prog}: bad CATALOG_HOST: {exc}\n")
    try:
        listener = open_listener(args.host, args.port)
    except OSError as exc:
        parser.exit(1, f"{parser.prog}: {exc.strerror or exc}\n")
    server = LoadBalancer(listener, args.timeout, servers, watcher)
    log.info(
        "LS listening on port %d; TSs: %s; time-out %g s",
        listener.getsockname()[1],
        ", ".join(f"{host}:{port}" for host, port in servers) or "none fixed",
        args.timeout,
    )
    if args.project:
        log.info("taking TSs of project %r from the catalog every %g s", args.project, args.refresh)
    signals.attach(server.stop)
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
