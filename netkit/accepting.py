"""Accepting connections in a ``selectors`` loop without spinning when out of descriptors.

When the process has no file descriptor left, ``accept()`` fails with EMFILE but
the waiting connection keeps the listener readable, so a loop that simply tries
again on the next turn spins at 100% CPU until a descriptor is freed. The
``Acceptor`` instead stops watching the listener for a short pause, logging it
once per pause, and resumes when the loop calls ``poll()``.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("netkit.accepting")

PAUSE = 0.5
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Acceptor:
    """Registers ``listener`` with ``data`` on ``selector`` and accepts from it."""

    def __init__(
        self,
        selector: selectors.BaseSelector,
        listener: socket.socket,
        data: Any,
        pause: float = PAUSE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.selector = selector
        self.listener = listener
        self.data = data
        self.pause = pause
        self.clock = clock
        self.paused_until: float | None = None
        listener.setblocking(False)
        selector.register(listener, selectors.EVENT_READ, data)

    def accept(self) -> list[tuple[socket.socket, Any]]:
        """Every connection waiting now, as ``(socket, address)``."""
        accepted = []
        while True:
            try:
                accepted.append(self.listener.accept())
            except (BlockingIOError, InterruptedError):
                return accepted
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause(exc)
                    return accepted
                # e.g. ECONNABORTED: that client gave up before we got to it.

    def poll(self) -> None:
        """Resumes accepting once the pause is over; call it every turn."""
        if self.paused_until is not None and self.clock() >= self.paused_until:
            self.paused_until = None
            self.selector.register(self.listener, selectors.EVENT_READ, self.data)

    def seconds_until_resume(self) -> float | None:
        """A bound for the loop's select() timeout while paused; None otherwise."""
        if self.paused_until is None:
            return None
        return max(0.0, self.paused_until - self.clock())

    def _pause(self, exc: OSError) -> None:
        self.selector.unregister(self.listener)
        self.paused_until = self.clock() + self.pause
        log.warning(
            "cannot accept connections (%s); not accepting for %g s", exc.strerror, self.pause
        )
