"""Background compaction: a forked child writes a checkpoint of the table (Redis's BGSAVE).

fork() gives the child a copy-on-write snapshot of the whole process for the
price of copying page tables, so the parent keeps serving while the child
serializes, however big the table. The parent only pays the fork itself.

The child must not outlive its parent: a new server on the same directory
could otherwise see an old checkpoint renamed over a newer one. So it asks the
kernel to kill it when the parent dies (PR_SET_PDEATHSIG), and it keeps the
directory's lock descriptor open, which holds the lock until it is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: the directory lock still protects the files
    _prctl = None


@dataclass(frozen=True)
class Result:
    ok: bool
    seconds: float  # from fork to exit
    message: str  # why it failed; empty on success


class Compactor:
    """Runs one background job at a time in a forked child and reaps it without blocking."""

    def __init__(self) -> None:
        self._pid: int | None = None
        self._errors = -1  # read end of the pipe the child writes its error to
        self._started = 0.0

    @property
    def running(self) -> bool:
        return self._pid is not None

    def start(self, job: Callable[[], None], keep_fds: Sequence[int] = ()) -> float:
        """Forks a child that runs ``job`` and exits; returns the fork's pause in seconds.

        ``keep_fds`` stay open in the child (the directory lock); every other
        inherited descriptor (client sockets, the listening socket, the log) is
        closed there at once, so the child holds nothing of the parent's but memory.
        """
        assert self._pid is None, "one compaction at a time"
        read_end, write_end = os.pipe()
        parent = os.getpid()
        before = time.perf_counter()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_end)
            os.close(write_end)
            raise
        if pid == 0:
            _child(job, parent, (0, 1, 2, write_end, *keep_fds), write_end)
        pause = time.perf_counter() - before
        os.close(write_end)
        self._pid, self._errors, self._started = pid, read_end, time.monotonic()
        return pause

    def poll(self) -> Result | None:
        """The child's result once it has exited (reaping it), else None."""
        if self._pid is None:
            return None
        pid, status = os.waitpid(self._pid, os.WNOHANG)
        if pid == 0:
            return None
        return self._reaped(status)

    def kill(self) -> None:
        """Stops a running child and waits for it (shutting down)."""
        if self._pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._pid, signal.SIGKILL)
        _, status = os.waitpid(self._pid, 0)
        self._reaped(status)

    def _reaped(self, status: int) -> Result:
        seconds = time.monotonic() - self._started
        code = os.waitstatus_to_exitcode(status)
        with os.fdopen(self._errors, "rb") as errors:
            message = errors.read().decode(errors="replace")
        self._pid, self._errors = None, -1
        if code == 0:
            return Result(True, seconds, "")
        exit_reason = f"exit status {code}" if code > 0 else f"killed by signal {-code}"
        return Result(False, seconds, f"{message} ({exit_reason})" if message else exit_reason)


def _child(job: Callable[[], None], parent: int, keep: tuple[int, ...], errors: int) -> None:
    """Runs in the forked child; never returns into the caller's code (os._exit)."""
    code = 1
    try:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)
        # Collections would touch every object and defeat copy-on-write sharing.
        gc.disable()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        # Else a signal would write its wake-up byte to whatever file reuses that
        # descriptor number once it is closed: the checkpoint being written.
        signal.set_wakeup_fd(-1)
        _close_all_but(keep)
        job()
        code = 0
    except BaseException as error:
        with contextlib.suppress(BaseException):
            os.write(errors, f"{type(error).__name__}: {error}".encode()[:2000])
    finally:
        os._exit(code)


def _close_all_but(keep: tuple[int, ...]) -> None:
    low = 0
    for fd in sorted(set(keep)):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
