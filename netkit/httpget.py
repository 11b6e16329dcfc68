"""One HTTP GET, bounded in every way the server could stretch it.

The whole exchange (connecting, the request, the status line, the headers, the
body) finishes within one deadline, and the body within a byte limit: a server
trickling its reply a byte at a time, or sending headers without end, is given
up on at the deadline, not after each read as with ``requests`` (whose time-out
is per read and does not cover a trickled head at all). h11 parses the reply
(sans-IO, a well-kept parser that refuses malformed framing); this module only
moves bytes and keeps the clock.
"""

from __future__ import annotations

import socket
import time
from typing import NamedTuple

import h11

_CHUNK = 64 << 10
# The status line and headers: a catalog sends a few hundred bytes of them.
MAX_HEAD_BYTES = 16 << 10


class Unreachable(ConnectionError):
    """No connection to the server could be made (refused, no route, no such host)."""


class NotHTTP(ValueError):
    """What the server sent is not an HTTP reply (or its framing is broken)."""


class Reply(NamedTuple):
    status: int
    reason: str
    body: bytes  # at most the limit asked for
    complete: bool  # False when the body went on past the limit (the rest unread)


def get(
    host: str,
    port: int,
    target: str,
    timeout: float,
    max_body: int,
    max_error_body: int = 4096,
) -> Reply:
    """GET ``target`` from ``host:port``; the reply, its body cut at ``max_body``
    bytes (``max_error_body`` for a status of 400 or more, of which a caller shows
    a line). Raises ``TimeoutError`` when all of it has not come within ``timeout``
    seconds, ``Unreachable`` when no connection is made, ``NotHTTP`` for a reply
    that is not HTTP, and ``OSError`` when the connection fails midway."""
    deadline = time.monotonic() + timeout
    with _connect(host, port, deadline) as sock:
        connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        name = host if host.isascii() else host.encode("idna").decode("ascii")
        authority = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
        request = h11.Request(
            method="GET",
            target=target,
            headers=[("Host", authority), ("Accept", "application/json"), ("Connection", "close")],
        )
        _settimeout(sock, deadline)
        sock.sendall(connection.send(request) + connection.send(h11.EndOfMessage()))
        try:
            return _read_reply(connection, sock, deadline, max_body, max_error_body)
        except h11.RemoteProtocolError as exc:
            raise NotHTTP(f"not an HTTP reply: {exc}") from None


def _connect(host: str, port: int, deadline: float) -> socket.socket:
    """A connection to the first of the host's addresses that takes one, all of
    them within the deadline (``socket.create_connection`` gives each address the
    whole time-out). The name's lookup itself is the resolver's to bound: for the
    loopback names a catalog has here, /etc/hosts answers at once."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Unreachable(exc.strerror or str(exc)) from exc
    failure: OSError | None = None
    for family, kind, protocol, _, address in addresses:
        sock = socket.socket(family, kind, protocol)
        try:
            _settimeout(sock, deadline)
            sock.connect(address)
            return sock
        except TimeoutError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            failure = exc
    assert failure is not None  # getaddrinfo gives at least one address or raises
    raise Unreachable(failure.strerror or str(failure)) from failure


def _read_reply(
    connection: h11.Connection,
    sock: socket.socket,
    deadline: float,
    max_body: int,
    max_error_body: int,
) -> Reply:
    head: h11.Response | None = None
    limit = max_body
    body = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            _settimeout(sock, deadline)
            connection.receive_data(sock.recv(_CHUNK))
        elif isinstance(event, h11.Response):
            head = event
            if head.status_code >= 400:
                limit = max_error_body
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > limit:  # the rest is never read: closing drops the connection
                return _reply(head, body[:limit], complete=False)
        elif isinstance(event, h11.EndOfMessage):
            return _reply(head, body, complete=True)
        elif isinstance(event, h11.ConnectionClosed):
            raise NotHTTP("not an HTTP reply: the connection closed before one came")
        # An InformationalResponse (1xx) is followed by the real one: read on.


def _reply(head: h11.Response | None, body: bytearray, complete: bool) -> Reply:
    assert head is not None  # h11 gives the head before any of the body
    return Reply(head.status_code, head.reason.decode("latin-1"), bytes(body), complete)


def _settimeout(sock: socket.socket, deadline: float) -> None:
    """Each wait is for what is left of the whole exchange's time."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the reply took longer than the time-out")
    sock.settimeout(remaining)
