"""The server's memory bound (``--max-memory``), as Redis's ``maxmemory``: while the
process holds more than the limit, inserts are refused; everything else goes on.

The measure is the process's resident size, not an estimate of the table's: a
value costs anything from twice to thirty times its JSON in memory (the 8 MiB
line ``[{},{},...]`` becomes 250 MB of Python objects), and the resident size is
what the kernel's out-of-memory killer goes by. A server killed for memory
would replay the same table at its restart and be killed again; refusing
inserts keeps it up, its table whole, and readable. Python and glibc keep
memory that was freed for later use, so before refusing, the limit gives back
what it can (``malloc_trim``, at most once a second) and measures again; and
while over the limit it counts what removes free that the resident size does
not show (``MemoryLimit``): once removes have freed room, inserts are taken
again.

A refusal is an answer, like a refused version: the database logs it under the
request's number, so that a retried insert gets the same answer and replay
reads it rather than deciding it again (hashtable.database).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import orjson

from hashtable.request import Outcome, Status
from netkit.memory import release_free_memory, resident_bytes

log = logging.getLogger("hashtable.server")

OUT_OF_MEMORY = "OutOfMemory"
# How long one measure holds. Inserts that come faster share it (measuring each
# one cost 5% of a small insert); what fits in a millisecond is small, since
# parsing a big value takes longer than that (8 MiB of JSON: 150 ms).
MEASURE_INTERVAL = 0.001
RELEASE_INTERVAL = 1.0  # seconds between two malloc_trim calls while over the limit
REPORT_INTERVAL = 10.0  # seconds between two log lines while inserts are refused
RECORD_OVERHEAD = 64  # a key's bytes besides its key and value, in the table and its record
# Resident bytes per byte of JSON, as counted while over the limit: 5 to 6 for
# values of small dicts and lists, 1.3 to 1.5 for strings and numbers (measured
# with 200,000 keys of each). Removes and inserts are counted alike, so what one
# frees the other fills, whatever the figure; it sets how much must be removed
# before inserts are taken again.
BYTES_PER_JSON_BYTE = 4


def describe_bytes(count: float) -> str:
    """``count`` bytes in the largest unit that keeps it at 1 or more: ``1.5 GiB``."""
    if count < 1024:
        return "1 byte" if count == 1 else f"{count:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        count /= 1024
        if count < 1024:
            return f"{count:.1f} {unit}"
    return f"{count / 1024:.1f} TiB"


def removed_bytes(key: str, outcome: Outcome, versioned: bool) -> int:
    """The JSON a remove took out of the table, as ``MemoryLimit.freed`` counts it:
    its key and the value it removed (none when it found nothing)."""
    if outcome.status is not Status.OK:
        return 0
    value = outcome.result
    if versioned:  # {"applied": ..., "removed": VALUE} when it removed one
        if type(value) is not dict or "removed" not in value:
            return 0
        value = value["removed"]
    return len(key) + len(orjson.dumps(value)) + RECORD_OVERHEAD


class MemoryLimit:
    """Decides, for each insert, whether the process has room for it.

    While the resident size is over the limit, it is not all the table's:
    Python keeps the memory of small objects freed here and there (a value of a
    few dicts and strings) for its own later use, and cannot give it back, so
    the resident size hardly falls when half the table is removed at random.
    So from the moment the limit is passed, the removes and inserts are counted
    (``freed``; an insert's cost), each as its JSON, and the table is taken to
    hold the resident size of that moment less what was removed since and plus
    what was inserted, or the resident size if that is less. Inserts then fill
    the room the removes made before the resident size grows. The count stops
    once the resident size is back under the limit.

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
        self._resident: int | None = None
        self._base: int | None = None  # the resident size when the limit was passed
        self._net_freed = 0  # bytes removed less bytes inserted since then
        self._report_at = 0.0
        self.refused = 0  # inserts refused since the last log line about them
        self.full = False

    def warn_if_over(self) -> None:
        """At start: a limit below what the recovered table takes is said at once."""
        used = self._measure()
        if used is not None and used > self.limit:
            log.warning(
                "--max-memory %s is less than the server holds once the table is loaded "
                "(%s): every insert will be refused until removes free room",
                describe_bytes(self.limit),
                describe_bytes(used),
            )

    @property
    def counting(self) -> bool:
        """Whether removes are counted (``freed``): only while over the limit."""
        return self._base is not None

    def freed(self, cost: int) -> None:
        """A remove took ``cost`` bytes of JSON out of the table."""
        self._net_freed += cost * BYTES_PER_JSON_BYTE

    def refusal(self, cost: int) -> list[str] | None:
        """``[error, message]`` when an insert of ``cost`` bytes of JSON must be
        refused now, else None (and it is counted as taken)."""
        now = self._clock()
        if now - self._measured_at >= MEASURE_INTERVAL:
            self._measured_at, self._resident = now, self._measure()
        used = self._held()
        if used is not None and used > self.limit and now >= self._release_at:
            self._release_at = now + RELEASE_INTERVAL
            self._release()
            self._resident = self._measure()
            used = self._held()
        if used is None or used <= self.limit:
            if self._base is not None:
                self._net_freed -= cost * BYTES_PER_JSON_BYTE
            return self._room()
        self._refused(used, now)
        return [
            OUT_OF_MEMORY,
            f"the server holds {describe_bytes(used)} in memory, more than its --max-memory "
            f"of {describe_bytes(self.limit)}: inserts are refused until removes free room "
            "(lookups, removes and scans go on)",
        ]

    def _held(self) -> int | None:
        """What the table is taken to hold now (see the class), starting or
        ending the count as the resident size passes the limit."""
        resident = self._resident
        if resident is None or resident <= self.limit:
            self._base, self._net_freed = None, 0
            return resident
        if self._base is None:
            self._base = resident
        return min(resident, self._base - self._net_freed)

    def _refused(self, used: int, now: float) -> None:
        self.refused += 1
        if self.full and now < self._report_at:
            return
        if not self.full:
            log.warning(
                "memory: %s held, more than --max-memory %s: refusing inserts "
                "until removes free room",
                describe_bytes(used),
                describe_bytes(self.limit),
            )
        else:
            log.warning(
                "memory: %s held, still more than --max-memory %s: "
                "%d inserts refused since the last report",
                describe_bytes(used),
                describe_bytes(self.limit),
                self.refused,
            )
        self._report_at = now + REPORT_INTERVAL
        self.refused = 0
        self.full = True

    def _room(self) -> None:
        if self.full:
            self.full = False
            log.warning("memory: back under --max-memory %s: taking inserts again",
                        describe_bytes(self.limit))  # fmt: skip
        return None
