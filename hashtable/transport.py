"""One client connection to a hash table server, and what to do when it fails.

``Transport`` finds the server (through the catalog by project, or at a given
address), connects, sends request lines and reads reply lines within a
time-out. When anything fails it drops the connection, says so in one log
line, waits (1 s, 2 s, 4 s, ... up to a cap, reset after a success), and the
caller sends again: the next attempt looks the project up anew, since the
server may have moved. Both the plain client calls and pipelines run on it
(``HashTableClient`` and ``Pipeline``); whether a request may be sent twice is
the caller's business (mutations are numbered, see ``Numbering``).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import time
from collections import deque

from catalog.client import CatalogUnavailable, catalog_addresses, record_endpoint, resolve
from hashtable.errors import ServiceUnavailable
from hashtable.protocol import ProtocolError, decode_reply, encode_request
from hashtable.request import MUTATIONS, Outcome, Request
from netkit.backoff import Backoff
from netkit.framing import LineFramer

log = logging.getLogger("hashtable.client")

DEFAULT_TIMEOUT = 5.0
# Replies hold whole scans, so they may be far longer than a request.
MAX_REPLY_LINE = 1 << 31
RECV_SIZE = 64 * 1024  # see netkit.connection.RECV_SIZE

# Everything after which a request is sent again, to a freshly resolved server.
RETRYABLE = (OSError, ProtocolError)  # OSError covers timeouts, refusals, CatalogUnavailable


class NotListed(ConnectionError):
    """The catalog answered but lists no usable server for the project."""


class Transport:
    """A connection to one hash table server that is re-made as often as needed.

    ``project``: found through ``catalog`` (a ``host[:port],...`` list, else
    ``CATALOG_HOST``, else localhost:9097), the server heard from most recently;
    or ``address``, a fixed ``(host, port)``. ``timeout``: seconds to wait for a
    connection or a reply. ``give_up_after``: seconds of failed attempts after
    which ``failed`` raises ``ServiceUnavailable`` (None: never).
    """

    def __init__(
        self,
        project: str | None = None,
        *,
        address: tuple[str, int] | None = None,
        catalog: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        backoff_initial: float = 1.0,
        backoff_cap: float = 30.0,
        give_up_after: float | None = None,
    ) -> None:
        if (project is None) == (address is None):
            raise ValueError("give a project name or an address")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.project = project
        self.address = address
        self.timeout = timeout
        self.give_up_after = give_up_after
        self.catalogs = catalog_addresses(catalog) if address is None else []
        self.backoff = Backoff(backoff_initial, backoff_cap)
        self.sock: socket.socket | None = None
        self.lines: deque[bytes] = deque()  # replies received, not yet taken
        self._framer = LineFramer(MAX_REPLY_LINE)
        self._peer = ""

    # ------------------------------------------------------------ one request at a time

    def call(self, data: bytes) -> Outcome:
        """Sends one request line and returns its reply, retrying until it gets one."""
        failing_since = None
        while True:
            try:
                self.connected().sendall(data)
                outcome = decode_reply(self.read_line())
            except RETRYABLE as exc:
                failing_since = self.failed(exc, failing_since)
                continue
            except BaseException:
                # Interrupted (Ctrl-C, ...): a reply may still come on this
                # connection, and must not be taken for the next call's.
                self.disconnect()
                raise
            if failing_since is not None:
                self.backoff.reset()
            return outcome

    def read_line(self) -> bytes:
        """The next reply line, waiting up to the time-out (blocking socket)."""
        lines = self.lines
        while not lines:
            try:
                data = self.sock.recv(RECV_SIZE)  # type: ignore[union-attr]
            except BlockingIOError:  # SO_RCVTIMEO expired
                raise TimeoutError(f"no reply within {self.timeout:g} s") from None
            if not data:
                raise ConnectionResetError("the server closed the connection")
            lines.extend(self._framer.feed(data))
        return lines.popleft()

    # ------------------------------------------------------------ many requests at once

    def exchange(self, out: bytearray, wait: bool = True) -> None:
        """Sends what the socket takes of ``out`` (removing it) and adds the reply
        lines that came to ``lines``, without blocking. With ``wait``, first waits up
        to the time-out for either to be possible. Leaves the socket non-blocking
        (``end_exchange`` makes it blocking again)."""
        sock = self.connected()
        if sock.gettimeout() != 0.0:
            sock.setblocking(False)
        if wait:
            poller = select.poll()
            poller.register(sock, select.POLLIN | (select.POLLOUT if out else 0))
            if not poller.poll(self.timeout * 1000):
                raise TimeoutError(f"no reply within {self.timeout:g} s")
        if out:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                del out[: sock.send(out)]
        try:
            data = sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            raise ConnectionResetError("the server closed the connection")
        self.lines.extend(self._framer.feed(data))

    def end_exchange(self) -> None:
        if self.sock is not None:
            self.sock.setblocking(True)

    # ------------------------------------------------------------ connection and failure

    def connected(self) -> socket.socket:
        """The socket, connecting (and finding the server) first if there is none."""
        if self.sock is not None:
            return self.sock
        host, port = self.address or self._resolve()
        self._peer = f"{host}:{port}"
        sock = socket.create_connection((host, port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The reply timeout is the kernel's (SO_RCVTIMEO) on a blocking socket: a
        # Python socket timeout would cost a poll() before every send and recv.
        sock.settimeout(None)
        limit = _timeval(self.timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        self.sock = sock
        self._framer = LineFramer(MAX_REPLY_LINE)
        self.lines.clear()
        return sock

    def _resolve(self) -> tuple[str, int]:
        assert self.project is not None
        record = resolve("hashtable", self.project, self.catalogs, timeout=self.timeout)
        if record is None:
            asked = ", ".join(f"{host}:{port}" for host, port in self.catalogs)
            raise NotListed(
                f"the catalog ({asked}) lists no hashtable server for project {self.project!r}"
            )
        try:
            return record_endpoint(record)
        except ValueError as exc:
            raise NotListed(str(exc)) from None

    def disconnect(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.lines.clear()

    def failed(self, exc: Exception, failing_since: float | None) -> float:
        """After a failed attempt: drops the connection, logs, waits; returns when
        the failures began. Raises ``ServiceUnavailable`` past ``give_up_after``."""
        self.disconnect()
        now = time.monotonic()
        if failing_since is None:
            failing_since = now
        if self.give_up_after is not None and now - failing_since >= self.give_up_after:
            raise ServiceUnavailable(
                f"hash table {self.target()} unreachable for {self.give_up_after:g} s: "
                f"{describe_failure(exc)}"
            ) from exc
        delay = self.backoff.next_delay()
        if self.give_up_after is not None:  # the last try comes when the time is up
            delay = min(delay, failing_since + self.give_up_after - now)
        log.warning(
            "hash table %s: %s; retrying in %.1f s", self.target(), describe_failure(exc), delay
        )
        time.sleep(delay)
        return failing_since

    def target(self) -> str:
        """Which server, for messages."""
        if self.address is not None:
            return f"at {self.address[0]}:{self.address[1]}"
        where = f" (last at {self._peer})" if self._peer else ""
        return f"project {self.project!r}{where}"


class Numbering:
    """A client's exactly-once numbering: a random id, mutations numbered 1, 2,
    3, ..., and ``acked``, the highest n such that the replies of all mutations
    <= n are in hand (sent with each mutation, so the server may forget them)."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.seq = 0
        self.acked = 0

    def encode(self, request: Request) -> bytes:
        """The request's line: a mutation gets the next number (kept through every
        resend, since the line is); a read is encoded as it is. Raises
        ``TypeError`` for a value JSON cannot carry, and then uses no number."""
        if request.method not in MUTATIONS:
            return encode_request(request)
        request.client, request.seq, request.ack = self.client_id, self.seq + 1, self.acked
        data = encode_request(request)
        self.seq += 1
        return data

    def answered(self, request: Request) -> None:
        """The reply to ``request`` is in hand (replies come in order)."""
        if request.seq is not None:
            self.acked = request.seq


def describe_failure(exc: Exception) -> str:
    """One failure, in words for the log line."""
    if isinstance(exc, TimeoutError | BlockingIOError):  # BlockingIOError: SO_SNDTIMEO
        return "no answer in time"
    if isinstance(exc, CatalogUnavailable | NotListed):
        return str(exc)
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text[0].lower() + text[1:] if text else type(exc).__name__


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))


__all__ = [
    "DEFAULT_TIMEOUT",
    "RETRYABLE",
    "NotListed",
    "Numbering",
    "ServiceUnavailable",
    "Transport",
    "describe_failure",
]
