"""The LS: one selectors loop over the clients, the TS links and the catalog watch
(its program, ``python -m lb.ls``, is ``lb.ls``).

The TSs given as pairs speak the assignment's plain text. With ``--project``, the
LS also uses the project's TSs the catalog lists, but only those whose record
its secret signed and that then prove the secret in a mutual TLS handshake
(``netkit.security``): anyone can write to a catalog.

The loop does the socket I/O and the time-keeping; what to send where is
decided by ``lb.balancer.Balancer``. Per turn: wait for sockets (no longer
than the next query deadline or TS reconnection), feed what arrived to the
balancer, expire due queries, (re)connect due TSs, then send out what the
balancer queued.
"""

from __future__ import annotations

import logging
import socket
import ssl
from functools import partial

from lb.balancer import Balancer
from lb.discovery import CatalogWatcher, Endpoint
from lb.protocol import MAX_QUERY_LINE, line_too_long_answer
from lb.tslink import CONNECTING, DOWN, HANDSHAKING, RESOLVING, UP, TsLink
from netkit.connection import Closed, Connection, EndOfInput
from netkit.framing import LineTooLong
from netkit.listeners import format_address
from netkit.logs import EventSummary
from netkit.loop import READ, WRITE, EventLoop, Watch
from netkit.service import ListeningService

log = logging.getLogger("lb.ls")

DEFAULT_TIMEOUT = 5.0
DEFAULT_REFRESH = 5.0
# A client with this many queries unanswered is not read from until some are
# answered: its queries wait in its socket, not in our memory.
MAX_UNANSWERED = 10_000
REFUSAL_LOG_INTERVAL = 10.0
# A client with no query waiting that has sent nothing for this long is closed,
# as the hash table server and the herd close theirs (--idle-timeout, 0: never):
# idle connections, or a partial line never ended, must not be held forever.
DEFAULT_IDLE_TIMEOUT = 300.0
# Connections logged a line each per interval; a flood beyond that is counted.
ARRIVALS_SHOWN = 20


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


class LoadBalancer(ListeningService):
    """The LS's event-loop policy around the sans-IO ``Balancer``: feed it what
    arrives, wake it at its deadlines, send what it queues, keep the TS links up.

    ``servers`` are linked in plain text; the TSs ``watcher`` lists, with ``tls``
    (a client context) and ``server_name`` (the project's, for SNI), over TLS.
    """

    def __init__(
        self,
        listener: socket.socket,
        timeout: float = DEFAULT_TIMEOUT,
        servers: list[Endpoint] | None = None,
        watcher: CatalogWatcher | None = None,
        max_unanswered: int = MAX_UNANSWERED,
        loop: EventLoop | None = None,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        super().__init__(listener, loop)
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.balancer = Balancer(timeout)
        self.static = set(servers or ())
        self.wanted = set(self.static)  # the static TSs and those the catalog lists
        self.watcher = watcher
        self.tls = tls
        self.server_name = server_name
        # TSs that fail the handshake: an impostor may list any number of them.
        self.refusals = EventSummary(log, REFUSAL_LOG_INTERVAL)
        # Clients' comings and goings: a line each, until a flood makes them counts.
        self.arrivals = EventSummary(
            log, REFUSAL_LOG_INTERVAL, level=logging.INFO, burst=ARRIVALS_SHOWN
        )
        self.max_unanswered = max_unanswered
        self.links: dict[Endpoint, TsLink] = {}
        self._link_watches: dict[TsLink, Watch] = {}
        self.clients: set[Client] = set()
        self._dirty: set[Client] = set()
        # Wakes the loop at the next query deadline or TS (re)connection attempt.
        self._alarm = self.loop.alarm(lambda: None)
        self.loop.add_turn_hook(self._after_turn)
        self.loop.call_later(REFUSAL_LOG_INTERVAL, self._summarize)
        if idle_timeout:
            self.loop.call_later(self._sweep_interval, self._sweep_idle)

    def starting(self) -> None:
        for endpoint in sorted(self.static):
            self._add_link(endpoint, secure=False)  # the assignment's plain text
        if self.watcher is not None:
            self._watcher_watch = self.loop.watch(
                self.watcher.wakeup, lambda _: self._refresh(self.loop.time()), READ
            )
            self.watcher.start()

    def close_connections(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        for client in list(self.clients):
            self._drop_client(client)
        for endpoint in list(self.links):
            self._remove_link(endpoint)
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

    def _summarize(self) -> None:
        now = self.loop.time()
        self.refusals.flush(now)
        self.arrivals.flush(now)
        self.loop.call_later(REFUSAL_LOG_INTERVAL, self._summarize)

    @property
    def _sweep_interval(self) -> float:
        # Often enough that a client is closed within a few per cent past its time.
        return min(10.0, self.idle_timeout / 4)

    def _sweep_idle(self) -> None:
        now = self.loop.time()
        for client in list(self.clients):
            idle = now - client.conn.last_active
            if idle >= self.idle_timeout and not self.balancer.unanswered(client):
                self.arrivals.note("clients idle, closed", f"{client}: {idle:.0f} s", now)
                self._drop_client(client)
        self.loop.call_later(self._sweep_interval, self._sweep_idle)

    def _next_deadline(self) -> float | None:
        deadlines = [link.due for link in self.links.values() if link.state != UP]
        query_deadline = self.balancer.next_deadline()
        if query_deadline is not None:
            deadlines.append(query_deadline)
        return min(deadlines, default=None)

    # Clients

    def on_connection(self, sock: socket.socket, address: object) -> None:
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
        self.arrivals.note("clients connected", name, self.loop.time())
        self._dirty.add(client)

    def _client_ready(self, client: Client, mask: int) -> None:
        self._dirty.add(client)
        if mask & WRITE:
            try:
                client.conn.flush()
            except Closed as exc:
                self.arrivals.note("clients gone", f"{client}: {exc}", self.loop.time())
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
            # A failed receive (reset): the client is gone, and its queries with it,
            # not kept until they time out.
            self.arrivals.note("clients gone", f"{client}: {exc}", now)
            self._drop_client(client)
        else:
            self.balancer.client_lines(client, lines, now)

    def _sync_client(self, client: Client) -> None:
        conn = client.conn
        unanswered = self.balancer.unanswered(client)
        if not client.reading and not unanswered and not conn.wants_write:
            self.arrivals.note("clients done", str(client), self.loop.time())
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

    def _add_link(self, endpoint: Endpoint, secure: bool) -> None:
        tls = self.tls if secure else None
        self.links[endpoint] = TsLink(
            *endpoint, connect_timeout=self.timeout, tls=tls, server_name=self.server_name
        )
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
            self._add_link(endpoint, secure=True)
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
            reason = link.finish_connect(now)
            if reason:
                self._link_down(link, now, reason)
                return
            if link.state == UP:
                self.balancer.open_server(link)
            self._sync_link(link)
            return
        assert link.conn is not None
        handshaking = link.state == HANDSHAKING
        try:
            if mask & WRITE:
                link.conn.flush()
            if mask & READ:
                lines = link.read_lines(now)
                if handshaking and link.state == UP:
                    self.balancer.open_server(link)
                if self.balancer.server_lines(link, lines, now):
                    link.answered()
        except (Closed, LineTooLong) as exc:
            if handshaking:
                self._handshake_failed(link, now, str(exc))
            else:
                self._link_down(link, now, str(exc))
            return
        self._sync_link(link)

    def _handshake_failed(self, link: TsLink, now: float, reason: str) -> None:
        """A TS that does not prove our secret: an impostor (its record copied), a
        TS with another secret file, or one not speaking TLS. Reported once (and
        all of them rate-limited), then retried with backoff like a TS that is down."""
        reason = f"TLS handshake failed: {reason}"
        if not link.refused:
            self.refusals.note(
                "TSs skipped: they did not prove our secret", f"{link}: {reason}", now
            )
            link.refused = True
        self._link_down(link, now, reason, quietly=True)

    def _link_down(self, link: TsLink, now: float, reason: str, quietly: bool = False) -> None:
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
        link.fail(now, reason, quietly)

    def _tend_links(self, now: float) -> None:
        """Starts due connection attempts and gives up on those taking too long."""
        for link in self.links.values():
            if link.state == UP or link.due > now:
                continue
            if link.state == CONNECTING:
                self._link_down(link, now, "connect timed out")
            elif link.state == HANDSHAKING:
                self._handshake_failed(link, now, "no answer in time")
            elif link.state in (DOWN, RESOLVING):
                link.connect(now)
                if link.state == CONNECTING:
                    self._sync_link(link)

    def _sync_link(self, link: TsLink) -> None:
        assert link.sock is not None
        if link.state == CONNECTING:
            events = WRITE
        else:  # handshaking or up
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
                    self.arrivals.note("clients gone", f"{peer}: {exc}", self.loop.time())
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
