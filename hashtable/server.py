"""The hash table server's I/O: sockets in, bytes moved, nothing decided here.

It runs on the event-loop core (``netkit.loop``): one thread, one loop, many
clients. What each client's bytes mean is ``hashtable.protocol``'s business,
and who runs what, when, is ``hashtable.scheduler``'s; this module reads the
ready clients' lines into the scheduler and, once per turn (a turn hook),
lets it execute them, makes the turn's writes durable with ONE ``commit``
(group commit), and only then sends the turn's replies: nobody is ever told
about a write that a crash could lose.

What one client can cost is bounded (``Limits``, docs/protocol.md): request line
length, queued output, time, and connections in total.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from catalog.client import ANNOUNCE_INTERVAL, Announcer, Catalog
from hashtable.admission import Admission
from hashtable.protocol import AUTHENTICATION_REQUIRED, NOT_AUTHENTICATING, is_http_request
from hashtable.reporting import VERSION, Reporter
from hashtable.request import Outcome, Request
from hashtable.scheduler import (
    HANDSHAKING,
    LINGERING,
    OPEN,
    REFUSING,
    Client,
    Limits,
    Phase,
    Scheduler,
)
from hashtable.table import ReadJob
from netkit.connection import (
    AuthenticationFailed,
    Closed,
    Connection,
    EndOfInput,
    NotTls,
    TlsConnection,
)
from netkit.framing import LineTooLong
from netkit.listeners import format_address, host_of, shut_down_writing
from netkit.logs import EventSummary
from netkit.loop import READ, WRITE, EventLoop, Watch
from netkit.memory import release_free_memory
from netkit.service import ListeningService
from netkit.tls import TLS_RECORD_HANDSHAKE, TlsSession

log = logging.getLogger("hashtable.server")

DEFAULT_SUMMARY_INTERVAL = 10.0
SWEEP_INTERVAL = 1.0
REFUSAL_LOG_INTERVAL = 10.0
# Bytes a lingering connection may read and drop per turn.
_DISCARD = 256 * 1024
__all__ = ["VERSION", "Limits", "Server"]


class Database(Protocol):
    """What the server needs of ``hashtable.database.Database``."""

    needs_commit: bool

    def start_parsed(self, request: Request) -> Outcome | ReadJob: ...
    def commit(self) -> None: ...
    def maintain(self) -> None: ...
    def seconds_until_maintenance(self) -> float | None: ...
    def stats(self) -> dict[str, Any]: ...


class Peer(Client):
    """A client's scheduling state (``Client``) and its connection."""

    __slots__ = ("conn", "watch")

    def __init__(self, conn: Connection, watch: Watch, phase: Phase, since: float) -> None:
        super().__init__(conn.name, phase, since)
        self.conn = conn
        self.watch = watch


class Server(ListeningService):
    """Serves the table over TCP until ``stop()``.

    ``tls``: the server context (``Secret.server_context``): a mutual TLS
    handshake comes before any request; None serves plain text (``--no-auth``).
    ``sign``: signs the catalog record (``Secret.sign_record``). ``announce``: the
    record's own fields; the server announces to ``catalogs`` at start and every
    ``announce_interval`` seconds, each time once ``before_announce(record)`` (on the
    announcer's thread) says it may (``hashtable.singleton.ProjectGuard``).
    """

    def __init__(
        self,
        database: Database,
        listener: socket.socket,
        *,
        limits: Limits | None = None,
        announce: dict[str, Any] | None = None,
        catalogs: list[Catalog] | None = None,
        announce_interval: float = ANNOUNCE_INTERVAL,
        summary_interval: float = DEFAULT_SUMMARY_INTERVAL,
        tls: ssl.SSLContext | None = None,
        sign: Callable[..., dict[str, Any]] | None = None,
        before_announce: Callable[[dict[str, Any]], bool] | None = None,
        loop: EventLoop | None = None,
    ) -> None:
        super().__init__(listener, loop)
        self.db = database
        self.limits = limits = limits or Limits()
        self.scheduler = Scheduler(database.start_parsed, limits, clock=self.loop.time)
        self.port: int = listener.getsockname()[1]
        self.started = self.loop.time()
        # Wall-clock start, to a millisecond: tells apart two servers of a project
        # heard from in the same second (catalog.client.matching).
        self.start_time = round(time.time(), 3)
        self._peers: set[Peer] = set()
        self._dropped = 0  # connections closed since memory was last given back
        self.admission = Admission.for_limits(limits)
        self.reporter = Reporter(
            database, port=self.port, start_time=self.start_time, base=announce, sign=sign
        )
        self._announcer = (
            None
            if announce is None
            else Announcer(
                self._record,
                interval=announce_interval,
                catalogs=catalogs,
                before_send=before_announce,
            )
        )
        self._summary_interval = summary_interval
        self.tls = tls
        self.refusals = EventSummary(log, REFUSAL_LOG_INTERVAL)
        self._maintenance = self.loop.alarm(self._maintain)
        self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        self.loop.call_later(summary_interval, self._summarize)
        self.loop.add_turn_hook(self._after_turn)
        self._maintain()

    # ------------------------------------------------------------ running

    def serve(self) -> None:
        """Runs the loop until ``stop()``, then closes. Exceptions from the database (a
        storage failure, a failed mutation) end it: crash-only, the log is the truth."""
        try:
            self.serve_forever()
        finally:
            self.close()

    def starting(self) -> None:
        if self._announcer is not None:
            self._announcer.start(self.loop)

    def close_connections(self) -> None:
        if self._announcer is not None:
            self._announcer.close()
        for peer in list(self._peers):
            self._drop(peer, None)

    def _after_turn(self) -> bool:
        """The turn's work after its input: execute, commit once, then reply."""
        replied = self.scheduler.run()
        committed = self.db.needs_commit
        if committed:
            self.db.commit()
        for peer in replied:
            self._send_replies(peer)  # type: ignore[arg-type]  # the scheduler's clients are Peers
        if committed:
            self._maintain()  # the commit may have made a compaction or a sync due
        return bool(self.scheduler.busy)

    def _maintain(self) -> None:
        self.db.maintain()
        wait = self.db.seconds_until_maintenance()
        self._maintenance.set(None if wait is None else self.loop.time() + wait)

    # ------------------------------------------------------------ connections

    def on_connection(self, sock: socket.socket, address: Any) -> None:
        name = format_address(address)
        admitted, evicted = self.admission.arriving(host_of(address))
        for peer in evicted:
            self._drop(peer, "made room for newer connections (too many unauthenticated)")  # type: ignore[arg-type]
        if not admitted:
            sock.close()
            self.refusals.note(
                "connections refused at the connection limit",
                f"{name} ({self.limits.max_connections} authenticated clients connected)",
                self.loop.time(),
            )
            return
        limits = self.limits
        try:
            if self.tls is None:
                conn = Connection(sock, name, limits.max_request_bytes, limits.high_water)
            else:
                session = TlsSession(self.tls, server_side=True)
                conn = TlsConnection(
                    sock, name, session, limits.max_request_bytes, limits.high_water
                )
        except OSError:  # reset before we got to it
            sock.close()
            return
        phase = OPEN if self.tls is None else HANDSHAKING
        peer = Peer(conn, self.loop.watch(sock, lambda _: None, 0), phase, self.loop.time())
        peer.watch.handler = partial(self._ready, peer)
        self._peers.add(peer)
        self.admission.joined(peer, host_of(address), authenticated=phase is OPEN)
        peer.watch.set(READ)
        if phase is OPEN:
            log.info("client %s connected (%d connected)", peer.name, len(self._peers))

    def _ready(self, peer: Peer, events: int) -> None:
        if events & WRITE:
            try:
                peer.conn.flush()
            except Closed as exc:
                self._drop(peer, str(exc))
                return
            self._update(peer)
        if events & READ and peer in self._peers:
            self._read(peer)

    def _read(self, peer: Peer) -> None:
        phase = peer.phase
        if phase is REFUSING or phase is LINGERING:
            self._discard_input(peer)
            return
        if not peer.heard and self.tls is None and self._sent_tls_hello(peer):
            return
        if phase is HANDSHAKING:
            self.admission.heard(peer)  # not silent: it gives way after those who are
        try:
            lines = peer.conn.read_lines()
        except EndOfInput:
            # A clean end of input (e.g. `nc -N` after a file of requests): the
            # requests already read still get executed and answered. A last line
            # without its newline is not a request (docs/protocol.md).
            if phase is HANDSHAKING:
                self._drop(peer, "closed the connection during the TLS handshake")
                return
            self.scheduler.end_of_input(peer)
            self._update(peer)
            return
        except NotTls as exc:
            self._turn_away_plain_text(peer, exc.first)
            return
        except AuthenticationFailed as exc:
            self.refusals.note("failed TLS handshakes", f"{peer.name}: {exc}", self.loop.time())
            self._drop(peer, None)
            return
        except Closed as exc:  # a failure (reset, ...): nobody to answer
            self._drop(peer, str(exc))
            return
        except LineTooLong as exc:
            self.scheduler.refuse_line(peer, exc.lines, str(exc))
            return
        if phase is HANDSHAKING:
            if not peer.conn.established:
                self._update(peer)  # the handshake's output may wait for the socket
                return
            self.scheduler.authenticated(peer)
            self.admission.authenticate(peer)
            log.info("client %s connected (%d connected)", peer.name, len(self._peers))
        refusal = self.scheduler.received(peer, lines)
        if refusal is not None:
            self.refusals.note(
                "connections closed unheard", f"{peer.name} {refusal}", self.loop.time()
            )
            self._drop(peer, None)

    def _sent_tls_hello(self, peer: Peer) -> bool:
        """A plain server's first look at a connection: a TLS client hello gets a
        line saying this server does not authenticate (its TLS layer reports it
        as not TLS: no retrying), and the connection is closed."""
        try:
            first = peer.conn.sock.recv(1, socket.MSG_PEEK)
        except OSError:
            return False  # read_lines says what happened
        if first and first[0] == TLS_RECORD_HANDSHAKE:
            self._turn_away(peer, NOT_AUTHENTICATING, "spoke TLS to a --no-auth server")
            return True
        return False

    def _turn_away_plain_text(self, peer: Peer, first: bytes) -> None:
        if is_http_request(first.split(b"\n", 1)[0]):
            self.refusals.note(
                "connections closed unheard", f"{peer.name} sent an HTTP request", self.loop.time()
            )
            self._drop(peer, None)
        else:
            self._turn_away(peer, AUTHENTICATION_REQUIRED, "spoke plain text to a TLS server")

    def _turn_away(self, peer: Peer, line: bytes, why: str) -> None:
        """Writes ``line`` directly (outside any TLS), half-closes, and lingers."""
        self.refusals.note("connections turned away", f"{peer.name} {why}", self.loop.time())
        peer.heard = True
        try:
            peer.conn.sock.send(line)
        except OSError:
            self._drop(peer, None)
            return
        shut_down_writing(peer.conn.sock)
        self.scheduler.turn_away(peer)
        peer.watch.set(READ)

    def _discard_input(self, peer: Peer) -> None:
        # Lingering: unread input makes the kernel reset the connection, which can
        # destroy the answer before the client reads it; so read and drop it.
        try:
            if not peer.conn.sock.recv(_DISCARD):
                self._drop(peer, "closed after its last answer")
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._drop(peer, f"closed after its last answer ({exc.strerror})")

    def _send_replies(self, peer: Peer) -> None:
        replies = peer.replies
        peer.replies = bytearray()
        if peer not in self._peers:
            return
        try:
            peer.conn.send(replies)
        except Closed as exc:
            self._drop(peer, str(exc))
            return
        self._update(peer)

    def _update(self, peer: Peer) -> None:
        """Applies the scheduler's view of what to wait for, after output changed."""
        conn = peer.conn
        peer.queued = conn.buffered
        interest = self.scheduler.interest(peer, conn.wants_write, conn.backlogged)
        if interest.close is not None:
            self._drop(peer, interest.close)
            return
        if interest.shut_down:
            shut_down_writing(conn.sock)
        peer.watch.set(interest.events)

    def _drop(self, peer: Peer, reason: str | None) -> None:
        """Closes ``peer``'s connection. ``reason`` is logged: a line of its own for
        a client that was served, a count for one that never got that far (a
        flood of them must not flood the log)."""
        if peer not in self._peers:
            return
        self._peers.discard(peer)
        self._dropped += 1
        self.scheduler.left(peer)
        self.admission.left(peer)
        peer.watch.close()
        peer.conn.close()
        if reason is None:
            return
        if peer.phase is HANDSHAKING:
            self.refusals.note(
                "connections dropped before authenticating",
                f"{peer.name}: {reason}",
                self.loop.time(),
            )
            return
        log.info(
            "client %s left after %d requests: %s (%d connected)",
            peer.name,
            peer.served,
            reason,
            len(self._peers),
        )

    # ------------------------------------------------------------ housekeeping

    def _sweep(self) -> None:
        """Drops the connections that overstayed a time bound."""
        self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        now = self.loop.time()
        self.refusals.flush(now)
        if self._dropped:  # their buffers are free: give the memory back (netkit.memory)
            self._dropped = 0
            release_free_memory()
        overstayed = self.scheduler.overstayed
        for peer in list(self._peers):
            conn = peer.conn
            reason = overstayed(
                peer, now, conn.buffered, conn.framer.pending, now - conn.last_active
            )
            if reason is not None:
                self._drop(peer, reason)

    def _summarize(self) -> None:
        """One line showing who was served (the interleaving) and what storage did."""
        self.loop.call_later(self._summary_interval, self._summarize)
        line = self.reporter.summary(
            self.scheduler.take_recent(), self._summary_interval, len(self._peers)
        )
        if line is not None:
            log.info("%s", line)

    def status(self) -> dict[str, Any]:
        """Figures for the catalog record and for people."""
        return {
            "keys": self.db.stats().get("keys"),
            "requests": self.scheduler.requests,
            "connections": len(self._peers),
            "uptime": int(self.loop.time() - self.started),
        }

    def _record(self) -> dict[str, Any]:
        return self.reporter.record(self.status())
