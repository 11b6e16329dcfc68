"""Accepting connections on the event loop without spinning when out of descriptors.

When the process has no file descriptor left, ``accept()`` fails with EMFILE but
the waiting connection keeps the listener readable, so a loop that simply tries
again on the next turn spins at 100% CPU until a descriptor is freed. The
``Acceptor`` instead stops watching the listener for a short pause (logged at
most every ``LOG_INTERVAL`` seconds) and resumes by itself, on a loop timer.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

from netkit.loop import READ, EventLoop, Timer

log = logging.getLogger("netkit.accepting")

PAUSE = 0.5
LOG_INTERVAL = 10.0
# Connections taken per turn: a flood of them must not starve the peers already in.
BATCH = 64
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

OnConnection = Callable[[socket.socket, Any], None]


class Acceptor:
    """Watches ``listener`` on ``loop`` and hands each new connection to
    ``on_connection(sock, address)``, at most ``batch`` per turn."""

    def __init__(
        self,
        loop: EventLoop,
        listener: socket.socket,
        on_connection: OnConnection,
        *,
        batch: int = BATCH,
        pause: float = PAUSE,
    ) -> None:
        self.loop = loop
        self.listener = listener
        self.on_connection = on_connection
        self.batch = batch
        self.pause = pause
        self.resume_timer: Timer | None = None
        self._pauses = 0  # since the last log line
        self._logged_at = -LOG_INTERVAL
        listener.setblocking(False)
        self._watch = loop.watch(listener, self._ready, READ)

    @property
    def paused(self) -> bool:
        return self.resume_timer is not None

    def close(self) -> None:
        """Stops accepting (the listener itself is the caller's to close)."""
        self._watch.close()
        if self.resume_timer is not None:
            self.resume_timer.cancel()
            self.resume_timer = None

    def _ready(self, _events: int) -> None:
        for _ in range(self.batch):
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause(exc)
                    return
                continue  # e.g. ECONNABORTED: that client gave up before we got to it
            self.on_connection(sock, address)

    def _pause(self, exc: OSError) -> None:
        self._watch.set(0)
        self.resume_timer = self.loop.call_later(self.pause, self._resume)
        now = self.loop.time()
        self._pauses += 1
        if now - self._logged_at >= LOG_INTERVAL:
            log.warning(
                "cannot accept connections (%s); pausing %g s (%d pause(s) since the last message)",
                exc.strerror,
                self.pause,
                self._pauses,
            )
            self._logged_at, self._pauses = now, 0

    def _resume(self) -> None:
        self.resume_timer = None
        self._watch.set(READ)
