"""The catalog's TCP peers and who makes room when there are too many, sans-IO.

A peer is one connection: an HTTP client on port P or an update sender on P+1.
Peers that have not sent a whole request yet, and peers lingering after their
reply, are *idle*: they cost a slot and give nothing. When every slot is taken,
a new connection does not get a 503 (that let 1,100 idle connections lock
everyone out); the oldest idle peer is closed to make room. A client that
connects and sends its request at once is never the oldest idle peer for long,
so an attacker holding thousands of idle connections only keeps cycling its own.
Peers with a request being answered (a page being rendered, a reply being sent)
are never closed to make room: their time is bounded otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections import deque

from catalog.http import RequestReader
from netkit.loop import Timer, Watch

READING, RENDERING, WRITING, LINGERING = "reading", "rendering", "writing", "lingering"
_IDLE_STATES = (READING, LINGERING)


class Peer:
    """One TCP connection and where it is in its one request."""

    __slots__ = (
        "accepted", "address", "data", "deadline", "out", "reader", "sock", "state", "timer",
        "watch",
    )  # fmt: skip

    def __init__(self, sock: socket.socket, address: str, now: float, deadline: float) -> None:
        self.sock = sock
        self.address = address
        self.accepted = now  # loop time
        self.deadline = deadline  # loop time; the timer re-arms itself when it moved
        self.state = READING
        self.reader = RequestReader()
        self.data = bytearray()  # an update being received
        self.out: deque[memoryview] = deque()
        self.watch: Watch | None = None
        self.timer: Timer | None = None

    @property
    def silent(self) -> bool:
        """Nothing received yet (neither a byte of a request nor of an update)."""
        return not self.data and not self.reader.started


class Peers:
    """Every peer by socket, and the idle ones oldest first."""

    def __init__(self) -> None:
        self._all: dict[socket.socket, Peer] = {}
        self._idle: dict[socket.socket, Peer] = {}  # insertion order: longest idle first

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, peer: Peer) -> bool:
        return self._all.get(peer.sock) is peer

    def all(self) -> list[Peer]:
        return list(self._all.values())

    def add(self, peer: Peer) -> None:
        self._all[peer.sock] = peer
        if peer.state in _IDLE_STATES:
            self._idle[peer.sock] = peer

    def remove(self, peer: Peer) -> bool:
        """Forgets ``peer``; False if it was already gone."""
        if self._all.get(peer.sock) is not peer:
            return False
        del self._all[peer.sock]
        self._idle.pop(peer.sock, None)
        return True

    def set_state(self, peer: Peer, state: str) -> None:
        """Moves ``peer`` to ``state``; one becoming idle counts as idle from now."""
        peer.state = state
        self._idle.pop(peer.sock, None)
        if state in _IDLE_STATES:
            self._idle[peer.sock] = peer

    def longest_idle(self) -> Peer | None:
        """The peer to close to make room: idle for longest (None: none is idle)."""
        return next(iter(self._idle.values()), None)


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
