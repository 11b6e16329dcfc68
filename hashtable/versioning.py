"""How long a versioned write's tombstone matters, on one server (docs/cluster.md).

A version number is a time in microseconds since the epoch (the writers' hybrid
logical clocks, ``hashtable.cluster.clock``). A server takes versions within
``window`` seconds of its own clock and keeps each tombstone until it is older
than that: by then every write older than the tombstone is refused anyway, so
forgetting it cannot bring a removed key back. The horizon never moves back,
even when the clock does (within one run of the server).
"""

from __future__ import annotations

import time
from typing import Any

from hashtable.table import Table

DEFAULT_VERSION_WINDOW = 600.0
PURGE_INTERVAL = 1.0  # seconds between looks at the oldest tombstones


class VersionWindow:
    """The horizon below which versions are refused and tombstones forgotten."""

    def __init__(self, window: float = DEFAULT_VERSION_WINDOW) -> None:
        if not window > 0:
            raise ValueError("the version window must be positive")
        self.window = window
        self._micros = int(window * 1_000_000)
        self.horizon = 0
        self._purge_at = 0.0  # time.monotonic() of the next purge

    def _advance(self) -> int:
        now = time.time_ns() // 1000
        self.horizon = max(self.horizon, now - self._micros)
        return now

    def refusal(self, version: list[Any], held: tuple[int, str] | None) -> list[str] | None:
        """``[error, message]`` when ``version`` (``[number, writer]``) is outside the
        window, else None. Older than the horizon, its key's tombstone may be gone:
        taking it could bring back a removed key, and the writer sends it again with
        a new version. Unless the key holds a newer version (``held``): the table's
        own refusal says so, and what it holds, whatever the horizon, and the writer
        must not send it again as new (docs/cluster.md)."""
        now = self._advance()
        number = version[0]
        if number < self.horizon and (held is None or held < (number, version[1])):
            return [
                "StaleVersion",
                f"version {number} is older than this server's horizon {self.horizon} "
                f"(its clock minus {self.window:g} s): write it again with a new version",
            ]
        if number > now + self._micros:
            return [
                "VersionAhead",
                f"version {number} is more than {self.window:g} s ahead of this server's "
                f"clock ({now} us since the epoch): the writer's clock is wrong",
            ]
        return None

    def purge(self, table: Table, now: float) -> int:
        """Forgets the tombstones past the horizon, at most every ``PURGE_INTERVAL``
        (``now``: ``time.monotonic()``); returns how many."""
        if now < self._purge_at or not table.tombstones:
            return 0
        self._purge_at = now + PURGE_INTERVAL
        self._advance()
        return table.purge_tombstones(self.horizon)

    def seconds_until_purge(self, table: Table, now: float) -> float | None:
        return max(0.0, self._purge_at - now) if table.tombstones else None
