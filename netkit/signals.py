"""Stopping a server on SIGINT or SIGTERM, the same way in every program.

Install ``StopSignals`` first thing, before any socket is bound. Until the
program attaches its event loop, a signal ends the process at once (by raising
``SystemExit(0)`` where it is, so ``finally`` blocks still run): nothing has been
acknowledged yet, and start-up (recovery, binding) is safe to interrupt. With
``defer``, it is only remembered instead, and stops the loop as soon as it is
attached: for a program whose clean-up path must run whenever it has started
(the catalog saves its records). Once attached, a signal stops the loop, and
the program leaves through its normal clean-up path.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    def __init__(self, defer: bool = False) -> None:
        self.received: str | None = None  # the name of the first stop signal
        self._defer = defer
        self._stop: Callable[[], None] | None = None
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def attach(self, stop: Callable[[], None]) -> None:
        """From now on a stop signal calls ``stop()`` (which must be signal-safe,
        like ``EventLoop.stop``)."""
        self._stop = stop
        if self.received is not None:
            stop()

    def _handle(self, signum: int, _frame: object) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
        if self._stop is not None:
            self._stop()
        elif not self._defer:
            raise SystemExit(0)
