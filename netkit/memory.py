"""The process's memory: giving freed memory back to the system, and measuring it.

glibc keeps the memory a process frees for its own later use. After an attack
(thousands of connections, each with buffers, gone at once) that can be a
hundred megabytes that the server holds and never needs again. ``malloc_trim``
returns it; it walks only the free memory, so it costs well under a
millisecond with a million keys in the table, about 10 ms after freeing 100 MB
of small buffers.

``resident_bytes`` and ``memory_available`` are what a memory bound compares
(``hashtable.memory_limit``: the hash table server's ``--max-memory``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
from pathlib import Path

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


# ---- how much memory the process holds, and may hold

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_statm: tuple[int, int] | None = None  # (pid, descriptor): a forked child opens its own


def resident_bytes() -> int | None:
    """The process's resident size now (``/proc/self/statm``: one ``pread`` of a file
    kept open, about a microsecond); None where there is no such file."""
    global _statm
    try:
        pid = os.getpid()
        if _statm is None or _statm[0] != pid:
            _statm = (pid, os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC))
        return int(os.pread(_statm[1], 128, 0).split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def memory_available(sys_root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory this process may use at most: the machine's, or the smallest
    limit of its control group and those above it (cgroup v2 ``memory.max``, v1
    ``memory.limit_in_bytes``), when smaller; None when none can be read."""
    limits = []
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo", "rb") as info:
        for line in info:
            if line.startswith(b"MemTotal:"):
                limits.append(int(line.split()[1]) * 1024)
                break
    try:
        groups = Path("/proc/self/cgroup").read_text()
    except OSError:
        groups = ""
    group_limit = smallest_limit(cgroup_limit_files(groups, sys_root))
    if group_limit is not None:
        limits.append(group_limit)
    return min(limits, default=None)


def smallest_limit(files: list[Path]) -> int | None:
    """The smallest number among the limit files that exist (``max``: none)."""
    limits = []
    for path in files:
        with contextlib.suppress(OSError, ValueError):
            text = path.read_bytes().strip()
            if text != b"max":
                limits.append(int(text))
    return min(limits, default=None)


def cgroup_limit_files(groups: str, sys_root: Path) -> list[Path]:
    """The memory limit files of a control group and of each one above it, from
    the text of ``/proc/self/cgroup`` (``0::/path`` in v2, found in ``sys_root``
    or, on a hybrid system, its ``unified``; ``N:memory:/path`` in v1)."""
    files = []
    for line in groups.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, group = parts
        if controllers == "":
            places = [(sys_root, "memory.max"), (sys_root / "unified", "memory.max")]
        elif "memory" in controllers.split(","):
            places = [(sys_root / "memory", "memory.limit_in_bytes")]
        else:
            continue
        for root, name in places:
            here = root / group.strip("/")
            while True:  # the group's own, then each one above it, up to the root
                files.append(here / name)
                if here == root:
                    break
                here = here.parent
    return files
