"""Giving freed memory back to the system.

glibc keeps the memory a process frees for its own later use. After an attack
(thousands of connections, each with buffers, gone at once) that can be a
hundred megabytes that the server holds and never needs again. ``malloc_trim``
returns it; it walks only the free memory, so it costs well under a
millisecond with a million keys in the table, about 10 ms after freeing 100 MB
of small buffers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

try:
    _trim = ctypes.CDLL(ctypes.util.find_library("c") or None).malloc_trim
    _trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):  # not glibc: the allocator does as it does
    _trim = None


def release_free_memory() -> bool:
    """Returns the memory freed since to the system; False where that cannot be done."""
    if _trim is None:
        return False
    _trim(0)
    return True


class GcFreezer:
    """Keeps CPython's full garbage collections short, however big the table grows.

    A full collection visits every tracked object: with a million JSON values
    in the table that is about 440 ms, during which no request is served. The
    values are parsed JSON and never form reference cycles, so visiting them
    is wasted. Every ``every`` new long-lived objects (the caller adds its
    writes to ``pending``), the young generations are collected and everything alive is
    moved out of the collector's reach (``gc.freeze``); freed by reference
    counting as before, never visited again. A full collection then visits
    only what was made since the last freeze: at most ``every`` writes'
    worth, about 20 ms for 50,000.

    The price: a reference cycle that had already reached the oldest
    generation and become garbage just before a freeze is never collected.
    Full collections keep running between freezes, so that is what one
    window between two of them left, not a growing share.
    """

    def __init__(self, every: int = 50_000) -> None:
        self.every = every
        self.pending = 0

    def freeze_now(self) -> None:
        """Collects everything and freezes what survives (at start-up, after recovery)."""
        gc.collect()
        gc.freeze()
        self.pending = 0

    def maybe_freeze(self) -> bool:
        """Freezes when ``every`` objects were noted since the last time; True if it did."""
        if self.pending < self.every:
            return False
        gc.collect(1)
        gc.freeze()
        self.pending = 0
        return True
