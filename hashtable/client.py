"""The hash table client library: the table's operations as method calls.

    with HashTableClient("alice-a4") as table:      # found through the catalog
        table.insert("zebra", {"weight": 100})
        table.lookup("zebra")                        # {'weight': 100}
        table.remove("zebra")                        # returns the removed value
        table.lookup("zebra")                        # raises KeyError

When the network, the catalog or the server fails, a call does not fail: it logs
one warning line, waits (1 s, 2 s, 4 s, ... up to a cap, reset after a success),
looks the project up again (the server may have moved), reconnects and sends the
request again. Mutations carry this client's random id and a sequence number,
so a request sent twice is applied once and answered the same both times.
``KeyError`` and ``InvalidRequestError`` are answers, not failures: never retried.

A client is for one thread at a time.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import time
import uuid
from collections import deque
from typing import Any

from catalog.client import CatalogUnavailable, catalog_addresses, record_endpoint, resolve
from hashtable.protocol import ProtocolError, decode_reply, encode_request
from hashtable.request import MUTATIONS, Outcome, Request, Status
from netkit.backoff import Backoff
from netkit.framing import LineFramer

log = logging.getLogger("hashtable.client")

DEFAULT_TIMEOUT = 5.0
# Replies hold whole scans, so they may be far longer than a request.
MAX_REPLY_LINE = 1 << 31
RECV_SIZE = 64 * 1024  # see netkit.connection.RECV_SIZE
# Requests a pipeline has in flight. The server remembers the outcomes of a client's
# unacknowledged mutations, a bounded number of them; this stays well below that bound.
# Requests encoded and sent at a time: small enough that the server works on one
# chunk while this side encodes the next, large enough to keep syscalls few.
PIPELINE_CHUNK = 256
PIPELINE_WINDOW = 1000


class HashTableError(Exception):
    """An error reported by the hash table service (other than a missing key)."""


class InvalidRequestError(HashTableError, ValueError):
    """The server refused the request itself: wrong argument type, bad regex, ..."""


class ServerError(HashTableError):
    """The server failed to carry out the operation (see the server's log)."""


class ServiceUnavailable(HashTableError, ConnectionError):
    """Retrying for ``give_up_after`` seconds did not reach the service."""


class _NotListed(ConnectionError):
    """The catalog answered but lists no usable server for the project."""


# What a request can end in besides a result (results() lists these in place).
_ANSWERS = (KeyError, TypeError, HashTableError)

# Everything after which the request is sent again, to a freshly resolved server.
_RETRYABLE = (OSError, ProtocolError)  # OSError covers timeouts, refusals, CatalogUnavailable


class HashTableClient:
    """A connection to the hash table service of one project.

    ``project``: found through the catalog (``catalog``, a ``host[:port],...``
    list, else ``CATALOG_HOST``, else localhost:9097); the server heard from most
    recently wins. ``HashTableClient.at(host, port)`` talks to one server and never
    asks a catalog. ``timeout``: seconds to wait for a reply (or a connection)
    before trying again. ``give_up_after``: seconds of failed retries after which a
    call raises ``ServiceUnavailable``; by default it never gives up.
    """

    def __init__(
        self,
        project: str | None = None,
        *,
        catalog: str | None = None,
        address: tuple[str, int] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        backoff_initial: float = 1.0,
        backoff_cap: float = 30.0,
        give_up_after: float | None = None,
    ) -> None:
        if (project is None) == (address is None):
            raise ValueError("give a project name or an address (HashTableClient.at)")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.project = project
        self.address = address
        self.timeout = timeout
        self.give_up_after = give_up_after
        self._catalogs = catalog_addresses(catalog) if address is None else []
        self._backoff = Backoff(backoff_initial, backoff_cap)
        # Exactly-once: a random id, mutations numbered 1, 2, 3, ..., and ack = the
        # highest n such that the replies of all mutations <= n are in hand.
        self.client_id = uuid.uuid4().hex
        self._seq = 0
        self._acked = 0
        self._sock: socket.socket | None = None
        self._framer = LineFramer(MAX_REPLY_LINE)
        self._lines: deque[bytes] = deque()
        self._peer = ""

    @classmethod
    def at(cls, host: str, port: int, **options: Any) -> HashTableClient:
        """A client for the server at ``host:port``, without a catalog."""
        return cls(address=(host, port), **options)

    # ------------------------------------------------------------ operations

    def insert(self, key: str, value: Any) -> None:
        """Sets ``key`` to ``value`` (any JSON value)."""
        self._mutate(Request("insert", key, value))

    def lookup(self, key: str) -> Any:
        """The value of ``key``; ``KeyError`` if there is none."""
        return _result(self._call(encode_request(Request("lookup", key))), key)

    def remove(self, key: str) -> Any:
        """Removes ``key`` and returns its value; ``KeyError`` if there is none."""
        return self._mutate(Request("remove", key))

    def scan(self, regex: str) -> list[tuple[str, Any]]:
        """The ``(key, value)`` pairs whose key ``regex`` matches (``re.search``)."""
        return _pairs(_result(self._call(encode_request(Request("scan", regex=regex)))))

    def size(self) -> int:
        """The number of keys."""
        return _result(self._call(encode_request(Request("size"))))

    def query(self, subkey: str, subvalue: Any) -> list[tuple[str, Any]]:
        """The ``(key, value)`` pairs whose value is an object with ``subkey == subvalue``."""
        request = Request("query", subkey=subkey, subvalue=subvalue)
        return _pairs(_result(self._call(encode_request(request))))

    def pipeline(self) -> Pipeline:
        """Requests sent together without waiting for each reply; see ``Pipeline``."""
        return Pipeline(self)

    def close(self) -> None:
        self._disconnect()

    def __enter__(self) -> HashTableClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<HashTableClient {self._target()}>"

    # ------------------------------------------------------------ exactly-once

    def _session(self, request: Request) -> bytes:
        """Numbers a mutation and encodes it; reads are encoded as they are."""
        if request.method not in MUTATIONS:
            return encode_request(request)
        request.client, request.seq, request.ack = self.client_id, self._seq + 1, self._acked
        data = encode_request(request)  # may raise TypeError: then no number is used
        self._seq += 1
        return data

    def _mutate(self, request: Request) -> Any:
        data = self._session(request)
        outcome = self._call(data)
        self._acked = request.seq  # type: ignore[assignment]  # set by _session
        return _result(outcome, request.key)

    # ------------------------------------------------------------ transport

    def _call(self, data: bytes) -> Outcome:
        """Sends one request line and returns its reply, retrying until it gets one."""
        failing_since = None
        while True:
            try:
                sock = self._sock or self._connect()
                sock.sendall(data)
                outcome = decode_reply(self._read_line())
            except _RETRYABLE as exc:
                failing_since = self._retry_after(exc, failing_since)
                continue
            except BaseException:
                # Interrupted (Ctrl-C, ...): a reply may still come on this
                # connection, and must not be taken for the next call's.
                self._disconnect()
                raise
            if failing_since is not None:
                self._backoff.reset()
            return outcome

    def _read_line(self) -> bytes:
        lines = self._lines
        while not lines:
            try:
                data = self._sock.recv(RECV_SIZE)  # type: ignore[union-attr]
            except BlockingIOError:  # SO_RCVTIMEO expired
                raise TimeoutError(f"no reply within {self.timeout:g} s") from None
            if not data:
                raise ConnectionResetError("the server closed the connection")
            lines.extend(self._framer.feed(data))
        return lines.popleft()

    def _connect(self) -> socket.socket:
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
        self._sock = sock
        self._framer = LineFramer(MAX_REPLY_LINE)
        self._lines.clear()
        return sock

    def _resolve(self) -> tuple[str, int]:
        record = resolve("hashtable", self.project, self._catalogs, timeout=self.timeout)  # type: ignore[arg-type]
        if record is None:
            asked = ", ".join(f"{host}:{port}" for host, port in self._catalogs)
            raise _NotListed(
                f"the catalog ({asked}) lists no hashtable server for project {self.project!r}"
            )
        try:
            return record_endpoint(record)
        except ValueError as exc:
            raise _NotListed(str(exc)) from None

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._lines.clear()

    def _retry_after(self, exc: Exception, failing_since: float | None) -> float:
        """Drops the connection, logs, waits; returns when the failures began."""
        self._disconnect()
        now = time.monotonic()
        if failing_since is None:
            failing_since = now
        if self.give_up_after is not None and now - failing_since >= self.give_up_after:
            raise ServiceUnavailable(
                f"hash table {self._target()} unreachable for {self.give_up_after:g} s: "
                f"{_describe(exc)}"
            ) from exc
        delay = self._backoff.next_delay()
        if self.give_up_after is not None:  # the last try comes when the time is up
            delay = min(delay, failing_since + self.give_up_after - now)
        log.warning("hash table %s: %s; retrying in %.1f s", self._target(), _describe(exc), delay)
        time.sleep(delay)
        return failing_since

    def _target(self) -> str:
        if self.address is not None:
            return f"at {self.address[0]}:{self.address[1]}"
        where = f" (last at {self._peer})" if self._peer else ""
        return f"project {self.project!r}{where}"


class Reply:
    """The reply to one pipelined request, available once the pipeline has run."""

    __slots__ = ("_error", "_key", "_outcome")

    def __init__(self, key: str | None) -> None:
        self._key = key
        self._outcome: Outcome | None = None
        self._error: Exception | None = None  # the request could not be sent

    def result(self) -> Any:
        """The request's result; raises as the plain method call would."""
        if self._error is not None:
            raise self._error
        if self._outcome is None:
            raise RuntimeError("the pipeline has not run yet")
        return _result(self._outcome, self._key)

    def exception(self) -> Exception | None:
        """The exception ``result()`` raises (KeyError, ...), or None."""
        try:
            self.result()
        except _ANSWERS as exc:
            return exc
        return None


class Pipeline:
    """Requests sent back to back, their replies read as they come.

        with table.pipeline() as p:
            for n in range(1000):
                p.insert(f"k{n}", n)
            found = p.lookup("k7")
        found.result()      # 7
        p.results()         # [None, None, ..., 7]

    The block runs the requests when it ends (or call ``execute()``); they are
    executed in order. On a failure the unanswered ones are sent again, exactly
    once for mutations, as for single calls. ``results()`` lists each request's
    result, with a failed request's exception (e.g. ``KeyError``) in its place.
    """

    def __init__(self, client: HashTableClient) -> None:
        self._client = client
        self._queued: list[tuple[Request, Reply]] = []
        self._replies: list[Reply] = []

    def insert(self, key: str, value: Any) -> Reply:
        return self._add(Request("insert", key, value))

    def lookup(self, key: str) -> Reply:
        return self._add(Request("lookup", key))

    def remove(self, key: str) -> Reply:
        return self._add(Request("remove", key))

    def scan(self, regex: str) -> Reply:
        return self._add(Request("scan", regex=regex))

    def size(self) -> Reply:
        return self._add(Request("size"))

    def query(self, subkey: str, subvalue: Any) -> Reply:
        return self._add(Request("query", subkey=subkey, subvalue=subvalue))

    def _add(self, request: Request) -> Reply:
        reply = Reply(request.key)
        self._queued.append((request, reply))
        self._replies.append(reply)
        return reply

    def results(self) -> list[Any]:
        """Every request's result in order; a failed one's exception in its place."""
        results = []
        for reply in self._replies:
            try:
                results.append(reply.result())
            except _ANSWERS as exc:
                results.append(exc)
        return results

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.execute()

    def execute(self) -> None:
        """Sends the queued requests and waits for all their replies."""
        queued, self._queued = self._queued, []
        client = self._client
        lines = client._lines  # replies received, not yet decoded
        # Requests sent and not answered, oldest first: (line, index in queued).
        unanswered: deque[tuple[bytes, int]] = deque()
        done = encoded = 0  # requests with an outcome / looked at for sending
        total = len(queued)
        out = bytearray()
        failing_since = None
        session, popleft = client._session, unanswered.popleft
        try:
            while done < total:
                try:
                    sock = client._sock or client._connect()
                    # Top up and send before decoding what came back, so that
                    # the server has work while this side decodes.
                    room = PIPELINE_WINDOW - (len(unanswered) - len(lines))
                    stop = min(total, encoded + PIPELINE_CHUNK, encoded + room)
                    for index in range(encoded, stop):
                        request, reply = queued[index]
                        try:
                            # A mutation is numbered when first encoded and keeps
                            # its number (and line) through every resend.
                            data = session(request)
                        except TypeError as exc:  # a value JSON cannot carry: not sent
                            reply._error = exc
                            done += 1
                        else:
                            unanswered.append((data, index))
                            out += data
                    encoded = max(encoded, stop)
                    if not unanswered:
                        continue  # the rest could not be sent: nothing to wait for
                    if not lines:
                        _exchange(sock, out, lines, client)
                        continue
                    if out:
                        _exchange(sock, out, lines, client, wait=False)
                    if len(lines) > len(unanswered):
                        raise ProtocolError("the server sent a reply to no request")
                    for line in lines:
                        request, reply = queued[unanswered[0][1]]
                        reply._outcome = decode_reply(line)  # may raise: then it is resent
                        popleft()
                        done += 1
                        if request.seq is not None:
                            client._acked = request.seq
                    lines.clear()
                except _RETRYABLE as exc:
                    failing_since = client._retry_after(exc, failing_since)
                    # Sent again on the new connection.
                    out[:] = b"".join(data for data, _ in unanswered)
        except BaseException:
            client._disconnect()  # replies may still come: not for the next call
            raise
        finally:
            if client._sock is not None:
                client._sock.setblocking(True)
        if failing_since is not None:
            client._backoff.reset()


def _exchange(
    sock: socket.socket,
    out: bytearray,
    lines: deque[bytes],
    client: HashTableClient,
    wait: bool = True,
) -> None:
    """Sends what the socket takes of ``out`` and adds the reply lines that came.

    With ``wait``, waits up to the client's timeout for either to be possible."""
    if sock.gettimeout() != 0.0:
        sock.setblocking(False)  # execute() makes it blocking again when done
    if wait:
        poller = select.poll()
        poller.register(sock, select.POLLIN | (select.POLLOUT if out else 0))
        if not poller.poll(client.timeout * 1000):
            raise TimeoutError(f"no reply within {client.timeout:g} s")
    if out:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            del out[: sock.send(out)]
    try:
        data = sock.recv(RECV_SIZE)
    except (BlockingIOError, InterruptedError):
        return
    if not data:
        raise ConnectionResetError("the server closed the connection")
    lines.extend(client._framer.feed(data))


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))


def _result(outcome: Outcome, key: str | None = None) -> Any:
    status = outcome.status
    if status is Status.OK:
        return outcome.result
    if status is Status.FAILED:
        if outcome.error == "KeyError":
            raise KeyError(key)
        raise ServerError(f"{outcome.error}: {outcome.message}")
    raise InvalidRequestError(outcome.message)


def _pairs(items: list[list[Any]]) -> list[tuple[str, Any]]:
    return [(key, value) for key, value in items]


def _describe(exc: Exception) -> str:
    if isinstance(exc, TimeoutError | BlockingIOError):  # BlockingIOError: SO_SNDTIMEO
        return "no answer in time"
    if isinstance(exc, CatalogUnavailable | _NotListed):
        return str(exc)
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text[0].lower() + text[1:] if text else type(exc).__name__
