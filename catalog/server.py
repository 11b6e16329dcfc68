"""The catalog server's event loop: sockets, timeouts and nothing else.

One thread on the event-loop core (``netkit.loop``), every socket non-blocking. What to do with
the bytes is decided elsewhere (``ingest`` for updates, ``app`` for queries), so
the loop only moves data and enforces the bounds that protect everyone from
one peer:

- UDP P: updates, up to ``UDP_BATCH`` datagrams per turn so queries are not starved;
- TCP P+1: updates, one per connection, at most ``MAX_UPDATE_BYTES`` within
  the request timeout (``REQUEST_TIMEOUT`` seconds by default);
- TCP P: HTTP, a request head within the request timeout, a reply that must make
  progress every ``SEND_TIMEOUT``; replies are shared bytes, never copied per peer;
- at most ``max_connections`` TCP peers and ``MAX_QUEUED_BYTES`` of replies
  queued in all; beyond that, new peers get 503 or are closed at once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from catalog.app import CatalogApp
from catalog.http import HttpError, RequestReader, response
from catalog.ingest import Ingest, Stats
from catalog.names import Resolver
from catalog.persist import Saver, StateDir, restore
from catalog.records import DEFAULT_LIFETIME, MAX_RECORDS, RecordStore
from catalog.updates import MAX_UPDATE_BYTES
from netkit.accepting import Acceptor
from netkit.listeners import (
    RESERVED_FDS,
    connection_capacity,
    open_datagram_socket,
    open_listener,
    raise_open_file_limit,
    shut_down_writing,
)
from netkit.loop import READ, WRITE, EventLoop, Timer, Watch

log = logging.getLogger("catalog.server")

MAX_CONNECTIONS = 1024
MAX_QUEUED_BYTES = 256 * 1024 * 1024
REQUEST_TIMEOUT = 10.0
SEND_TIMEOUT = 30.0
LINGER = 2.0  # after a reply, how long to wait for the client to close first
UDP_BATCH = 512
LISTEN_BACKLOG = 512
UDP_BUFFER = 8 * 1024 * 1024  # absorbs bursts of datagrams between two loop turns
RECV_SIZE = 64 * 1024
SAVE_INTERVAL = 5.0
REPORT_INTERVAL = 60.0

READING, WRITING, LINGERING = "reading", "writing", "lingering"


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 9097
    lifetime: float = DEFAULT_LIFETIME
    state_dir: Path | None = None  # None: keep nothing on disk
    max_records: int = MAX_RECORDS
    request_timeout: float = REQUEST_TIMEOUT


class _Peer:
    """One TCP connection: an HTTP client on P, or an update sender on P+1."""

    __slots__ = ("address", "data", "deadline", "out", "reader", "sock", "state", "timer", "watch")

    def __init__(self, sock: socket.socket, address: str, deadline: float) -> None:
        self.sock = sock
        self.address = address
        self.deadline = deadline  # loop time; the timer re-arms itself when it moved
        self.state = READING
        self.reader = RequestReader()
        self.data = bytearray()  # an update being received
        self.out: deque[memoryview] = deque()
        self.watch: Watch | None = None
        self.timer: Timer | None = None

    @property
    def queued(self) -> int:
        return sum(len(view) for view in self.out)


def sender_address(address: tuple) -> str:
    """The sender's IP as records show it: IPv4-mapped IPv6 as plain IPv4, no scope."""
    host = address[0]
    if ":" not in host:
        return host  # IPv4: nothing to convert, and this runs for every datagram
    host = host.split("%", 1)[0]
    with contextlib.suppress(ValueError):
        mapped = ipaddress.ip_address(host)
        if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped:
            return str(mapped.ipv4_mapped)
    return host


class CatalogServer:
    """Binds at construction (``OSError`` with a clear message), serves in ``run()``."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.state = StateDir(config.state_dir) if config.state_dir else None
        self._sockets: list[socket.socket] = []
        try:
            self.udp = self._keep(open_datagram_socket(config.host, config.port, UDP_BUFFER))
            self.http = self._keep(open_listener(config.host, config.port, LISTEN_BACKLOG))
            self.updates = self._keep(open_listener(config.host, config.port + 1, LISTEN_BACKLOG))
            if self.state:
                self.state.open()
        except BaseException:
            self._close_sockets()
            raise
        self.store = RecordStore(config.lifetime, config.max_records, clock=clock)
        self.resolver = Resolver()
        self.ingest = Ingest(self.store, self.resolver, clock)
        self.app = CatalogApp(self.store, f"catalog on {socket.gethostname()}:{config.port}")
        self.max_connections = connection_capacity(
            MAX_CONNECTIONS, raise_open_file_limit(MAX_CONNECTIONS + RESERVED_FDS)
        )
        self.loop = EventLoop()
        self._peers: dict[socket.socket, _Peer] = {}
        self._queued = 0
        self._refused = 0
        self._saver: Saver | None = None
        self._saved_version = self.store.version
        self._last_save = -SAVE_INTERVAL
        self._save_timer: Timer | None = None
        # Chores at exact times: records expiring, updates done waiting for a name.
        self._expiry_alarm = self.loop.alarm(self._purge)
        self._naming_alarm = self.loop.alarm(self._stop_waiting)

    def _keep(self, sock: socket.socket) -> socket.socket:
        self._sockets.append(sock)
        return sock

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Serves until ``stop()``; then saves the records and releases everything."""
        if self.state:
            restore(self.store, self.state)
            self._saver = Saver(self.state)
            self._saved_version = self.store.version
        host, port = self.config.host, self.config.port
        log.info(
            "catalog listening on %s:%d (UDP updates, HTTP queries) and %s:%d (TCP updates); "
            "lifetime %ss; state in %s",
            host, port, host, port + 1, self.config.lifetime, self.state.path if self.state else "memory only",
        )  # fmt: skip
        loop = self.loop
        loop.watch(self.udp, self._read_datagrams, READ)
        self._acceptors = [
            Acceptor(loop, self.http, partial(self._accept, True)),
            Acceptor(loop, self.updates, partial(self._accept, False)),
        ]
        loop.watch(self.resolver, lambda _: self.ingest.names_arrived(), READ)
        loop.call_later(REPORT_INTERVAL, self._report)
        loop.add_turn_hook(self._after_turn)
        try:
            loop.run()
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Asks ``run()`` to return; safe from a signal handler."""
        self.loop.stop()

    def _after_turn(self) -> None:
        """Re-arms the chores from what the turn changed."""
        self._expiry_alarm.set(self._loop_time(self.store.next_expiry()))
        self._naming_alarm.set(self._loop_time(self.ingest.next_deadline()))
        if self._saver and self.store.version != self._saved_version and self._save_timer is None:
            due = max(self.loop.time(), self._last_save + SAVE_INTERVAL)
            self._save_timer = self.loop.call_at(due, self._save)

    def _loop_time(self, wall: float | None) -> float | None:
        """A deadline on the store's clock (wall time), on the loop's clock."""
        return None if wall is None else self.loop.time() + (wall - self.clock())

    def _purge(self) -> None:
        self.store.purge()

    def _stop_waiting(self) -> None:
        self.ingest.stop_waiting()

    def _save(self) -> None:
        self._save_timer = None
        assert self._saver is not None
        self._saver.submit(self.store.json_body())
        self._saved_version, self._last_save = self.store.version, self.loop.time()

    def _shutdown(self) -> None:
        for peer in list(self._peers.values()):
            self._close(peer)
        for acceptor in self._acceptors:
            acceptor.close()
        self.loop.close()
        self._close_sockets()
        self.ingest.stop_waiting(force=True)
        if self._saver and self.state:
            records = len(self.store)
            if self._saver.close(self.store.json_body()):
                log.info("stopped; saved %d records to %s", records, self.state.file)
            else:
                log.error("stopped, but the records could not be saved to %s", self.state.file)
        if self.state:
            self.state.close()
        self.resolver.close()

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()

    def _report(self) -> None:
        self.loop.call_later(REPORT_INTERVAL, self._report)
        if self._refused:
            log.warning("refused %d connections in the last minute (limit reached)", self._refused)
            self._refused = 0
        stats, self.ingest.stats = self.ingest.stats, Stats()
        if stats.updates or stats.rejected:
            log.info(
                "%d records live; in the last minute %d updates (%d new records), %d rejected%s",
                len(self.store), stats.updates, stats.new, stats.rejected,
                f" (last {stats.last_rejection})" if stats.rejected else "",
            )  # fmt: skip

    # ------------------------------------------------------------------ updates

    def _read_datagrams(self, _events: int) -> None:
        for _ in range(UDP_BATCH):
            try:
                data, address = self.udp.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("UDP receive failed: %s", exc)
                return
            self.ingest.receive(data, sender_address(address))

    def _on_update_peer(self, peer: _Peer, _events: int) -> None:
        data = self._recv(peer)
        if data is None:
            return
        if data:
            peer.data += data
            if len(peer.data) <= MAX_UPDATE_BYTES:
                return
        # The sender closed (or sent too much, which decoding refuses): one update.
        self.ingest.receive(bytes(peer.data), peer.address)
        self._close(peer)

    # ------------------------------------------------------------------ HTTP

    def _on_http_peer(self, peer: _Peer, _events: int) -> None:
        if peer.state == WRITING:
            self._flush(peer)
            return
        data = self._recv(peer)
        if data is None:
            return
        if not data or peer.state == LINGERING:
            if not data:
                self._close(peer)  # gone before asking, or done after our reply
            return
        try:
            request = peer.reader.feed(data)
        except HttpError as exc:
            self._reply(peer, self.app.error(exc.status, exc.message))
            return
        if request is None:
            return
        log.debug("%s %s from %s", request.method, request.target, peer.address)
        try:
            parts = self.app.respond(request)
        except Exception:  # a bug must cost one reply, never the catalog
            log.exception("failed to answer %s %s", request.method, request.target)
            parts = self.app.error(500, "internal error", request.path)
        self._reply(peer, parts)

    def _reply(self, peer: _Peer, parts: list[bytes]) -> None:
        size = sum(len(part) for part in parts)
        if self._queued + size > MAX_QUEUED_BYTES:
            parts = self.app.error(503, "the catalog is busy; try again")
            size = sum(len(part) for part in parts)
        peer.out.extend(memoryview(part) for part in parts)
        self._queued += size
        peer.state = WRITING
        peer.deadline = self.loop.time() + SEND_TIMEOUT
        assert peer.watch is not None
        peer.watch.set(WRITE)
        self._flush(peer)

    def _flush(self, peer: _Peer) -> None:
        out = peer.out
        while out:
            try:
                sent = peer.sock.send(out[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(peer)
                return
            self._queued -= sent
            peer.deadline = self.loop.time() + SEND_TIMEOUT
            if sent == len(out[0]):
                out.popleft()
            else:
                out[0] = out[0][sent:]
        # All sent. Half-close and wait for the client's close: closing with its
        # bytes unread would reset the connection and could destroy our reply.
        shut_down_writing(peer.sock)
        peer.state = LINGERING
        peer.deadline = self.loop.time() + LINGER
        assert peer.watch is not None
        peer.watch.set(READ)

    # ------------------------------------------------------------------ connections

    def _accept(self, is_http: bool, sock: socket.socket, address: tuple) -> None:
        if len(self._peers) >= self.max_connections:
            self._refuse(sock, is_http)
            return
        sock.setblocking(False)
        peer = _Peer(sock, sender_address(address), self.loop.time() + self.config.request_timeout)
        self._peers[sock] = peer
        handler = self._on_http_peer if is_http else self._on_update_peer
        peer.watch = self.loop.watch(sock, partial(handler, peer), READ)
        peer.timer = self.loop.call_at(peer.deadline, partial(self._deadline, peer))

    def _refuse(self, sock: socket.socket, is_http: bool) -> None:
        if not self._refused:  # once per report period: a flood must not flood the log
            log.warning("too many connections (%d); refusing new ones", len(self._peers))
        self._refused += 1
        with contextlib.suppress(OSError):
            if is_http:
                sock.setblocking(False)
                sock.send(b"".join(response(503, b"too many connections\n", "text/plain")))
        sock.close()

    def _recv(self, peer: _Peer) -> bytes | None:
        """What the peer sent: b"" when it closed, None when there is nothing (or it failed)."""
        try:
            return peer.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self._close(peer)
            return None

    def _deadline(self, peer: _Peer) -> None:
        """The peer's timer: re-armed if its deadline moved, else the peer took too long."""
        if peer.sock not in self._peers:
            return
        if self.loop.time() < peer.deadline:
            peer.timer = self.loop.call_at(peer.deadline, partial(self._deadline, peer))
            return
        peer.timer = None
        log.debug("connection from %s timed out while %s", peer.address, peer.state)
        if peer.state == READING and peer.reader.started:
            self._reply(peer, self.app.error(408, "request not received in time"))
            peer.timer = self.loop.call_at(peer.deadline, partial(self._deadline, peer))
        else:
            self._close(peer)

    def _close(self, peer: _Peer) -> None:
        if self._peers.pop(peer.sock, None) is None:
            return
        self._queued -= peer.queued
        if peer.watch is not None:
            peer.watch.close()
        if peer.timer is not None:
            peer.timer.cancel()
        peer.sock.close()
