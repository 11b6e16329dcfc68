"""A blocking line-protocol connection for the battery's fuzzers and probes, plain or TLS."""

from __future__ import annotations

import socket
import ssl

from netkit.framing import LineFramer
from netkit.tls import TlsSession, handshake_blocking


class LineConn:
    """Sends bytes and reads ``\\n``-terminated lines, each within ``timeout`` seconds.

    With ``tls`` (a client context, ``Secret.client_context()``) the connection
    is mutual TLS first (``server_name``: the SNI to send). ``read_line`` raises
    ``TimeoutError`` when nothing comes in time and ``ConnectionError`` when the
    peer closes: both are findings, not noise."""

    def __init__(
        self,
        port: int,
        timeout: float = 10.0,
        max_line: int = 1 << 26,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.framer = LineFramer(max_line)
        self.lines: list[bytes] = []
        self.tls: TlsSession | None = None
        if tls is not None:
            session = TlsSession(tls, server_side=False, server_hostname=server_name)
            try:
                handshake_blocking(self.sock, session)
            except BaseException:
                self.sock.close()
                raise
            self.tls = session

    def send(self, data: bytes) -> None:
        if self.tls is not None:
            self.tls.send(data)
            data = self.tls.take_output()
        self.sock.sendall(data)

    def receive(self) -> bytes:
        """The next bytes of the stream (decrypted); b"" once the peer has closed."""
        while True:
            data = self.sock.recv(1 << 20)
            if not data or self.tls is None:
                return data
            plain = self.tls.feed(data)
            if plain:
                return plain

    def read_line(self) -> bytes:
        while not self.lines:
            data = self.receive()
            if not data:
                raise ConnectionError("the server closed the connection")
            self.lines.extend(self.framer.feed(data))
        return self.lines.pop(0)

    def call(self, line: bytes) -> bytes:
        self.send(line + b"\n")
        return self.read_line()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> LineConn:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
