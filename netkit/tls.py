"""TLS over any byte stream, sans-IO: the standard library's ``ssl`` on memory buffers.

``TlsSession`` takes the bytes a socket received and gives back the plaintext
(and handshake progress), and takes plaintext to send and gives back the bytes
for the socket. It never touches a socket itself, so a non-blocking server and
a blocking client use it alike, and many TLS records that arrive in one
``recv`` are decrypted without one system call each (``SSLSocket`` reads every
record header and body with a system call of its own).
"""

from __future__ import annotations

import contextlib
import socket
import ssl

# What one read asks for: a TLS record holds at most 16 KiB of plaintext, and
# ssl allocates the whole size asked for on every read, so a larger size (above
# glibc's mmap threshold, 128 KiB) costs an mmap and munmap per record: 256 KiB
# made decrypting a small record 30 us instead of 5.
_READ_SIZE = 64 * 1024

TLS_RECORD_HANDSHAKE = 0x16  # the first byte of every TLS client hello


class TlsError(ConnectionError):
    """The TLS layer failed: the handshake was refused (the peer does not hold the
    secret), or the peer sent something that is not TLS, or a record was altered."""


class TlsSession:
    """One end of a TLS connection; ``server_hostname`` (client side) is sent as SNI."""

    __slots__ = ("_incoming", "_object", "_outgoing", "established")

    def __init__(
        self,
        context: ssl.SSLContext,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._object = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self.established = False

    def handshake(self) -> bool:
        """Advances the handshake with what was fed; True once it is complete.
        Raises ``TlsError`` when it fails. Send ``take_output()`` after each call."""
        if self.established:
            return True
        try:
            self._object.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as exc:
            raise TlsError(describe(exc)) from None
        self.established = True
        return True

    def feed(self, data: bytes) -> bytes:
        """Takes bytes from the socket; returns the plaintext they completed (after
        the handshake). Raises ``TlsError`` for data that is not valid TLS."""
        incoming = self._incoming
        incoming.write(data)
        if not self.established:
            return b""
        chunks = []
        read = self._object.read
        try:
            while incoming.pending:
                chunks.append(read(_READ_SIZE))
        except ssl.SSLWantReadError:
            pass  # the rest of a record is still on its way
        except ssl.SSLZeroReturnError:
            pass  # the peer closed TLS cleanly; the socket's EOF follows
        except ssl.SSLError as exc:
            raise TlsError(describe(exc)) from None
        return b"".join(chunks)

    def receive(self, data: bytes) -> bytes:
        """``feed`` that first advances the handshake while it lasts: the plaintext
        ``data`` completed (none before the handshake is done). Send
        ``take_output()`` after each call: handshake messages, alerts, tickets.
        Raises ``TlsError`` when the handshake fails or a record is not valid."""
        if self.established:
            return self.feed(data)
        self._incoming.write(data)
        if not self.handshake():
            return b""
        return self.feed(b"")  # records that came right behind the handshake's

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypts ``data``; the bytes for the socket wait in ``take_output()``."""
        try:
            self._object.write(data)
        except ssl.SSLError as exc:
            raise TlsError(describe(exc)) from None

    def take_output(self) -> bytes:
        """The bytes to write to the socket now (may be empty)."""
        return self._outgoing.read() if self._outgoing.pending else b""

    def version(self) -> str | None:
        """The protocol version agreed (``TLSv1.3``), once established."""
        return self._object.version()

    @property
    def wants_output(self) -> bool:
        return bool(self._outgoing.pending)

    @property
    def server_side(self) -> bool:
        return self._object.server_side

    @property
    def peer_hostname(self) -> str | None:
        """The SNI name the client sent (server side), once known."""
        return self._object.server_hostname


def describe(exc: ssl.SSLError) -> str:
    """A TLS failure in words: what the peer most likely did."""
    reason = getattr(exc, "reason", None) or ""
    if reason in (
        "CERTIFICATE_VERIFY_FAILED",
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
    ):
        return "authentication failed: the peer does not hold our secret"
    if reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED":
        return "authentication failed: the peer sent no certificate (it does not hold our secret)"
    if reason in (
        "WRONG_VERSION_NUMBER",
        "HTTP_REQUEST",
        "UNKNOWN_PROTOCOL",
        "RECORD_LAYER_FAILURE",
    ):
        return "the peer does not speak TLS (not an authenticating server, or not ours)"
    if reason == "TLSV1_UNRECOGNIZED_NAME":
        return "the server serves another project"
    if reason == "CALLBACK_FAILED":  # our only callback checks the name a client asks for
        return "the client asked for another project's server"
    if reason in ("DECRYPTION_FAILED_OR_BAD_RECORD_MAC", "BAD_RECORD_MAC"):
        return "a record was altered in transit"
    return f"TLS failed: {reason or exc}"


def handshake_blocking(sock: socket.socket, session: TlsSession, receive_size: int = 65536) -> None:
    """Runs ``session``'s handshake over a blocking ``sock`` (its time-outs apply).
    Raises ``TlsError`` when it fails, ``ConnectionResetError`` when the peer
    closes during it, ``TimeoutError`` when it does not answer in time."""
    while True:
        try:
            done = session.handshake()
        except TlsError:
            # Tell the peer why (the alert is in the output), then fail.
            with contextlib.suppress(OSError):
                sock.sendall(session.take_output())
            raise
        if done:
            break
        sock.sendall(session.take_output())
        try:
            data = sock.recv(receive_size)
        except BlockingIOError:  # SO_RCVTIMEO expired
            raise TimeoutError("no TLS handshake in time") from None
        if not data:
            raise ConnectionResetError("the peer closed the connection during the TLS handshake")
        session.feed(data)
    if session.wants_output:
        sock.sendall(session.take_output())
