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
from lb.tslinks import TsLinks
from netkit.connection import Closed, Connection, EndOfInput
from netkit.framing import LineTooLong
from netkit.listeners import format_address
from netkit.logs import EventSummary
from netkit.loop import READ, WRITE, EventLoop, Watch
from netkit.room import IdleOrder
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
# Clients at once; past it one makes room for a new one (netkit.room: a silent
# one first), or the new one is refused.
DEFAULT_MAX_CLIENTS = 1024


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
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        super().__init__(listener, loop)
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.max_clients = max_clients
        self.balancer = Balancer(timeout)
        self.watcher = watcher
        # TSs that fail the handshake: an impostor may list any number of them.
        self.refusals = EventSummary(log, REFUSAL_LOG_INTERVAL)
        # Clients' comings and goings: a line each, until a flood makes them counts.
        self.arrivals = EventSummary(
            log, REFUSAL_LOG_INTERVAL, level=logging.INFO, burst=ARRIVALS_SHOWN
        )
        self.max_unanswered = max_unanswered
        self.links = TsLinks(
            self.loop, self.balancer, self.refusals, timeout, set(servers or ()), tls, server_name
        )
        self.clients: IdleOrder[Client] = IdleOrder()  # netkit.room: who makes room
        self._dirty: set[Client] = set()
        # Wakes the loop at the next query deadline or TS (re)connection attempt.
        self._alarm = self.loop.alarm(lambda: None)
        self.loop.add_turn_hook(self._after_turn)
        self.loop.call_later(REFUSAL_LOG_INTERVAL, self._summarize)
        if idle_timeout:
            self.loop.call_later(self._sweep_interval, self._sweep_idle)

    def starting(self) -> None:
        self.links.start()
        self._alarm.set(self._next_deadline())
        if self.watcher is not None:
            self._watcher_watch = self.loop.watch(
                self.watcher.wakeup, lambda _: self._refresh(), READ
            )
            self.watcher.start()

    def close_connections(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        for client in list(self.clients):
            self._drop_client(client)
        self.links.close()
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
        self.links.tend(now)
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

    def _refresh(self) -> None:
        assert self.watcher is not None
        listed = self.watcher.take()
        if listed is not None:
            self.links.listed(listed)
            self._alarm.set(self._next_deadline())

    def _next_deadline(self) -> float | None:
        deadlines = self.links.deadlines()
        query_deadline = self.balancer.next_deadline()
        if query_deadline is not None:
            deadlines.append(query_deadline)
        return min(deadlines, default=None)

    # Clients

    def on_connection(self, sock: socket.socket, address: object) -> None:
        name = format_address(address)
        now = self.loop.time()
        if len(self.clients) >= self.max_clients:
            # One waiting for answers, or with answers still to go out, is not idle,
            # however long it has been silent.
            idlest = self.clients.idlest(
                now, lambda c: not self.balancer.unanswered(c) and not c.conn.wants_write
            )
            if idlest is None:
                sock.close()
                self.refusals.note(
                    "clients refused at the limit",
                    f"{name} ({self.max_clients} connected, none silent or idle for a second)",
                    now,
                )
                return
            self.arrivals.note("idle clients closed to make room", str(idlest), now)
            self._drop_client(idlest)
        try:
            conn = Connection(sock, name, max_line=MAX_QUERY_LINE)
        except OSError:  # reset before we got to it
            sock.close()
            return
        client = Client(conn, self.loop.watch(sock, lambda _: None, 0))
        client.watch.handler = partial(self._client_ready, client)
        self.clients.add(client, now)
        self.balancer.open_client(client)
        self.arrivals.note("clients connected", name, now)
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
            if lines:  # a complete line: not silent (netkit.room)
                self.clients.heard(client, now)
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
        self.clients.remove(client)
        self.balancer.close_client(client)

    # Output

    def _deliver(self, now: float) -> None:
        """Sends what the balancer queued, and updates what each peer waits for."""
        for peer, data in self.balancer.take_output().items():
            if isinstance(peer, Client):
                self._dirty.add(peer)
                self.clients.heard(peer, now)  # answered now: not idle since
                try:
                    peer.conn.send(data)
                except Closed as exc:
                    self.arrivals.note("clients gone", f"{peer}: {exc}", self.loop.time())
                    self._drop_client(peer)
            else:
                self.links.send(peer, data, now)
        dirty, self._dirty = self._dirty, set()
        for client in dirty:
            if client in self.clients:
                self._sync_client(client)
