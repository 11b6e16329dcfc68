"""The little HTTP/1.x the catalog speaks, sans-IO: request heads in, response bytes out.

Only what a catalog needs: GET and HEAD (in any case: ``get /query.json`` is what
cctools' catalog_server accepts and some clients send), one request per connection, the reply
followed by close (``Connection: close``), as cctools does. The request head
is bounded in size and in number of lines, so a peer cannot make the server
buffer more than ``MAX_HEAD_BYTES`` for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from netkit.framing import LineFramer, LineTooLong

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADER_LINES = 100
SERVER_NAME = "dht-catalog"

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class HttpError(Exception):
    """A request that gets an error reply instead of being served."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    target: str  # as sent
    path: str  # percent-decoded, without the query string
    query: dict[str, list[str]] = field(default_factory=dict)

    @property
    def head_only(self) -> bool:
        return self.method == "HEAD"


class RequestReader:
    """Accumulates a request head; ``feed`` returns the ``Request`` once complete.

    Raises ``HttpError`` for a malformed or oversized head. Header values are
    not needed by the catalog and are only counted.
    """

    def __init__(self) -> None:
        self._framer = LineFramer(MAX_HEAD_BYTES)
        self._lines: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> Request | None:
        try:
            lines = self._framer.feed(data)
        except LineTooLong:
            raise HttpError(431, "request head too large") from None
        for line in lines:
            self._size += len(line) + 1
            if self._size > MAX_HEAD_BYTES or len(self._lines) > MAX_HEADER_LINES:
                raise HttpError(431, "request head too large")
            line = line.removesuffix(b"\r")
            if not line:
                if self._lines:
                    return parse_request_line(self._lines[0])
                continue  # blank lines before a request are tolerated (RFC 9112 2.2)
            self._lines.append(line)
        return None

    @property
    def started(self) -> bool:
        return bool(self._lines) or self._framer.pending > 0


def parse_request_line(line: bytes) -> Request:
    parts = line.split()
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = (part.decode("latin-1") for part in parts)
    if not version.startswith("HTTP/1."):
        raise HttpError(505, f"unsupported protocol {version}")
    if method.upper() not in ("GET", "HEAD"):
        raise HttpError(405, f"method {method} is not supported; use GET")
    method = method.upper()
    split = urlsplit(target)  # also handles the absolute form, http://host/path
    path = unquote(split.path, errors="replace")
    if not path.startswith("/"):
        raise HttpError(400, "request target must be a path")
    return Request(method, target, path, parse_qs(split.query))


def response(
    status: int,
    body: bytes,
    content_type: str,
    head_only: bool = False,
    extra: tuple[tuple[str, str], ...] = (),
) -> list[bytes]:
    """The bytes of a complete response: the head, then the body (kept as its own
    object so that a large shared body is never copied)."""
    lines = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
        f"Server: {SERVER_NAME}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        "Access-Control-Allow-Origin: *",  # as cctools, so browser pages can read the catalog
    ]
    lines += [f"{name}: {value}" for name, value in extra]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
    return [head] if head_only or not body else [head, body]
