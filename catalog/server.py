"""The catalog server's event loop: sockets, timeouts and nothing else.

One thread, one ``selectors`` loop, every socket non-blocking. What to do with
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
import resource
import selectors
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

log = logging.getLogger("catalog.server")

MAX_CONNECTIONS = 1024
MAX_QUEUED_BYTES = 256 * 1024 * 1024
REQUEST_TIMEOUT = 10.0
SEND_TIMEOUT = 30.0
LINGER = 2.0  # after a reply, how long to wait for the client to close first
UDP_BATCH = 512
ACCEPT_BATCH = 64
UDP_BUFFER = 8 * 1024 * 1024  # absorbs bursts of datagrams between two loop turns
RECV_SIZE = 64 * 1024
HOUSEKEEPING = 0.25
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

    __slots__ = ("address", "data", "deadline", "out", "reader", "sock", "state")

    def __init__(self, sock: socket.socket, address: str, deadline: float) -> None:
        self.sock = sock
        self.address = address
        self.deadline = deadline
        self.state = READING
        self.reader = RequestReader()
        self.data = bytearray()  # an update being received
        self.out: deque[memoryview] = deque()

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


def _bind(host: str, port: int, kind: int) -> socket.socket:
    sock = None
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=kind)[0]
        sock = socket.socket(family, kind)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
        sock.bind(address)
        if kind == socket.SOCK_STREAM:
            sock.listen(512)
        sock.setblocking(False)
        return sock
    except OSError as exc:
        if sock is not None:
            sock.close()
        protocol = "TCP" if kind == socket.SOCK_STREAM else "UDP"
        message = f"cannot listen on {host}:{port} ({protocol}): {exc.strerror or exc}"
        raise OSError(exc.errno, message) from None


def connection_limit() -> int:
    """MAX_CONNECTIONS, or fewer if the process may not open that many files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_CONNECTIONS + 64
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    return MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else min(MAX_CONNECTIONS, soft - 64)


class CatalogServer:
    """Binds at construction (``OSError`` with a clear message), serves in ``run()``."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.state = StateDir(config.state_dir) if config.state_dir else None
        self._sockets: list[socket.socket] = []
        try:
            self.udp = self._listen(config.port, socket.SOCK_DGRAM)
            self.http = self._listen(config.port, socket.SOCK_STREAM)
            self.updates = self._listen(config.port + 1, socket.SOCK_STREAM)
            if self.state:
                self.state.open()
        except BaseException:
            self._close_sockets()
            raise
        self.store = RecordStore(config.lifetime, config.max_records, clock=clock)
        self.resolver = Resolver()
        self.ingest = Ingest(self.store, self.resolver, clock)
        self.app = CatalogApp(self.store, f"catalog on {socket.gethostname()}:{config.port}")
        self.max_connections = connection_limit()
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_write.setblocking(False)
        self._peers: dict[socket.socket, _Peer] = {}
        self._queued = 0
        self._refused = 0
        self._stopping = False

    def _listen(self, port: int, kind: int) -> socket.socket:
        sock = _bind(self.config.host, port, kind)
        self._sockets.append(sock)
        return sock

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Serves until ``stop()``; then saves the records and releases everything."""
        saver = None
        if self.state:
            restore(self.store, self.state)
            saver = Saver(self.state)
        host, port = self.config.host, self.config.port
        log.info(
            "catalog listening on %s:%d (UDP updates, HTTP queries) and %s:%d (TCP updates); "
            "lifetime %ss; state in %s",
            host, port, host, port + 1, self.config.lifetime, self.state.path if self.state else "memory only",
        )  # fmt: skip
        register = self._selector.register
        register(self.udp, selectors.EVENT_READ, self._read_datagrams)
        self._acceptors = {
            listener: Acceptor(self._selector, listener, partial(self._accept, listener))
            for listener in (self.http, self.updates)
        }
        register(self.resolver, selectors.EVENT_READ, lambda _: self.ingest.names_arrived())
        register(self._wake_read, selectors.EVENT_READ, lambda _: None)
        try:
            self._loop(saver)
        finally:
            self._shutdown(saver)

    def stop(self) -> None:
        """Asks ``run()`` to return; safe from a signal handler."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_write.send(b"x")

    def _loop(self, saver: Saver | None) -> None:
        next_chores = 0.0
        saved_version = self.store.version
        last_save = last_report = time.monotonic()
        while not self._stopping:
            for acceptor in self._acceptors.values():
                acceptor.poll()  # resumes accepting after running out of descriptors
            for key, mask in self._selector.select(HOUSEKEEPING):
                key.data(mask)
            now = time.monotonic()
            if now < next_chores:
                continue
            next_chores = now + HOUSEKEEPING
            self._expire_peers(now)
            self.ingest.stop_waiting()
            self.store.purge()
            if saver and self.store.version != saved_version and now - last_save >= SAVE_INTERVAL:
                saver.submit(self.store.json_body())
                saved_version, last_save = self.store.version, now
            if now - last_report >= REPORT_INTERVAL:
                self._report()
                last_report = now

    def _shutdown(self, saver: Saver | None) -> None:
        for peer in list(self._peers.values()):
            self._close(peer)
        self._selector.close()
        self._close_sockets()
        self.ingest.stop_waiting(force=True)
        if saver and self.state:
            records = len(self.store)
            if saver.close(self.store.json_body()):
                log.info("stopped; saved %d records to %s", records, self.state.file)
            else:
                log.error("stopped, but the records could not be saved to %s", self.state.file)
        if self.state:
            self.state.close()
        self.resolver.close()
        self._wake_read.close()
        self._wake_write.close()

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()

    def _report(self) -> None:
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

    def _read_datagrams(self, _mask: int) -> None:
        for _ in range(UDP_BATCH):
            try:
                data, address = self.udp.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("UDP receive failed: %s", exc)
                return
            self.ingest.receive(data, sender_address(address))

    def _on_update_peer(self, peer: _Peer, _mask: int) -> None:
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

    def _on_http_peer(self, peer: _Peer, mask: int) -> None:
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
        peer.deadline = time.monotonic() + SEND_TIMEOUT
        self._selector.modify(peer.sock, selectors.EVENT_WRITE, partial(self._on_http_peer, peer))
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
            peer.deadline = time.monotonic() + SEND_TIMEOUT
            if sent == len(out[0]):
                out.popleft()
            else:
                out[0] = out[0][sent:]
        # All sent. Half-close and wait for the client's close: closing with its
        # bytes unread would reset the connection and could destroy our reply.
        with contextlib.suppress(OSError):
            peer.sock.shutdown(socket.SHUT_WR)
        peer.state = LINGERING
        peer.deadline = time.monotonic() + LINGER
        self._selector.modify(peer.sock, selectors.EVENT_READ, partial(self._on_http_peer, peer))

    # ------------------------------------------------------------------ connections

    def _accept(self, listener: socket.socket, _mask: int) -> None:
        for sock, address in self._acceptors[listener].accept(ACCEPT_BATCH):
            is_http = listener is self.http
            if len(self._peers) >= self.max_connections:
                self._refuse(sock, is_http)
                continue
            sock.setblocking(False)
            deadline = time.monotonic() + self.config.request_timeout
            peer = _Peer(sock, sender_address(address), deadline)
            self._peers[sock] = peer
            handler = self._on_http_peer if is_http else self._on_update_peer
            self._selector.register(sock, selectors.EVENT_READ, partial(handler, peer))

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

    def _expire_peers(self, now: float) -> None:
        for peer in [p for p in self._peers.values() if p.deadline < now]:
            log.debug("connection from %s timed out while %s", peer.address, peer.state)
            if peer.state == READING and peer.reader.started:
                self._reply(peer, self.app.error(408, "request not received in time"))
            else:
                self._close(peer)

    def _close(self, peer: _Peer) -> None:
        if self._peers.pop(peer.sock, None) is None:
            return
        self._queued -= peer.queued
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(peer.sock)
        peer.sock.close()
