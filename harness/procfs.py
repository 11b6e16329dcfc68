"""Reading /proc: children, liveness, CPU time and memory of the processes the tests and the battery start."""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """Direct children (a server's compaction child, say); empty once it is gone."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def alive(pid: int) -> bool:
    """Running or sleeping, not a zombie."""
    try:
        state = _stat_fields(pid)[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def group_alive(group: int) -> bool:
    """Whether a process of the process group ``group`` is left that is not a zombie
    (a zombie holds no file or socket any more)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == group:
            return True
    return False


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> tuple[int, int]:
    """``(resident now, peak resident)`` in KiB, from /proc/PID/status (VmRSS, VmHWM)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def reset_peak_memory(pid: int) -> None:
    """Starts VmHWM over from the current resident size (Linux 4.0 and later)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
