"""The server's memory bound (``--max-memory``), as Redis's ``maxmemory``: while the
process holds more than the limit, inserts are refused; everything else goes on.

The measure is the process's resident size, not an estimate of the table's: a
value costs anything from twice to thirty times its JSON in memory (the 8 MiB
line ``[{},{},...]`` becomes 250 MB of Python objects), and the resident size is
what the kernel's out-of-memory killer goes by. A server killed for memory
would replay the same table at its restart and be killed again; refusing
inserts keeps it up, its table whole, and readable. Python and glibc keep
memory that was freed for later use, so before refusing, the limit gives it
back (``malloc_trim``, at most once a second) and measures again: once removes
have freed room, inserts are taken again.

A refusal is an answer, like a refused version: the database logs it under the
request's number, so that a retried insert gets the same answer and replay
reads it rather than deciding it again (hashtable.database).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from netkit.memory import release_free_memory, resident_bytes

log = logging.getLogger("hashtable.server")

OUT_OF_MEMORY = "OutOfMemory"
# How long one measure holds. Inserts that come faster share it (measuring each
# one cost 5% of a small insert); what fits in a millisecond is small, since
# parsing a big value takes longer than that (8 MiB of JSON: 150 ms).
MEASURE_INTERVAL = 0.001
RELEASE_INTERVAL = 1.0  # seconds between two malloc_trim calls while over the limit
REPORT_INTERVAL = 10.0  # seconds between two log lines while inserts are refused


def describe_bytes(count: float) -> str:
    """``count`` bytes in the largest unit that keeps it at 1 or more: ``1.5 GiB``."""
    if count < 1024:
        return "1 byte" if count == 1 else f"{count:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        count /= 1024
        if count < 1024:
            return f"{count:.1f} {unit}"
    return f"{count / 1024:.1f} TiB"


class MemoryLimit:
    """Decides, for each insert, whether the process has room for it.

    ``measure``: the resident size now (None: it cannot be read, never refuse);
    ``release``: gives freed memory back to the system; ``clock``: monotonic
    seconds. The defaults are the real ones; tests give others."""

    def __init__(
        self,
        limit: int,
        *,
        measure: Callable[[], int | None] = resident_bytes,
        release: Callable[[], object] = release_free_memory,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 0:
            raise ValueError("the memory limit cannot be negative")
        self.limit = limit
        self._measure = measure
        self._release = release
        self._clock = clock
        self._release_at = 0.0
        self._measured_at = -MEASURE_INTERVAL
        self._used: int | None = None
        self._report_at = 0.0
        self.refused = 0  # inserts refused since the last log line about them
        self.full = False

    def used(self) -> int | None:
        return self._measure()

    def refusal(self) -> list[str] | None:
        """``[error, message]`` when an insert must be refused now, else None."""
        now = self._clock()
        if now - self._measured_at >= MEASURE_INTERVAL:
            self._measured_at, self._used = now, self._measure()
        used = self._used
        if used is None or used <= self.limit:
            return self._room()
        if now >= self._release_at:
            self._release_at = now + RELEASE_INTERVAL
            self._release()
            self._used = used = self._measure()
            if used is None or used <= self.limit:
                return self._room()
        self.refused += 1
        if not self.full or now >= self._report_at:
            if not self.full:
                log.warning(
                    "memory: %s resident, more than --max-memory %s: refusing inserts "
                    "until removes free room",
                    describe_bytes(used),
                    describe_bytes(self.limit),
                )
            else:
                log.warning(
                    "memory: %s resident, still more than --max-memory %s: "
                    "%d inserts refused since the last report",
                    describe_bytes(used),
                    describe_bytes(self.limit),
                    self.refused,
                )
            self._report_at = now + REPORT_INTERVAL
            self.refused = 0
        self.full = True
        return [
            OUT_OF_MEMORY,
            f"the server holds {describe_bytes(used)} in memory, more than its --max-memory "
            f"of {describe_bytes(self.limit)}: inserts are refused until removes free room "
            "(lookups, removes and scans go on)",
        ]

    def _room(self) -> None:
        if self.full:
            self.full = False
            log.warning("memory: back under --max-memory %s: taking inserts again",
                        describe_bytes(self.limit))  # fmt: skip
        return None
