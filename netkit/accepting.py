"""Accepting connections in a ``selectors`` loop without spinning when out of descriptors.

When the process has no file descriptor left, ``accept()`` fails with EMFILE but
the waiting connection keeps the listener readable, so a loop that simply tries
again on the next turn spins at 100% CPU until a descriptor is freed. The
``Acceptor`` instead stops watching the listener for a short pause (logged at
most every ``LOG_INTERVAL`` seconds) and resumes when the loop calls ``poll()``.
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
LOG_INTERVAL = 10.0
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
        self._pauses = 0  # since the last log line
        self._logged_at = -LOG_INTERVAL
        listener.setblocking(False)
        selector.register(listener, selectors.EVENT_READ, data)

    def accept(self, limit: int | None = None) -> list[tuple[socket.socket, Any]]:
        """The connections waiting now (at most ``limit``), as ``(socket, address)``."""
        accepted: list[tuple[socket.socket, Any]] = []
        while limit is None or len(accepted) < limit:
            try:
                accepted.append(self.listener.accept())
            except (BlockingIOError, InterruptedError):
                return accepted
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause(exc)
                    return accepted
                # e.g. ECONNABORTED: that client gave up before we got to it.
        return accepted

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
        now = self.clock()
        self.paused_until = now + self.pause
        self._pauses += 1
        if now - self._logged_at >= LOG_INTERVAL:
            log.warning(
                "cannot accept connections (%s); pausing %g s (%d pause(s) since the last message)",
                exc.strerror,
                self.pause,
                self._pauses,
            )
            self._logged_at, self._pauses = now, 0
