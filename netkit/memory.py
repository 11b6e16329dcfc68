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


def freeze_survivors() -> None:
    """Collects everything, then moves what survives out of the collector's reach.

    A full collection visits every tracked object: with a million JSON values
    in the table that is about 440 ms, during which no request is served
    (bench/gc_stall.py). The values are parsed JSON and never form reference
    cycles, so visiting them is wasted; frozen (``gc.freeze``), they are still
    freed by reference counting, never visited again. Called after recovery,
    before any connection exists.
    """
    gc.collect()
    gc.freeze()


def freeze_young_survivors() -> None:
    """What ``freeze_survivors`` does for a table that grows at run time, without
    its full collection: collects the young generations (a few milliseconds),
    then freezes everything.

    A reference cycle that was already garbage in the oldest generation is frozen
    too and never freed, so a server that calls this must not leave cycles
    behind: a closed ``Watch`` forgets its handler for that reason.
    """
    gc.collect(1)
    gc.freeze()
