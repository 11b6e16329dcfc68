"""The catalog's TCP peers on the event loop: HTTP on port P, updates on P+1.

Only moving bytes and enforcing the bounds that protect everyone from one peer;
what the bytes mean is decided elsewhere (the server's ``receive_update``, which
hands updates to ``catalog.ingest``, and ``app`` for queries):

- a first byte within ``IDLE_TIMEOUT``, a whole request head (or update) within
  the request timeout, a reply that makes progress every ``SEND_TIMEOUT``;
  replies are shared bytes, never copied per peer;
- at most ``max_connections`` peers: a new one takes the place of the peer idle
  for longest (``catalog.peers``); ``MAX_QUEUED_BYTES`` of replies held for
  peers in all, beyond which replies are 503. A body several peers are sent (the
  ready-made ``/query.json``, a scan shared by the same request line) is one
  object in memory and counts once, however many hold it: counted per peer, 14
  clients that asked for an 18 MB ``/query.json`` and never read it made every
  query 503 until the send time-out closed them;
- replies that need a scan of the records (filtered queries, filtered or
  re-sorted pages: ``catalog.scans``) are made a slice at a time after each
  turn, at most ``SCAN_SLICE`` seconds a turn for all of them together (the
  one that has run least first), so that none holds the loop for long; at most
  ``MAX_SCANS`` at once, beyond which 503; clients asking the very same request
  line meanwhile share the scan under way.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable
from functools import partial

from catalog.app import CatalogApp, Pending
from catalog.http import HttpError, response
from catalog.peers import LINGERING, READING, RENDERING, WRITING, Peer, Peers, sender_address
from catalog.updates import MAX_UPDATE_BYTES
from netkit.accepting import Acceptor
from netkit.listeners import shut_down_writing
from netkit.logs import EventSummary
from netkit.loop import READ, WRITE, EventLoop

log = logging.getLogger("catalog.server")

MAX_CONNECTIONS = 4096
MAX_QUEUED_BYTES = 256 * 1024 * 1024
MAX_RECEIVING_BYTES = 256 * 1024 * 1024  # of updates being received over TCP, in all
IDLE_TIMEOUT = 2.0  # a new connection that sends nothing for this long is closed
REQUEST_TIMEOUT = 10.0
SEND_TIMEOUT = 30.0
LINGER = 2.0  # after a reply, how long to wait for the client to close first
RECV_SIZE = 64 * 1024
SUMMARY_INTERVAL = 10.0  # repeated events (connections closed to make room) logged as counts
SCAN_SLICE = 0.003  # seconds of scans (filtered queries and pages) per loop turn, in all
MAX_SCANS = 16  # replies being scanned for at once; beyond, 503


class _Running:
    """A reply being scanned for, the peers waiting for it (all asked the very same
    request line: one scan answers them all), and how long it has run so far."""

    __slots__ = ("peers", "pending", "request", "spent")

    def __init__(self, request: tuple[str, str], peer: Peer, pending: Pending) -> None:
        self.request = request
        self.peers = [peer]
        self.pending = pending
        self.spent = 0.0


def _spent(running: _Running) -> float:
    return running.spent


class Connections:
    """Accepts on the two TCP listeners and serves each peer its one request."""

    def __init__(
        self,
        loop: EventLoop,
        app: CatalogApp,
        receive_update: Callable[[bytes, str], None],
        request_timeout: float,
        max_connections: int,
    ) -> None:
        self.loop = loop
        self.app = app
        self.receive_update = receive_update  # (the update's bytes, the sender's address)
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.refused = 0  # since the server's last report, which resets it
        self._peers = Peers()
        self._queued = 0  # bytes of the reply objects held in peers' queues, each once
        # id(object) -> [the object, how many queue entries hold it]
        self._held: dict[int, list] = {}
        self._receiving = 0  # bytes of updates being received over TCP, in all
        self._scans: list[_Running] = []
        self._events = EventSummary(log, SUMMARY_INTERVAL)
        self._acceptors: list[Acceptor] = []

    def start(self, http: socket.socket, updates: socket.socket) -> None:
        loop = self.loop
        self._acceptors = [
            Acceptor(loop, http, partial(self._accept, True)),
            Acceptor(loop, updates, partial(self._accept, False)),
        ]
        loop.add_turn_hook(self._run_scans)
        loop.call_later(SUMMARY_INTERVAL, self._summarize)

    def close(self) -> None:
        """Closes every peer and stops accepting (the listeners are the caller's)."""
        for peer in self._peers.all():
            self._close(peer)
        for acceptor in self._acceptors:
            acceptor.close()

    def _summarize(self) -> None:
        self.loop.call_later(SUMMARY_INTERVAL, self._summarize)
        self._events.flush(self.loop.time())

    # ------------------------------------------------------------------ updates

    def _on_update_peer(self, peer: Peer, _events: int) -> None:
        data = self._recv(peer)
        if data is None:
            return
        if data:
            if self._receiving + len(data) > MAX_RECEIVING_BYTES:
                self._events.note(
                    "updates dropped", f"from {peer.address}: updates being received fill "
                    f"{MAX_RECEIVING_BYTES >> 20} MiB", self.loop.time(),
                )  # fmt: skip
                self._close(peer)
                return
            peer.data += data
            self._receiving += len(data)
            if len(peer.data) <= MAX_UPDATE_BYTES:
                return
        # The sender closed (or sent too much, which decoding refuses): one update.
        self.receive_update(bytes(peer.data), peer.address)
        self._close(peer)

    # ------------------------------------------------------------------ HTTP

    def _on_http_peer(self, peer: Peer, _events: int) -> None:
        if peer.state == WRITING:
            self._flush(peer)
            return
        data = self._recv(peer)
        if data is None:
            return
        if not data:
            self._close(peer)  # gone before asking, while we render, or done after our reply
            return
        if peer.state != READING:
            return  # more than one request: only the first is answered
        try:
            request = peer.reader.feed(data)
        except HttpError as exc:
            self._reply(peer, self.app.error(exc.status, exc.message))
            return
        if request is None:
            return
        log.debug("%s %s from %s", request.method, request.target, peer.address)
        try:
            answer = self.app.respond(request)
        except Exception:  # a bug must cost one reply, never the catalog
            log.exception("failed to answer %s %s", request.method, request.target)
            answer = self.app.error(500, "internal error", request.path)
        if not isinstance(answer, Pending):
            self._reply(peer, answer)
            return
        line = (request.method, request.target)
        same = next((running for running in self._scans if running.request == line), None)
        if same is None and len(self._scans) >= MAX_SCANS:
            self._reply(peer, self.app.error(503, "the catalog is busy; try again"))
            return
        self._peers.set_state(peer, RENDERING)
        peer.deadline = self.loop.time() + SEND_TIMEOUT
        if same is not None:
            same.peers.append(peer)  # the reply under way will do for this one too
        else:
            self._scans.append(_Running(line, peer, answer))

    def _run_scans(self) -> bool:
        """The turn hook that runs the scans replies wait for, for ``SCAN_SLICE`` seconds
        in all, the one that has run least so far first (least attained service): a
        short scan (a client's filtered query) is done in its first turns, never
        stuck behind long ones (pages a crowd reloads), which share the rest. True
        while some are left (the loop then does not sleep)."""
        scans = self._scans
        deadline = time.perf_counter() + SCAN_SLICE
        while scans and (started := time.perf_counter()) < deadline:
            running = min(scans, key=_spent)
            pending = running.pending
            running.peers = [p for p in running.peers if p in self._peers and p.state == RENDERING]
            if not running.peers:
                scans.remove(running)  # the clients left meanwhile
                continue
            try:
                done = pending.scan.step(deadline)
                answer = pending.reply() if done else []
            except Exception:  # a bug must cost one reply, never the catalog
                log.exception("failed to answer %s", pending.target)
                done, answer = True, self.app.error(500, "internal error")
            running.spent += time.perf_counter() - started
            if done:
                scans.remove(running)
                for peer in running.peers:
                    self._reply(peer, answer)
        return bool(scans)

    def _reply(self, peer: Peer, parts: list[bytes]) -> None:
        if self._queued + self._unheld(parts) > MAX_QUEUED_BYTES:
            parts = self.app.error(503, "the catalog is busy; try again")
        for part in parts:
            self._hold(part)
        peer.out.extend(memoryview(part) for part in parts)
        self._peers.set_state(peer, WRITING)
        peer.deadline = self.loop.time() + SEND_TIMEOUT
        assert peer.watch is not None
        peer.watch.set(WRITE)
        self._flush(peer)

    def _flush(self, peer: Peer) -> None:
        out = peer.out
        while out:
            try:
                sent = peer.sock.send(out[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(peer)
                return
            peer.deadline = self.loop.time() + SEND_TIMEOUT
            if sent == len(out[0]):
                self._release(out.popleft().obj)
            else:
                out[0] = out[0][sent:]
        # All sent. Half-close and wait for the client's close: closing with its
        # bytes unread would reset the connection and could destroy our reply.
        shut_down_writing(peer.sock)
        self._peers.set_state(peer, LINGERING)
        peer.deadline = self.loop.time() + LINGER
        assert peer.watch is not None
        peer.watch.set(READ)

    # ------------------------------------------------------------------ reply memory

    def _unheld(self, parts: list[bytes]) -> int:
        """The bytes ``parts`` would add to what the queues hold: none for an object
        some queue holds already."""
        return sum(len(part) for part in parts if id(part) not in self._held)

    def _hold(self, part: bytes) -> None:
        held = self._held.get(id(part))
        if held is None:
            # The object itself is kept here, so that its id cannot be reused meanwhile.
            self._held[id(part)] = [part, 1]
            self._queued += len(part)
        else:
            held[1] += 1

    def _release(self, part: object) -> None:
        held = self._held[id(part)]
        held[1] -= 1
        if not held[1]:
            del self._held[id(part)]
            self._queued -= len(held[0])

    # ------------------------------------------------------------------ connections

    def _accept(self, is_http: bool, sock: socket.socket, address: tuple) -> None:
        if len(self._peers) >= self.max_connections and not self._make_room():
            self._refuse(sock, is_http)
            return
        sock.setblocking(False)
        now = self.loop.time()
        peer = Peer(
            sock, sender_address(address), now, now + min(IDLE_TIMEOUT, self.request_timeout)
        )
        self._peers.add(peer)
        handler = self._on_http_peer if is_http else self._on_update_peer
        peer.watch = self.loop.watch(sock, partial(handler, peer), READ)
        peer.timer = self.loop.call_at(peer.deadline, partial(self._deadline, peer))

    def _make_room(self) -> bool:
        """Closes the peer idle for longest, for a new one; False if none is idle."""
        idle = self._peers.longest_idle()
        if idle is None:
            return False
        self._events.note(
            "idle connections closed to make room",
            f"{idle.address}, {idle.state} for {self.loop.time() - idle.accepted:.1f} s",
            self.loop.time(),
        )
        self._close(idle)
        return True

    def _refuse(self, sock: socket.socket, is_http: bool) -> None:
        if not self.refused:  # once per report period: a flood must not flood the log
            log.warning(
                "too many connections (%d) and none idle; refusing new ones", len(self._peers)
            )
        self.refused += 1
        with contextlib.suppress(OSError):
            if is_http:
                sock.setblocking(False)
                sock.send(b"".join(response(503, b"too many connections\n", "text/plain")))
        sock.close()

    def _recv(self, peer: Peer) -> bytes | None:
        """What the peer sent: b"" when it closed, None when there is nothing (or it failed)."""
        try:
            data = peer.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self._close(peer)
            return None
        if data and peer.state == READING and peer.silent:
            # It spoke: from now on it has the whole request time-out, from its start.
            peer.deadline = peer.accepted + self.request_timeout
        return data

    def _deadline(self, peer: Peer) -> None:
        """The peer's timer: re-armed if its deadline moved, else the peer took too long."""
        if peer not in self._peers:
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

    def _close(self, peer: Peer) -> None:
        if not self._peers.remove(peer):
            return
        for view in peer.out:
            self._release(view.obj)
        peer.out.clear()
        self._receiving -= len(peer.data)
        if peer.watch is not None:
            peer.watch.close()
        if peer.timer is not None:
            peer.timer.cancel()
        peer.sock.close()
