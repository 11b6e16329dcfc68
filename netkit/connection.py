"""A non-blocking, line-framed TCP connection for event-loop servers, plain or TLS.

The servers (hash table, TS, LS) own one ``Connection`` per peer. It does the
socket I/O that the sans-IO protocol code must not: reading into a
``LineFramer``, and writing out a buffer that never blocks the loop. Output is
bounded by backpressure: while ``backlogged`` is true the server stops reading
from that peer, so a client that never reads its replies costs at most
``high_water`` bytes plus one reply, and never stalls anyone else.

``TlsConnection`` is the same over TLS (``netkit.tls``): the handshake runs as
the first bytes arrive, and lines are framed from the decrypted stream. Either
end can use it: a server's runs as the client's hello arrives; a client's
starts with ``start_handshake()`` (the LS's links to its TSs).
"""

from __future__ import annotations

import contextlib
import socket
import time

from netkit.framing import DEFAULT_MAX_LINE, LineFramer
from netkit.tls import TLS_RECORD_HANDSHAKE, TlsError, TlsSession

# Under glibc's mmap threshold (128 KiB): a larger recv() buffer is mmapped, shrunk
# (mremap) and unmapped on every call, three extra system calls per read.
RECV_SIZE = 64 * 1024
DEFAULT_HIGH_WATER = 4 * 1024 * 1024


class Closed(Exception):
    """The connection failed (reset, ...) or the peer closed it; the reason is the message."""


class EndOfInput(Closed):
    """The peer closed its sending side cleanly: it will send nothing more, but
    may still read. ``rest`` holds the bytes of a last line it never ended with a
    newline (empty if none): some protocols answer it, some do not."""

    def __init__(self, rest: bytes = b"") -> None:
        super().__init__("peer closed the connection")
        self.rest = rest


class AuthenticationFailed(Closed):
    """The TLS handshake failed (the peer does not hold the secret), or a record
    did not decrypt; the reason is the message."""


class NotTls(Closed):
    """The peer's first bytes are not a TLS handshake; ``first`` holds them, for
    the server to decide what such a peer gets (an error line, or nothing)."""

    def __init__(self, first: bytes) -> None:
        super().__init__("sent plain text to a server that requires authentication")
        self.first = first


class Connection:
    """One peer of an event-driven server."""

    __slots__ = ("_out", "framer", "high_water", "last_active", "name", "sock")

    def __init__(
        self,
        sock: socket.socket,
        name: str,
        max_line: int = DEFAULT_MAX_LINE,
        high_water: int = DEFAULT_HIGH_WATER,
    ) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Replies are small and latency matters more than packet count.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.name = name
        self.framer = LineFramer(max_line)
        self.high_water = high_water
        self._out = bytearray()
        self.last_active = time.monotonic()

    def read_lines(self) -> list[bytes]:
        """Reads what the socket has and returns the complete lines.

        Raises ``EndOfInput`` at a clean EOF, ``Closed`` on error, and
        ``LineTooLong`` (from the framer) when the peer exceeds the line bound.
        """
        data = self._receive()
        return self.framer.feed(data) if data else []

    def _receive(self) -> bytes:
        """What the socket has now (b"" if nothing yet). Raises ``EndOfInput`` at a
        clean EOF and ``Closed`` on error."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as exc:
            raise Closed(f"receive failed: {exc.strerror or exc}") from exc
        if not data:
            raise EndOfInput(self.framer.take_rest())
        self.last_active = time.monotonic()
        return data

    def send(self, data: bytes) -> None:
        """Queues ``data`` and writes as much as the socket takes now.

        Raises ``Closed`` if the socket has failed.
        """
        if not data:
            return
        if self._out:
            self._out += data
            self.flush()
            return
        # The usual case, nothing queued: straight to the socket, and only what it
        # does not take is copied into the queue.
        sent = self._send_some(data)
        if sent < len(data):
            self._out = bytearray(memoryview(data)[sent:])

    def flush(self) -> None:
        """Writes queued output until the socket would block. Raises ``Closed``."""
        out = self._out
        while out:
            sent = self._send_some(out)
            if not sent:
                return
            del out[:sent]

    def _send_some(self, data: bytes | bytearray) -> int:
        """One send: the bytes the socket took, 0 when it would block. Raises ``Closed``."""
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            raise Closed(f"send failed: {exc.strerror or exc}") from exc

    @property
    def established(self) -> bool:
        """Whether lines can flow: at once in plain text, after the handshake over TLS."""
        return True

    @property
    def wants_write(self) -> bool:
        """True while output is queued: the loop should wait for writability."""
        return bool(self._out)

    @property
    def backlogged(self) -> bool:
        """True when the peer is not reading fast enough: stop reading from it."""
        return len(self._out) >= self.high_water

    @property
    def buffered(self) -> int:
        """Bytes of output queued and not yet taken by the socket."""
        return len(self._out)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class TlsConnection(Connection):
    """A ``Connection`` over TLS. ``established`` turns true once the handshake is
    complete: the peer holds the secret. Until then no line is ever returned."""

    __slots__ = ("_heard", "tls")

    def __init__(
        self,
        sock: socket.socket,
        name: str,
        tls: TlsSession,
        max_line: int = DEFAULT_MAX_LINE,
        high_water: int = DEFAULT_HIGH_WATER,
    ) -> None:
        super().__init__(sock, name, max_line, high_water)
        self.tls = tls
        self._heard = False  # any byte received yet

    @property
    def established(self) -> bool:
        return self.tls.established

    def start_handshake(self) -> None:
        """The client's first move: queues its hello (the server speaks only once it
        has one). Raises ``AuthenticationFailed`` if TLS cannot even begin."""
        try:
            self.tls.handshake()
        except TlsError as exc:
            raise AuthenticationFailed(str(exc)) from None
        self._send_tls_output()

    def read_lines(self) -> list[bytes]:
        """As ``Connection.read_lines``, through TLS. Also raises ``AuthenticationFailed``,
        and (server side) ``NotTls`` when the first bytes are not a TLS handshake.
        A client's peer that is not TLS fails the handshake instead: its first
        bytes may be an alert, and the server decides what a plain peer gets."""
        data = self._receive()
        if not data:
            return []
        tls = self.tls
        try:
            if not self._heard and tls.server_side and data[0] != TLS_RECORD_HANDSHAKE:
                raise NotTls(data)
            self._heard = True
            plain = tls.receive(data)
        except TlsError as exc:
            with contextlib.suppress(Closed):
                self._send_tls_output()  # the alert that tells the peer why
            raise AuthenticationFailed(str(exc)) from None
        if tls.wants_output:  # e.g. an alert, a key update
            self._send_tls_output()
        return self.framer.feed(plain) if plain else []

    def send(self, data: bytes) -> None:
        """Encrypts ``data`` and queues it, writing as much as the socket takes now."""
        try:
            self.tls.send(data)
        except TlsError as exc:
            raise AuthenticationFailed(str(exc)) from None
        self._send_tls_output()

    def _send_tls_output(self) -> None:
        super().send(self.tls.take_output())
