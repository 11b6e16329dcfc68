"""The LS's link to one TS: connects without blocking (then, for a TS of the
LS's project, runs a TLS handshake that proves the TS holds the secret),
reconnects with backoff."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import ssl
import threading
from concurrent.futures import Future
from typing import Any

from lb.protocol import MAX_ANSWER_LINE
from netkit.backoff import Backoff
from netkit.connection import Closed, Connection, TlsConnection
from netkit.tls import TlsSession

log = logging.getLogger("lb.tslink")

# First retry soon (a TS restarting takes a moment), then back off up to the cap,
# so that a TS listed but dead costs a connection attempt every few seconds at most.
RETRY_INITIAL = 0.5
RETRY_CAP = 10.0
# A connection that succeeds does not restart the schedule by itself: a TS that
# accepts and closes at once (or sends an over-long line, or refuses plain text)
# would then be redialled every RETRY_INITIAL forever. The link must prove
# itself first: an answer to a waiting query, or this long up (longer than a TS
# of a project holds a plain-text peer that says nothing: 10 s).
STABLE_AFTER = 30.0

# Queries queued for a TS that does not read them (hung, or SIGSTOPped) beyond
# this are dropped rather than buffered: the other TSs answer them meanwhile, and
# a TS that wakes up should not first chew through a backlog of dead queries.
SEND_HIGH_WATER = 256 * 1024

# A TS given by name is looked up in a thread, so that a slow or dead DNS server
# never holds the event loop; the loop looks at the lookup this often meanwhile.
LOOKUP_POLL = 0.005

DOWN, RESOLVING, CONNECTING, HANDSHAKING, UP = (
    "down",
    "resolving",
    "connecting",
    "handshaking",
    "up",
)


class TsLink:
    """A TS's address and the state of the connection to it.

    ``down`` (waiting until ``due`` to try again), ``resolving`` (its name being
    looked up in a thread; ``connect`` again at ``due`` to see), ``connecting`` (a
    non-blocking connect in flight, given up at ``due``), ``handshaking`` (with
    ``tls``: the TLS handshake in flight, given up at ``due``), or ``up``
    (``conn`` is a ``Connection``, a ``TlsConnection`` with ``tls``). The event
    loop selects on ``sock`` and calls ``connect``, ``finish_connect``,
    ``read_lines`` or ``fail``; the link keeps its own schedule.

    ``tls``: a client context (``Secret.client_context``), and ``server_name``
    the project's service name (SNI); None for a TS given on the command line,
    which speaks the assignment's plain text.
    """

    def __init__(
        self,
        host: str,
        port: int,
        connect_timeout: float,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.connect_timeout = connect_timeout
        self.tls = tls
        self.server_name = server_name
        # Set at a failed handshake, so that a TS that keeps failing (an impostor,
        # or a TS with another secret) is reported once, not at every attempt.
        self.refused = False
        self.state = DOWN
        self.due = 0.0
        self.sock: socket.socket | None = None
        self.conn: Connection | None = None
        self.backoff = Backoff(RETRY_INITIAL, RETRY_CAP)
        self.attempts = 0
        self.up_since = 0.0
        # Set while queries are being dropped for a TS that does not read them.
        self.dropping = False
        self._lookup: Future[list[Any]] | None = None
        self._lookup_deadline = 0.0

    def __str__(self) -> str:
        return self.name

    def connect(self, now: float) -> None:
        """Starts connecting, or goes on looking the name up; on an immediate
        failure the link is down again."""
        try:
            infos = self._addresses(now)
        except OSError as exc:
            self.fail(now, f"cannot resolve: {exc.strerror or exc}")
            return
        if infos is None:
            return  # still looking the name up
        try:
            # Tried in turn, one per attempt, so that a name with an IPv6 and an
            # IPv4 address reaches a TS that listens on only one of them.
            family, kind, proto, _, address = infos[self.attempts % len(infos)]
            self.attempts += 1
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            self.fail(now, f"cannot connect: {exc.strerror or exc}")
            return
        sock.setblocking(False)
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            sock.close()
            self.fail(now, errno.errorcode.get(code, str(code)))
            return
        self.sock = sock
        self.state = CONNECTING
        self.due = now + self.connect_timeout

    def _addresses(self, now: float) -> list[Any] | None:
        """The TS's addresses, looked up at each attempt (a TS may move): at once
        for an IP address, in a thread for a name (None while it runs)."""
        if self._lookup is None:
            with contextlib.suppress(socket.gaierror):
                return socket.getaddrinfo(
                    self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
                )
            self._lookup = _look_up(self.host, self.port)
            self._lookup_deadline = now + self.connect_timeout
        if not self._lookup.done():
            if now >= self._lookup_deadline:
                self._lookup = None  # its thread ends on its own; the answer is dropped
                raise TimeoutError(f"no answer in {self.connect_timeout:g} s")
            self.state = RESOLVING
            self.due = now + LOOKUP_POLL
            return None
        lookup, self._lookup = self._lookup, None
        return lookup.result()  # or raises the lookup's error (an OSError)

    def finish_connect(self, now: float) -> str | None:
        """Called when the connecting socket is writable: None if the connection
        is up (or, with ``tls``, its handshake under way), else why it failed (the
        loop then unregisters it and calls ``fail``)."""
        assert self.sock is not None
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            return f"connect failed: {errno.errorcode.get(code, code)}"
        if self.tls is None:
            self.conn = Connection(
                self.sock, self.name, max_line=MAX_ANSWER_LINE, high_water=SEND_HIGH_WATER
            )
            self._up(now)
            return None
        session = TlsSession(self.tls, server_side=False, server_hostname=self.server_name)
        conn = TlsConnection(
            self.sock, self.name, session, max_line=MAX_ANSWER_LINE, high_water=SEND_HIGH_WATER
        )
        self.conn = conn
        try:
            conn.start_handshake()
        except Closed as exc:
            return f"TLS handshake failed: {exc}"
        self.state = HANDSHAKING
        self.due = now + self.connect_timeout
        return None

    def read_lines(self, now: float) -> list[bytes]:
        """The TS's lines that arrived; while ``handshaking``, advances the handshake
        and turns ``up`` once it is complete. Raises ``Closed`` (and its kinds) and
        ``LineTooLong``, as ``Connection.read_lines``."""
        assert self.conn is not None
        lines = self.conn.read_lines()
        if self.state == HANDSHAKING and self.conn.established:
            self._up(now)
        return lines

    def answered(self) -> None:
        """The TS answered a query: the link works, so a later failure is retried
        from the start of the schedule."""
        self.backoff.reset()

    def _up(self, now: float) -> None:
        self.state = UP
        self.up_since = now
        self.dropping = False
        self.refused = False
        if self.tls is None:
            log.info("connected to TS %s", self.name)
        else:
            log.info("connected to TS %s (TLS: it holds our secret)", self.name)

    def fail(self, now: float, reason: str, quietly: bool = False) -> None:
        """Closes whatever is open and schedules the next attempt; ``quietly``: the
        caller reports the failure (a failed handshake), so it is logged as debug."""
        was_up = self.state == UP
        self.close()
        if was_up and now - self.up_since >= STABLE_AFTER:
            self.backoff.reset()
        delay = self.backoff.next_delay()
        self.due = now + delay
        level = logging.WARNING if was_up or self.backoff.attempts == 1 else logging.INFO
        log.log(
            logging.DEBUG if quietly else level,
            "TS %s unavailable (%s); next attempt in %.1f s",
            self.name,
            reason,
            delay,
        )

    def close(self) -> None:
        """Closes the connection; the link stays down until ``connect`` is called."""
        self.state = DOWN
        self._lookup = None
        if self.conn is not None:
            self.conn.close()
        elif self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.conn = None
        self.sock = None


def _look_up(host: str, port: int) -> Future[list[Any]]:
    """``getaddrinfo`` in a thread of its own. A daemon thread, not a pool's: a
    lookup stuck on a dead DNS server must not hold up the LS's exit."""
    future: Future[list[Any]] = Future()

    def run() -> None:
        try:
            future.set_result(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the loop, which logs it
            future.set_exception(exc)

    threading.Thread(target=run, name=f"lookup {host}", daemon=True).start()
    return future
