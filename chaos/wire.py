"""A blocking line-protocol connection for the battery's fuzzers and probes."""

from __future__ import annotations

import socket

from netkit.framing import LineFramer


class LineConn:
    """Sends bytes and reads ``\\n``-terminated lines, each within ``timeout`` seconds.

    ``read_line`` raises ``TimeoutError`` when nothing comes in time and
    ``ConnectionError`` when the peer closes: both are findings, not noise."""

    def __init__(self, port: int, timeout: float = 10.0, max_line: int = 1 << 26) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.framer = LineFramer(max_line)
        self.lines: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self) -> bytes:
        while not self.lines:
            data = self.sock.recv(1 << 20)
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
