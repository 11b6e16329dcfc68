"""Peer links over asyncio: the peer port's protocol and the dialer that keeps a link up.

Of two neighbours, the one whose name sorts first dials; the other accepts on
its peer port. The other, when it starts, knocks (``knock``): a connection that
opens like a dialer's and that the dialer closes once it has cut its backoff
short and redialled, so that a restarted server is linked in milliseconds, not
after its neighbour's next retry (up to ``--backoff-cap``). Both open with a
HERD line (herd.peering); an accepted connection that does not name a
neighbour of ours in the right role, within ``handshake_timeout``, is closed. Once up, a link streams our changes and
acknowledges theirs; a PING goes out after ``ping_interval`` without traffic,
and a link silent for ``peer_timeout`` is dropped. The dialer redials with
exponential backoff (netkit.backoff), asking the catalog for the neighbour's
address first when discovery is on.

Writes: a link writes at most once per loop turn (``flush``, from the server's
end of turn): the ACK it owes, then the UPDATE lines its neighbour has not been
sent, in one ``write``. What the neighbour need not have at once (herd.peering:
an ACK nobody waits for, changes its fanout says it gets from elsewhere) waits
until something else goes that way, or ``LAZY_DELAY`` seconds at most.

TLS: with the server's ``ssl`` contexts (``Options.server_ssl``/``client_ssl``),
each connection runs a ``netkit.tls.TlsSession`` over the plain transport, the
hash table's own TLS, rather than asyncio's ``ssl=`` layer (uvloop's or the
standard library's), which adds its own protocol objects and buffers to every
record: 8% less herd CPU per update and 8-10% more IAMATs/s (REPORT.md). The
handshake must be done, and the HERD line in, within ``handshake_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from herd.clients import prepare
from herd.peering import PING_LINE, BadUpdate, Hello, Link, ProtocolError, parse_hello
from netkit.backoff import Backoff
from netkit.framing import LineFramer, LineTooLong
from netkit.tls import TlsError, TlsSession

if TYPE_CHECKING:
    from herd.server import HerdServer

MAX_PEER_LINE = 64 * 1024
HIGH_WATER = 1024 * 1024
LINES_PER_WRITE = 2000
LAZY_DELAY = 0.05  # seconds an ACK nobody waits for, or a change held back, may wait


class PeerConnection(asyncio.Protocol):
    """One connection on a peer link, dialed (``neighbour`` known) or accepted."""

    def __init__(self, server: HerdServer, neighbour: str | None = None) -> None:
        self.server = server
        self.neighbour = neighbour
        self.dialed = neighbour is not None
        self.framer = LineFramer(MAX_PEER_LINE)
        self.transport: asyncio.Transport | None = None
        self.link: Link | None = None
        self.tls: TlsSession | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.address = "?"
        self._paused = False
        self._last_sent = self._last_received = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._why = "closed"
        self.knocking = False  # a knock (``knock``), not a link

    # ---- asyncio callbacks --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.address = prepare(transport, HIGH_WATER)
        options = self.server.options
        context = options.client_ssl if self.dialed else options.server_ssl
        # With TLS an accepted connection takes a pending slot once it proved the secret
        # (as with asyncio's ssl=): a stranger's handshake must not hold one.
        if not self.dialed and context is None and not self.server.peer_opened(self):
            transport.abort()
            return
        if context is not None:
            self.tls = TlsSession(
                context,
                server_side=not self.dialed,
                server_hostname=options.peer_server_name if self.dialed else None,
            )
            if self.dialed:
                self._decrypt(b"")  # the client's hello
        elif self.dialed:
            self._send(self.server.hello_for(self.neighbour).line())
        self._timer = asyncio.get_running_loop().call_later(
            self.server.options.handshake_timeout, self._handshake_expired
        )

    def data_received(self, data: bytes) -> None:
        self._last_received = time.monotonic()
        if self.tls is not None:
            data = self._decrypt(data)
            if not data:
                return
        try:
            lines = self.framer.feed(data)
        except LineTooLong:
            self.drop(f"line longer than {MAX_PEER_LINE} bytes")
            return
        try:
            if self.link is None:
                if not lines:
                    return
                self._handshake(lines[0])
                lines = lines[1:]
            self._receive(lines)
        except ProtocolError as error:
            self.drop(f"protocol error: {error}")

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._timer, self._lazy_timer):
            if timer is not None:
                timer.cancel()
        if exc is not None and self._why == "closed":
            self._why = str(exc) or type(exc).__name__
        elif self.knocking and self._why == "closed":
            self._why = "knocked: it dials us now"
        self.server.peer_closed(self, self._why)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self.flush()

    # ---- the link -----------------------------------------------------------------

    def _handshake(self, line: bytes) -> None:
        self.server.io_log.info("in  peer %s: %s", self.neighbour or self.address, _text(line))
        hello = parse_hello(line)
        if self.server.check_hello(hello, self):
            self._knocked(hello)
            return
        if not self.dialed:
            self.neighbour = hello.sender
        self.link = self.server.link_up(self, hello)
        if not self.dialed:
            self._send(self.server.hello_for(hello.sender).line())
        self._timer.cancel()
        self._tick()
        self.flush()

    def _knocked(self, hello: Hello) -> None:
        """A neighbour we dial has started: a link to its previous run is dropped,
        and our dialer redials at once."""
        old = self.server.links.get(hello.sender)
        if old is not None and old.link.their_epoch != hello.epoch:
            old.drop(f"{hello.sender} restarted (it knocked)")
        wake = self.server.wakes.get(hello.sender)
        if wake is not None:
            wake.set()
        self.drop(f"a knock from {hello.sender}: redialling it", graceful=True)

    def _receive(self, lines: list[bytes]) -> None:
        if not lines:
            return
        server, link = self.server, self.link
        log, prefix = server.io_log, f"in  peer {self.neighbour}: "
        for line in lines:
            log.line(prefix + _text(line))
            try:
                location = link.receive(line, server.table)
            except BadUpdate as error:
                server.log.warning("from %s: %s", self.neighbour, error)
                continue
            if location is not None:
                server.changed(location)
        if link.ack_due:
            server.schedule_turn()  # the ACK goes out with this turn's writes (flush)
        server.acks_changed()

    def flush(self, lazy_too: bool = False) -> None:
        """One write: the ACK owed, if it is wanted now or lines go that way anyway, and
        the changes the neighbour has not been sent (unless all of them may wait), until
        the socket buffer is full. ``lazy_too``: what may wait goes now too."""
        link = self.link
        if link is None or self._paused or self.transport.is_closing():
            return
        log, prefix, table = self.server.io_log, f"out peer {self.neighbour}: ", self.server.table
        while True:
            lines = link.outgoing(table, LINES_PER_WRITE, hold=not lazy_too)
            ack = None
            if link.ack_due and (lines or link.ack_urgent or lazy_too):
                self.server.commit_now()  # an ACK promises stored locations
                ack = link.ack_line()
                log.line(prefix + ack[:-1].decode())
            if lines:
                log.lines(prefix, lines)
                lines.append("")
                data = "\n".join(lines).encode()
                self._write(ack + data if ack else data)
            elif ack:
                self._write(ack)
            if self._paused or not link.has_outgoing or self.transport.is_closing():
                break  # (closing: a failed write dropped the link)
        if self._lazy_timer is None and (link.ack_due or link.holding(table)):
            loop = asyncio.get_running_loop()
            self._lazy_timer = loop.call_later(LAZY_DELAY, self._lazy_due)

    def _decrypt(self, data: bytes) -> bytes:
        """The plaintext ``data`` completes, after the handshake; the dialer's HERD
        line goes once it is done. A peer without the secret is dropped here."""
        tls = self.tls
        established = tls.established
        try:
            data = tls.receive(data)
        except TlsError as error:
            self.transport.write(tls.take_output())  # the alert that says why
            self.drop(f"TLS: {error}", graceful=True)
            return b""
        if tls.wants_output:
            self.transport.write(tls.take_output())
        if tls.established and not established:
            if self.dialed:
                self._send(self.server.hello_for(self.neighbour).line())
            elif not self.server.peer_opened(self):
                self.drop("too many pending peer connections")
                return b""
        return data

    def _lazy_due(self) -> None:
        self._lazy_timer = None
        self.flush(lazy_too=True)

    def _write(self, data: bytes) -> None:
        self._last_sent = time.monotonic()
        if self.tls is not None:
            try:
                self.tls.send(data)
            except TlsError as error:  # the session failed before: nothing more goes
                self.drop(f"TLS: {error}")
                return
            data = self.tls.take_output()
        self.transport.write(data)

    def _send(self, data: bytes) -> None:
        """The HERD line, logged."""
        self._write(data)
        self.server.io_log.info(
            "out peer %s: %s", self.neighbour or self.address, _text(data.rstrip())
        )

    def drop(self, why: str, graceful: bool = False) -> None:
        """Closes the link; ``graceful`` lets what was written (a TLS alert) go first."""
        self._why = why
        if self.transport is not None:
            if graceful:
                self.transport.close()
            else:
                self.transport.abort()

    def _handshake_expired(self) -> None:
        if self.link is None:
            self.drop(f"no handshake in {self.server.options.handshake_timeout:g} s")

    def _tick(self) -> None:
        """Heartbeat: a PING when we have been quiet, a drop when they have been silent."""
        options = self.server.options
        now = time.monotonic()
        if now - self._last_received > options.peer_timeout:
            self.drop(f"silent for {now - self._last_received:.1f} s")
            return
        if now - self._last_sent >= options.ping_interval:
            self._write(PING_LINE)
            self.server.io_log.info("out peer %s: PING", self.neighbour)
        self._timer = asyncio.get_running_loop().call_later(options.ping_interval / 2, self._tick)


def _text(line: bytes) -> str:
    return line.decode(errors="backslashreplace")


async def keep_dialing(server: HerdServer, neighbour: str) -> None:
    """Keeps the link to ``neighbour`` up for as long as the server runs."""
    options = server.options
    backoff = Backoff(initial=options.backoff_initial, cap=options.backoff_cap)
    wake = server.wakes.setdefault(neighbour, asyncio.Event())
    loop = asyncio.get_running_loop()
    failures = 0
    while True:
        address = await server.peer_address(neighbour)
        connection: PeerConnection | None = None
        if address is not None:
            try:
                _, connection = await asyncio.wait_for(
                    loop.create_connection(lambda: PeerConnection(server, neighbour), *address),
                    timeout=options.handshake_timeout,
                )
            except (TimeoutError, OSError) as error:
                failures += 1
                if failures == 1:
                    server.log.info("cannot reach %s at %s:%d yet: %s", neighbour, *address, error)
        if connection is not None:
            failures = 0
            await connection.closed
            if connection.link is not None:
                backoff.reset()
        server.link_failed(neighbour)  # no link now: replies wait for it no more
        delay = backoff.next_delay()
        if not wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), delay)
        if wake.is_set():  # it knocked: it is up now
            wake.clear()
            backoff.reset()


async def knock(server: HerdServer, neighbour: str) -> None:
    """Once, at start: tells a neighbour that dials us that we are up, over a
    connection that proves the secret like a link's (so that nobody else can make
    it drop a link), and that it closes once its dialer is woken."""
    address = await server.peer_address(neighbour)
    if address is None:
        server.link_failed(neighbour)
        return
    loop = asyncio.get_running_loop()
    try:
        _, connection = await asyncio.wait_for(
            loop.create_connection(lambda: PeerConnection(server, neighbour), *address),
            timeout=server.options.handshake_timeout,
        )
    except (TimeoutError, OSError):
        server.link_failed(neighbour)
        return  # down too: it dials us when it starts
    connection.knocking = True
    await connection.closed
