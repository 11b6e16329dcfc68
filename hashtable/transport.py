"""One client connection to a hash table server, and what to do when it fails.

``Transport`` finds the server (through the catalog by project, or at a given
address), connects, sends request lines and reads reply lines within a
time-out. When anything fails it drops the connection, says so in one log
line, waits (1 s, 2 s, 4 s, ... up to a cap, reset after a success), and the
caller sends again: the next attempt looks the project up anew, since the
server may have moved. Both the plain client calls and pipelines run on it
(``HashTableClient`` and ``Pipeline``); whether a request may be sent twice is
the caller's business (mutations are numbered: ``hashtable.numbering``).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import time
from collections import deque

from catalog.client import CatalogUnavailable, catalog_addresses, matching, query
from hashtable.endpoints import NotListed, candidates
from hashtable.errors import AuthenticationError, ServiceUnavailable
from hashtable.names import project_problem
from hashtable.protocol import ProtocolError, decode_reply
from hashtable.request import Outcome
from netkit.backoff import Backoff
from netkit.framing import LineFramer
from netkit.security import Secret, service_name
from netkit.tls import TlsError, TlsSession, handshake_blocking

log = logging.getLogger("hashtable.client")

DEFAULT_TIMEOUT = 5.0
# Replies hold whole scans, so they may be far longer than a request.
MAX_REPLY_LINE = 1 << 31
RECV_SIZE = 64 * 1024  # see netkit.connection.RECV_SIZE

# Everything after which a request is sent again, to a freshly resolved server.
RETRYABLE = (OSError, ProtocolError)  # OSError covers timeouts, refusals, CatalogUnavailable


class Transport:
    """A connection to one hash table server that is re-made as often as needed.

    ``project``: found through ``catalog`` (a ``host[:port],...`` list, else
    ``CATALOG_HOST``, else localhost:9097), the server heard from most recently
    among those whose records ``secret`` signed; or ``address``, a fixed
    ``(host, port)``; or both: that project's server at that address, named in
    the handshake, so that a server of another project refuses it
    (``hashtable.singleton`` asks a listed server whether it is up). ``secret``:
    the connection is mutual TLS with it (None:
    plain text, for ``--no-auth`` servers). ``timeout``: seconds to wait for a
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
        secret: Secret | None = None,
    ) -> None:
        if project is None and address is None:
            raise ValueError("give a project name or an address")
        if project is not None and (problem := project_problem(project)):
            raise ValueError(problem)  # no server is listed under it: it would wait for ever
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.project = project
        self.address = address
        self.timeout = timeout
        self.give_up_after = give_up_after
        self.catalogs = catalog_addresses(catalog) if address is None else []
        self.backoff = Backoff(backoff_initial, backoff_cap)
        self.secret = secret
        self._tls_context = secret.client_context() if secret is not None else None
        self.sock: socket.socket | None = None
        self.tls: TlsSession | None = None
        self.lines: deque[bytes] = deque()  # replies received, not yet taken
        self._framer = LineFramer(MAX_REPLY_LINE)
        self._cipher_out = bytearray()  # TLS records not yet taken by the socket
        self._peer = ""
        # A server of the project has taken our secret: from then on, records signed with
        # another are impostors' (a wrong secret fails the first time), never the answer.
        self._secret_proven = False
        self._warned_foreign = False

    # ------------------------------------------------------------ one request at a time

    def call(self, data: bytes) -> Outcome:
        """Sends one request line and returns its reply, retrying until it gets one."""
        failing_since = None
        while True:
            try:
                self.send_all(data)
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

    def send_all(self, data: bytes) -> None:
        """Sends a request line (connecting first if need be), blocking."""
        sock = self.connected()
        if self.tls is not None:
            self.tls.send(data)
            data = self.tls.take_output()
        sock.sendall(data)

    def read_line(self) -> bytes:
        """The next reply line, waiting up to the time-out (blocking socket)."""
        lines = self.lines
        while not lines:
            self._take(self._receive())
        return lines.popleft()

    def _receive(self) -> bytes:
        try:
            data = self.sock.recv(RECV_SIZE)  # type: ignore[union-attr]
        except BlockingIOError:  # SO_RCVTIMEO expired
            raise TimeoutError(f"no reply within {self.timeout:g} s") from None
        if not data:
            raise ConnectionResetError("the server closed the connection")
        return data

    def _take(self, data: bytes) -> None:
        """Frames received bytes into reply lines (decrypting them first)."""
        if self.tls is not None:
            try:
                data = self.tls.feed(data)
            except TlsError as exc:  # altered in transit, or not our server after all
                raise ConnectionResetError(f"TLS: {exc}") from None
        self.lines.extend(self._framer.feed(data))

    # ------------------------------------------------------------ many requests at once

    def exchange(self, out: bytearray, wait: bool = True) -> None:
        """Sends what the socket takes of ``out`` (removing it) and adds the reply
        lines that came to ``lines``, without blocking. With ``wait``, first waits up
        to the time-out for either to be possible. Leaves the socket non-blocking
        (``end_exchange`` makes it blocking again)."""
        sock = self.connected()
        if wait:
            poller = select.poll()
            writing = out or self._cipher_out
            poller.register(sock, select.POLLIN | (select.POLLOUT if writing else 0))
            if not poller.poll(self.timeout * 1000):
                raise TimeoutError(f"no reply within {self.timeout:g} s")
        self.push(out)
        self.pull()

    def push(self, out: bytearray) -> None:
        """Sends what the socket takes of ``out`` now (removing it; with TLS, its
        records wait in the transport until sent: ``sending``). Non-blocking, on a
        connected transport (``connected()``)."""
        sock = self.sock
        if sock.gettimeout() != 0.0:  # type: ignore[union-attr]
            sock.setblocking(False)  # type: ignore[union-attr]
        if self.tls is not None:
            if out:
                self.tls.send(out)
                out.clear()
                self._cipher_out += self.tls.take_output()
            out = self._cipher_out
        if out:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                del out[: sock.send(out)]  # type: ignore[union-attr]

    def pull(self) -> None:
        """Adds the reply lines that have come to ``lines``, without waiting."""
        try:
            data = self.sock.recv(RECV_SIZE)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            raise ConnectionResetError("the server closed the connection")
        self._take(data)

    def end_exchange(self) -> None:
        if self.sock is not None:
            self.sock.setblocking(True)

    @property
    def sending(self) -> bool:
        """Whether bytes given to ``exchange`` still wait for the socket (TLS records)."""
        return bool(self._cipher_out)

    # ------------------------------------------------------------ connection and failure

    def connected(self) -> socket.socket:
        """The socket, connecting (and finding the server) first if there is none.

        With a project, tries the catalog's candidates in turn, freshest first: one
        whose handshake fails is an impostor replaying a record (the record's
        signature said the server holds our secret; its address cannot be signed)."""
        if self.sock is not None:
            return self.sock
        if self.address is not None:
            return self._open(*self.address)
        failures = []
        for host, port in self._candidates():
            try:
                return self._open(host, port)
            except AuthenticationError as exc:
                log.warning("%s:%d is not %s: %s", host, port, self.target(), exc)
                failures.append(f"{host}:{port}: {exc}")
            except OSError as exc:
                failures.append(f"{host}:{port}: {describe_failure(exc)}")
        raise ConnectionError("no server answered: " + "; ".join(failures))

    def _open(self, host: str, port: int) -> socket.socket:
        sock = socket.create_connection((host, port), timeout=self.timeout)
        try:
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
            self._cipher_out.clear()
            self.tls = None
            if self._tls_context is not None:
                self._handshake(sock)
        except BaseException:
            self.sock = None
            sock.close()
            raise
        self._peer = f"{host}:{port}"  # the server in use, which messages name; not the last tried
        return sock

    def _handshake(self, sock: socket.socket) -> None:
        """Mutual TLS: we prove the secret and so must the server. Raises
        ``AuthenticationError`` when it cannot (not worth retrying)."""
        assert self._tls_context is not None
        name = service_name("hashtable", self.project) if self.project is not None else None
        tls = TlsSession(self._tls_context, server_side=False, server_hostname=name)
        try:
            handshake_blocking(sock, tls, RECV_SIZE)
        except TlsError as exc:
            raise AuthenticationError(f"{self.target()}: {exc}") from None
        self.tls = tls
        self._secret_proven = True

    def _candidates(self) -> list[tuple[str, int]]:
        """The endpoints the catalog lists for the project (``hashtable.endpoints``)."""
        assert self.project is not None
        found = matching(
            query(catalogs=self.catalogs, timeout=self.timeout), "hashtable", self.project
        )
        try:
            return candidates(
                found,
                self.project,
                self.secret,
                secret_proven=self._secret_proven,
                catalogs=self.catalogs,
            )
        except NotListed as exc:
            if exc.foreign and not self._warned_foreign:
                self._warned_foreign = True
                log.warning("%s", exc)
            raise

    def disconnect(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.tls = None
        self.lines.clear()
        self._cipher_out.clear()

    def failed(self, exc: Exception, failing_since: float | None) -> float:
        """After a failed attempt: drops the connection, logs, waits; returns when
        the failures began. Raises ``ServiceUnavailable`` past ``give_up_after``."""
        failing_since, delay = self.retry_after(exc, failing_since)
        time.sleep(delay)
        return failing_since

    def retry_after(self, exc: Exception, failing_since: float | None) -> tuple[float, float]:
        """``failed`` without the wait: drops the connection, logs, and returns when
        the failures began and how long to wait before the next attempt (for a
        caller with other servers to talk to meanwhile, ``hashtable.cluster``)."""
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
        return failing_since, delay

    def target(self) -> str:
        """Which server, for messages."""
        if self.address is not None:
            return f"at {self.address[0]}:{self.address[1]}"
        where = f" (last at {self._peer})" if self._peer else ""
        return f"project {self.project!r}{where}"


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
    "ServiceUnavailable",
    "Transport",
    "describe_failure",
]
