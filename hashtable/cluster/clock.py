"""The versions a cluster client gives its writes: a hybrid logical clock.

A version is ``[number, writer id]``; the number is this clock's reading, in
microseconds since the Unix epoch. Each reading is greater than the one before
(even if the wall clock steps back, or two writes fall in one microsecond), and
greater than any version the client has seen a server hold (``observe``): so a
client's writes are ordered as it made them, and after everything it has seen.
Between clients, writes are ordered by their clocks, which on one machine are
one clock (docs/cluster.md says what skew between machines does). Servers take
only numbers near their own clock (``hashtable.versioning``), which a plain
counter would not be.
"""

from __future__ import annotations

import time


class HybridClock:
    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        """A new number, greater than every number read or observed before."""
        now = time.time_ns() // 1000
        self.last = now if now > self.last else self.last + 1
        return self.last

    def observe(self, number: int) -> None:
        """A version some server holds: later readings come after it."""
        if number > self.last:
            self.last = number
