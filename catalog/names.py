"""Host names of update senders, found without ever blocking the event loop.

The catalog sets each record's ``name`` to its sender's host name, as cctools
does, and that name is part of the record's key. Reverse DNS can take seconds
or hang, so it never runs on the event loop:

- loopback senders (127.0.0.0/8, ::1) are ``localhost`` at once, without any
  lookup, which is what the real catalog reports for them too;
- other addresses are looked up by a few daemon threads; the loop asks again
  once ``collect()`` says the answer is in (the selector watches ``fileno()``);
- answers are cached (an hour; a failed or abandoned lookup is cached for five
  minutes as the address itself), at most ``MAX_CACHED`` of them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import queue
import socket
import threading
import time
from collections.abc import Callable

LOOPBACK_NAME = "localhost"
NAME_TTL = 3600.0
FAILED_TTL = 300.0
MAX_CACHED = 10_000
MAX_IN_FLIGHT = 1_000
WORKERS = 4


def reverse_lookup(address: str) -> str | None:
    try:
        return socket.gethostbyaddr(address)[0]
    except (OSError, UnicodeError):
        return None


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class Resolver:
    """Reverse lookups on worker threads, with a cache the loop reads without waiting."""

    def __init__(
        self,
        lookup: Callable[[str], str | None] = reverse_lookup,
        workers: int = WORKERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._workers = workers
        self._clock = clock
        self._cache: dict[str, tuple[str, float]] = {}  # address -> (name, good until)
        self._in_flight: set[str] = set()
        self._todo: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[str, str | None]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._wake_read, self._wake_write = socket.socketpair()
        for sock in (self._wake_read, self._wake_write):
            sock.setblocking(False)

    def fileno(self) -> int:
        """Readable when lookups have finished: the loop then calls ``collect()``."""
        return self._wake_read.fileno()

    def name_of(self, address: str) -> str | None:
        """The host name of ``address`` if known now; None while it is being looked up."""
        cached = self._cache.get(address)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        if is_loopback(address):  # parsing an address is slow: cached like a lookup
            self._remember(address, LOOPBACK_NAME, NAME_TTL)
            return LOOPBACK_NAME
        if address not in self._in_flight:
            if len(self._in_flight) >= MAX_IN_FLIGHT:
                return address  # too many lookups pending: do without a name
            self._start_lookup(address)
        return None

    def give_up(self, address: str) -> None:
        """Stops waiting for ``address``: it is named by itself for a while, and a
        late answer is ignored, so that its records keep one key."""
        self._in_flight.discard(address)
        self._remember(address, address, FAILED_TTL)

    def collect(self) -> list[str]:
        """Takes in finished lookups; returns the addresses that now have a name."""
        with contextlib.suppress(OSError):
            while self._wake_read.recv(4096):
                pass
        resolved = []
        while True:
            try:
                address, name = self._done.get_nowait()
            except queue.Empty:
                return resolved
            if address in self._in_flight:
                self._in_flight.discard(address)
                ttl = NAME_TTL if name else FAILED_TTL
                self._remember(address, name or address, ttl)
                resolved.append(address)

    def close(self) -> None:
        """Releases the wake-up sockets. Worker threads are daemons: a lookup that
        hangs cannot hold up the exit."""
        self._wake_read.close()
        self._wake_write.close()

    def _remember(self, address: str, name: str, ttl: float) -> None:
        self._cache.pop(address, None)
        if len(self._cache) >= MAX_CACHED:
            del self._cache[next(iter(self._cache))]  # the oldest answer
        self._cache[address] = (name, self._clock() + ttl)

    def _start_lookup(self, address: str) -> None:
        self._in_flight.add(address)
        self._todo.put(address)
        if len(self._threads) < self._workers:
            thread = threading.Thread(target=self._work, name="catalog-resolver", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while True:
            address = self._todo.get()
            self._done.put((address, self._lookup(address)))
            with contextlib.suppress(OSError):  # full (already awake) or closed
                self._wake_write.send(b"x")
