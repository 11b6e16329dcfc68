"""The TS server: answers the names its table holds, and says nothing about the
others (its program, ``python -m lb.ts``, is ``lb.ts``).

Runs on the event-loop core (``netkit.loop``): the listening socket and the
connected LSs (or ``nc`` users). Without TLS it speaks the assignment's plain
text to anyone. With ``tls`` (the program's ``--project``) it serves only peers
that complete a mutual TLS handshake with the project's secret
(``netkit.security``): the project's LSs. A peer that speaks plain text gets one
line saying so and is closed, unless ``plain_too`` lets it be answered as by a
TS without TLS.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from functools import partial

from catalog.client import Announcer
from lb.protocol import (
    AUTHENTICATION_REQUIRED,
    MAX_QUERY_LINE,
    decode_ts_query,
    encode_ts_answer,
)
from lb.table import DnsTable
from netkit.connection import (
    AuthenticationFailed,
    Closed,
    Connection,
    EndOfInput,
    NotTls,
    TlsConnection,
)
from netkit.framing import LineTooLong
from netkit.listeners import format_address, shut_down_writing
from netkit.logs import EventSummary
from netkit.loop import READ, WRITE, EventLoop, Watch
from netkit.room import IdleOrder
from netkit.service import ListeningService
from netkit.tls import TlsSession

log = logging.getLogger("lb.ts")

DEFAULT_ANNOUNCE_INTERVAL = 60.0
REFUSAL_LOG_INTERVAL = 10.0
# Connections logged a line each per interval; a flood beyond that is counted.
ARRIVALS_SHOWN = 20
# A peer turned away is read from (and what it sends dropped) until it closes, so
# that the kernel does not reset the connection before it reads why; this long at most.
TURNED_AWAY_LINGER = 2.0
# A peer that has not completed its TLS handshake by then is closed: an LS of the
# project does it in milliseconds, and a half-open handshake must not be held forever.
HANDSHAKE_TIMEOUT = 10.0
# A peer that has left a line unfinished for this long is closed: an LS sends whole
# lines, and a partial one must not be held forever (a peer that is merely idle
# between whole lines, as an LS with no queries is, stays).
PARTIAL_LINE_TIMEOUT = 10.0
_DISCARD = 64 * 1024
# Peers at once; past it one that has not proved the secret makes room for a new
# one (netkit.room: a silent one first), or the new one is refused.
DEFAULT_MAX_CONNECTIONS = 1024


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
    connection closes once the replies already due are sent. ``welcomed``: logged
    as connected (at once in plain text, after the handshake over TLS);
    ``turned_away``: told it must authenticate, or sent an over-long line and
    answered, and read from (the rest dropped) only until it goes."""

    __slots__ = ("conn", "overflowed", "reading", "turned_away", "watch", "welcomed")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.reading = True
        self.watch: Watch | None = None
        self.welcomed = False
        self.turned_away = False
        self.overflowed = False


class TopLevelServer(ListeningService):
    """The TS's event-loop policy: answer what the table holds, read only while
    the replies keep flowing out.

    ``tls``: a server context (``Secret.server_context``); every peer must then
    complete a mutual TLS handshake before it is answered, and one that speaks
    plain text is told so and closed, or, with ``plain_too``, answered in plain text.
    """

    def __init__(
        self,
        listener: socket.socket,
        table: DnsTable,
        announcer: Announcer | None = None,
        loop: EventLoop | None = None,
        tls: ssl.SSLContext | None = None,
        plain_too: bool = False,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        super().__init__(listener, loop)
        self.table = table
        self.max_connections = max_connections
        self.announcer = announcer
        self.tls = tls
        self.plain_too = plain_too
        self.peers: IdleOrder[Peer] = IdleOrder()  # netkit.room: who makes room
        self.refusals = EventSummary(log, REFUSAL_LOG_INTERVAL)
        # Comings and goings: a line each, until a flood makes them counts.
        self.arrivals = EventSummary(
            log, REFUSAL_LOG_INTERVAL, level=logging.INFO, burst=ARRIVALS_SHOWN
        )
        self.loop.call_later(REFUSAL_LOG_INTERVAL, self._summarize)
        self.loop.call_later(PARTIAL_LINE_TIMEOUT / 4, self._sweep_partial_lines)

    def starting(self) -> None:
        if self.announcer is not None:
            self.announcer.start(self.loop)

    def close_connections(self) -> None:
        if self.announcer is not None:
            self.announcer.close()
        for peer in list(self.peers):
            self._drop(peer)

    def _summarize(self) -> None:
        now = self.loop.time()
        self.refusals.flush(now)
        self.arrivals.flush(now)
        self.loop.call_later(REFUSAL_LOG_INTERVAL, self._summarize)

    def _sweep_partial_lines(self) -> None:
        now = self.loop.time()
        for peer in list(self.peers):
            conn = peer.conn
            if conn.framer.pending and now - conn.last_active >= PARTIAL_LINE_TIMEOUT:
                self.arrivals.note(
                    "connections closed",
                    f"{conn.name}: a line left unfinished for {PARTIAL_LINE_TIMEOUT:g} s",
                    now,
                )
                self._drop(peer)
        self.loop.call_later(PARTIAL_LINE_TIMEOUT / 4, self._sweep_partial_lines)

    def on_connection(self, sock: socket.socket, address: object) -> None:
        name = format_address(address)
        now = self.loop.time()
        if len(self.peers) >= self.max_connections:
            idlest = self.peers.idlest(now, self._may_make_room)
            if idlest is None:
                sock.close()
                self.refusals.note(
                    "connections refused at the limit",
                    f"{name} ({self.max_connections} connected, none silent or idle for a second)",
                    now,
                )
                return
            self.arrivals.note("idle connections closed to make room", idlest.conn.name, now)
            self._drop(idlest)
        try:
            if self.tls is None:
                conn = Connection(sock, name, max_line=MAX_QUERY_LINE)
            else:
                session = TlsSession(self.tls, server_side=True)
                conn = TlsConnection(sock, name, session, max_line=MAX_QUERY_LINE)
        except OSError:  # reset before we got to it
            sock.close()
            return
        peer = Peer(conn)
        peer.watch = self.loop.watch(sock, partial(self._ready, peer), 0)
        self.peers.add(peer, now)
        if conn.established:
            self._welcome(peer)
        else:
            log.debug("%s connecting (TLS handshake)", name)
            self.loop.call_later(HANDSHAKE_TIMEOUT, partial(self._handshake_deadline, peer))
        self._sync(peer)

    def _handshake_deadline(self, peer: Peer) -> None:
        if peer in self.peers and not peer.welcomed and not peer.turned_away:
            self.refusals.note(
                "failed TLS handshakes",
                f"{peer.conn.name}: no handshake in {HANDSHAKE_TIMEOUT:g} s",
                self.loop.time(),
            )
            self._drop(peer)

    def _welcome(self, peer: Peer) -> None:
        peer.welcomed = True
        self.arrivals.note("clients connected", peer.conn.name, self.loop.time())

    def _may_make_room(self, peer: Peer) -> bool:
        """A peer that proved the secret over TLS (a project's LS) keeps its place."""
        proved = isinstance(peer.conn, TlsConnection) and peer.welcomed
        return not proved or peer.turned_away

    def _ready(self, peer: Peer, events: int) -> None:
        conn = peer.conn
        try:
            if events & WRITE:
                conn.flush()
            if events & READ:
                if peer.turned_away:
                    self._discard_input(peer)
                    return
                self._answer(peer)
        except AuthenticationFailed as exc:
            self.refusals.note("failed TLS handshakes", f"{conn.name}: {exc}", self.loop.time())
            self._drop(peer)
            return
        except Closed as exc:
            self.arrivals.note("connections closed", f"{conn.name}: {exc}", self.loop.time())
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
            if peer.welcomed:
                self.arrivals.note("clients disconnected", conn.name, self.loop.time())
            peer.reading = False
            lines = [eof.rest] if eof.rest else []
        except NotTls as exc:
            lines = self._plain_text(peer, exc.first)
        except LineTooLong as exc:
            lines = self._line_too_long(peer, exc)
        if not peer.welcomed and peer.reading and peer.conn.established:
            self._welcome(peer)
        if lines:  # a complete line: not silent (netkit.room)
            self.peers.heard(peer, self.loop.time())
        replies = []
        for line in lines:
            answer = reply(self.table, line)
            log.debug("%s asked %.300r: %r", conn.name, line, answer or "not here")
            if answer is not None:
                replies.append(answer)
        if replies:
            peer.conn.send(b"".join(replies))

    def _plain_text(self, peer: Peer, first: bytes) -> list[bytes]:
        """A peer of a TLS TS whose first bytes are plain text: with ``plain_too``
        served in plain text from here on (its lines so far returned), else told
        that it must authenticate, and turned away."""
        conn = peer.conn
        if self.plain_too:
            peer.conn = Connection(conn.sock, conn.name, max_line=MAX_QUERY_LINE)
            try:
                return peer.conn.framer.feed(first)
            except LineTooLong as exc:
                return self._line_too_long(peer, exc)
        self.refusals.note(
            "connections turned away", f"{conn.name} spoke plain text, not TLS", self.loop.time()
        )
        with contextlib.suppress(OSError):  # short: a socket just opened takes it whole
            conn.sock.send(AUTHENTICATION_REQUIRED)
        self._linger(peer)
        return []

    def _linger(self, peer: Peer) -> None:
        """Everything due is sent: the peer is told EOF and its input dropped until
        it goes (or TURNED_AWAY_LINGER), not reset with what it sent unread."""
        peer.turned_away, peer.reading = True, True
        shut_down_writing(peer.conn.sock)
        self.loop.call_later(TURNED_AWAY_LINGER, partial(self._drop, peer))

    def _line_too_long(self, peer: Peer, exc: LineTooLong) -> list[bytes]:
        """A peer past the line bound is not speaking the protocol: it is read from
        no more and closed once answered, but the queries framed before the long
        line are well-formed and answered first (as the LS does for its clients)."""
        self.arrivals.note("connections closed", f"{peer.conn.name}: {exc}", self.loop.time())
        peer.reading = False
        peer.overflowed = True
        peer.conn.framer.take_rest()  # the over-long part, not held while it lingers
        return exc.lines

    def _discard_input(self, peer: Peer) -> None:
        # Unread input makes the kernel reset the connection, which can destroy
        # the line before the peer reads it; so it is read and dropped until EOF.
        try:
            if peer.conn.sock.recv(_DISCARD):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._drop(peer)

    def _sync(self, peer: Peer) -> None:
        conn = peer.conn
        if not peer.reading and not conn.wants_write:
            if not peer.overflowed:
                self._drop(peer)
                return
            peer.overflowed = False
            self._linger(peer)
        events = WRITE if conn.wants_write else 0
        if peer.reading and not conn.backlogged:
            events |= READ
        assert peer.watch is not None
        peer.watch.set(events)

    def _drop(self, peer: Peer) -> None:
        if peer not in self.peers:
            return  # already gone (a turned-away peer's time limit after its EOF)
        if peer.watch is not None:
            peer.watch.close()
        peer.conn.close()
        self.peers.remove(peer)
