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
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from netkit.backoff import Backoff

log = logging.getLogger("hashtable.database")

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


class Compactions:
    """When the database compacts, and what its compactions did: the policy around
    one ``Compactor``. A compaction is due once the log holds as many records as
    the table has keys (``compact_after`` at least): each write's share of the
    rewriting stays constant however big the table. A failed one is retried after
    1 s, 2 s, 4 s, ... (up to a minute); nothing is lost meanwhile, the log only grows."""

    def __init__(self, compact_after: int) -> None:
        self.compact_after = compact_after
        self._compactor = Compactor()
        self._retry = Backoff(initial=1.0, cap=60.0)
        self._retry_at = 0.0
        self._covering = 0  # the lsn the running compaction's checkpoint covers
        self.done = self.failures = 0
        self.last_ms: float | None = None
        self.last_pause_ms: float | None = None
        self.last_fork_ms: float | None = None

    @property
    def running(self) -> bool:
        return self._compactor.running

    def due(self, records: int, rewritten: int) -> bool:
        """Whether ``records`` log records since the checkpoint call for rewriting
        ``rewritten`` entries (keys and tombstones)."""
        return records >= max(self.compact_after, rewritten)

    def may_start(self, now: float) -> bool:
        return not self._compactor.running and now >= self._retry_at

    def seconds_until_start(self, now: float) -> float:
        return max(0.0, self._retry_at - now)

    def start(
        self, job: Callable[[], None], covering: int, keep_fds: Sequence[int], paused_at: float
    ) -> bool:
        """Forks ``job``, whose checkpoint covers the log up to lsn ``covering``;
        False (and a retry later) when the fork failed. ``paused_at``: the
        ``time.perf_counter()`` when the loop stopped serving for it (the pause
        includes the log's rotation before the fork)."""
        try:
            fork_seconds = self._compactor.start(job, keep_fds)
        except OSError as error:
            self._failed(f"cannot fork: {error}")
            return False
        self._covering = covering
        self.last_fork_ms = fork_seconds * 1000
        self.last_pause_ms = (time.perf_counter() - paused_at) * 1000
        return True

    def poll(self) -> int | None:
        """The lsn the checkpoint now covers, once a running compaction has
        succeeded; None while it runs, when none runs, or when it failed."""
        result = self._compactor.poll()
        if result is None:
            return None
        if not result.ok:
            self._failed(result.message)
            return None
        self.done += 1
        self.last_ms = result.seconds * 1000
        self._retry.reset()
        log.debug("compaction done in %.0f ms", self.last_ms)
        return self._covering

    def kill(self) -> None:
        self._compactor.kill()

    def _failed(self, reason: str) -> None:
        self.failures += 1
        delay = self._retry.next_delay()
        self._retry_at = time.monotonic() + delay
        log.warning("compaction failed (%s); nothing is lost, retrying in %.0f s", reason, delay)
