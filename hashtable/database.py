"""The durable hash table: executes requests, logs mutations, recovers, compacts.

The server loop drives it without blocking on anything but the group commit:

    outcome = db.start(request)        # for each request of the turn
    if isinstance(outcome, ReadJob):   # scan, query, a size census: a slice per turn
        outcome = outcome.step(deadline)   # None: not done, step again next turn
    if db.needs_commit:
        db.commit()                    # one write + one fsync for the whole turn
    ... send the turn's replies ...
    db.maintain()                      # reap/start compaction, everysec fsync
    timeout = db.seconds_until_maintenance()

A mutation is applied in memory at once and its log record buffered; it is
durable after ``commit()``, and no reply may leave before that. The log holds
mutation *requests* (with client/seq/ack, origin and lsn), and recovery
re-executes them on the checkpoint's state, which rebuilds the table and the
exactly-once sessions alike (a remove's reply is recomputed, not stored).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from hashtable import logfile as storage_log
from hashtable import storage
from hashtable.checkpoint import write_checkpoint
from hashtable.compaction import Compactions
from hashtable.memory_limit import MemoryLimit, removed_bytes
from hashtable.recovery import Recovery, rewrite
from hashtable.request import MUTATIONS, Outcome, Request, numbering_problem, validate
from hashtable.sealing import seal
from hashtable.sessions import SessionLimits, Sessions
from hashtable.storage import RecoveryError, StorageFailure
from hashtable.table import KEY_TIMEOUT, ReadJob, Table
from hashtable.versioning import DEFAULT_VERSION_WINDOW, VersionWindow
from netkit.memory import freeze_survivors, freeze_young_survivors

log = logging.getLogger("hashtable.database")

REAP_INTERVAL = 0.05  # how often the loop should look at a running compaction
# Writes between two freezes of what survives (netkit/memory.py): a table grown
# at run time is kept out of the collector's full collections too.
FREEZE_EVERY = 50_000
_dumps = orjson.dumps

# The defaults of the server's options of the same names (HashTableServer.py).
SYNC_MODES = storage.SYNC_MODES
DEFAULT_SYNC = "always"
DEFAULT_COMPACT_AFTER = 100
DEFAULT_SCAN_TIMEOUT = 1.0

__all__ = ["Database", "ReadJob", "RecoveryError", "StorageFailure"]


class Database:
    """A hash table kept durable in ``data_dir`` (see docs/storage.md)."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        sync: str = DEFAULT_SYNC,
        compact_after: int = DEFAULT_COMPACT_AFTER,
        scan_timeout: float = DEFAULT_SCAN_TIMEOUT,
        key_timeout: float = KEY_TIMEOUT,
        lock_timeout: float = 5.0,
        session_limits: SessionLimits | None = None,
        version_window: float = DEFAULT_VERSION_WINDOW,
        memory_limit: MemoryLimit | None = None,
        repair: bool = False,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")
        if compact_after < 1:
            raise ValueError("compact_after must be at least 1")
        self.directory = Path(data_dir)
        self.sync = sync
        self.compact_after = compact_after
        self.scan_timeout = scan_timeout
        self.key_timeout = key_timeout
        self._window = VersionWindow(version_window)
        self._memory = memory_limit  # refuses inserts while the process holds too much
        self._lock = storage.open_directory(self.directory, lock_timeout)
        try:
            self.origin = storage.read_origin(self.directory)
            storage.remove_temporaries(self.directory)
            storage.check_writable(self.directory, storage.PREALLOCATE)
            self.sessions = Sessions(session_limits)
            self._log = self._recover(repair)
        except (OSError, StorageFailure) as error:
            os.close(self._lock)
            raise RecoveryError(self.directory, None, f"cannot use: {error}") from error
        except BaseException:
            os.close(self._lock)
            raise
        self._compactions = Compactions(compact_after)
        self._closed = False
        # The recovered table out of the garbage collector's way (netkit/memory.py).
        freeze_survivors()
        self._frozen_lsn = self._lsn
        self._handlers = {
            "insert": self._mutate,
            "remove": self._mutate,
            "lookup": self._lookup,
            "scan": self._scan,
            "size": self._size,
            "query": self._query,
        }

    # ---- requests ---------------------------------------------------------------

    def execute(self, request: Request) -> Outcome:
        """Runs one request to the end. A mutation is applied and its record
        buffered, durable after commit()."""
        outcome = self.start(request)
        return outcome.run() if isinstance(outcome, ReadJob) else outcome

    def start(self, request: Request) -> Outcome | ReadJob:
        """Like execute(), but a read that visits the whole table (scan, query)
        comes back as a job on a snapshot, to be run a slice at a time.

        ``request`` is checked against the protocol's rules first
        (``hashtable.request.validate``)."""
        mutation = type(request.method) is str and request.method in MUTATIONS
        if request.problem is None or not mutation:
            problem = validate(request)
            if problem is not None:
                if not mutation or request.client is None or numbering_problem(request):
                    return Outcome.invalid(problem)
                request.problem = problem  # a good number: recorded, as the parser's are
        return self._handlers[request.method](request)

    def start_parsed(self, request: Request) -> Outcome | ReadJob:
        """``start`` for a request from ``hashtable.protocol.parse_request``, which
        has checked it already: the server's hot path."""
        return self._handlers[request.method](request)

    def _lookup(self, request: Request) -> Outcome:
        return self.table.lookup(request.key)

    def _scan(self, request: Request) -> Outcome | ReadJob:
        return self.table.scan(request.regex, self.scan_timeout, self.key_timeout)

    def _size(self, request: Request) -> Outcome | ReadJob:
        if request.servers is not None:
            return self.table.census(request.servers, self.scan_timeout)
        return self.table.size()

    def _query(self, request: Request) -> Outcome | ReadJob:
        return self.table.query(request.subkey, request.subvalue)

    def _mutate(self, request: Request) -> Outcome:
        client, problem = request.client, request.problem
        if client is not None:
            earlier = self.sessions.earlier(client, request.seq)
            if earlier is not None:
                return earlier
        elif problem is not None:
            return Outcome.invalid(problem)
        record: dict[str, Any] = {"origin": self.origin, "lsn": self._lsn + 1}
        if client is not None:
            record["client"] = client
            record["seq"] = request.seq
            if request.ack:
                record["ack"] = request.ack
        record["method"] = request.method
        refused = None
        if problem is None and request.version is not None:
            held = self.table.held(request.key)  # type: ignore[arg-type]
            refused = self._window.refusal(request.version, held)
        if problem is None and refused is None:
            record["key"] = request.key
            if request.method == "insert":
                record["value"] = request.value
            if request.version is not None:
                record["version"] = request.version
            try:
                line = seal(_dumps(record))
            except TypeError as error:  # orjson.JSONEncodeError: huge int, bad Unicode, a set...
                problem = f"cannot store this {request.method}: {error}"
            else:
                if self._memory is not None and request.method == "insert":
                    refused = self._memory.refusal(len(line))
        if problem is not None or refused is not None:
            if client is None:
                if problem is None:
                    return Outcome.failed(*refused)  # type: ignore[misc]
                return Outcome.invalid(problem)
            # Logged too, so that its retry gets the same answer even after a crash,
            # and the client's next number follows this one. A refusal depends on
            # the clock, so replay must read it, not decide it again.
            record.pop("key", None)
            record.pop("value", None)
            record.pop("version", None)
            if problem is not None:
                record["invalid"] = problem
            else:
                record["refused"] = refused
            line = seal(_dumps(record))
        self._lsn += 1
        self._log.append(line, self._lsn)
        outcome = self._apply(request, problem, refused)
        if self._memory is not None and self._memory.counting and request.method == "remove":
            removed = removed_bytes(request.key, outcome, request.version is not None)  # type: ignore[arg-type]
            self._memory.freed(removed)
        return outcome

    def _apply(
        self, request: Request, invalid: str | None, refused: list[str] | None = None
    ) -> Outcome:
        """The effect of a logged mutation, live or in replay: the same code, the same result."""
        version = request.version
        if invalid is not None:
            outcome = Outcome.invalid(invalid)
        elif refused is not None:
            outcome = Outcome.failed(refused[0], refused[1])
        elif version is not None:
            stamp = (version[0], version[1])
            if request.method == "insert":
                outcome = self.table.insert_versioned(request.key, request.value, stamp)
            else:
                outcome = self.table.remove_versioned(request.key, stamp)
        elif request.method == "insert":
            outcome = self.table.insert(request.key, request.value)
        else:
            outcome = self.table.remove(request.key)
        if request.client is not None:
            self.sessions.record(request.client, request.seq, request.ack or 0, outcome)
        return outcome

    # ---- durability -------------------------------------------------------------

    @property
    def needs_commit(self) -> bool:
        """True when records are buffered: call commit() before sending this turn's replies."""
        return bool(self._log.pending)

    def commit(self) -> None:
        """Writes the buffered records at once; with sync 'always', one fsync makes them durable."""
        self._log.commit()

    def maintain(self) -> None:
        """Never blocks for long: reaps or starts the compaction child, does everysec's fsync."""
        now = time.monotonic()
        if self._compactions.running:
            covered = self._compactions.poll()
            if covered is not None:  # the new checkpoint is durable: the old log goes
                self._log.drop_old()
                self._checkpoint_lsn = covered
        self._log.sync_if_due(now)

        if self._lsn - self._frozen_lsn >= FREEZE_EVERY:
            freeze_young_survivors()
            self._frozen_lsn = self._lsn
        purged = self._window.purge(self.table, now)
        if purged:
            log.debug("forgot %d tombstones older than %d", purged, self._window.horizon)
        if self._compactions.may_start(now) and self._compaction_due():
            self._start_compaction()

    def seconds_until_maintenance(self) -> float | None:
        """How long the loop may sleep before maintain() has work; None for no limit."""
        now = time.monotonic()
        waits = []
        if self._compactions.running:
            waits.append(REAP_INTERVAL)
        elif self._compaction_due():
            waits.append(self._compactions.seconds_until_start(now))
        until_sync = self._log.seconds_until_sync(now)
        if until_sync is not None:
            waits.append(until_sync)
        until_purge = self._window.seconds_until_purge(self.table, now)
        if until_purge is not None:
            waits.append(until_purge)
        return min(waits, default=None)

    def _compaction_due(self) -> bool:
        table = self.table
        return self._compactions.due(
            self._lsn - self._checkpoint_lsn, len(table.data) + len(table.tombstones)
        )

    def _start_compaction(self) -> None:
        paused_at = time.perf_counter()
        # A left-over table.txn.old (failed or crashed compaction) is covered by this
        # checkpoint as well, so only rotate when there is none.
        if not self._log.old_exists:
            self._log.rotate()
        job = self._checkpoint_writer()  # run in the child, on its copy-on-write snapshot
        if self._compactions.start(job, self._lsn, (self._lock,), paused_at):
            log.debug(
                "compaction started: %d keys up to lsn %d, paused %.1f ms (fork %.1f ms)",
                len(self.table.data),
                self._lsn,
                self._compactions.last_pause_ms,
                self._compactions.last_fork_ms,
            )

    # ---- recovery ---------------------------------------------------------------

    def _recover(self, repair: bool) -> storage_log.Log:
        started = time.perf_counter()
        recovery = Recovery(self.directory, self.origin, repair=repair)
        checkpoint = recovery.read_checkpoint()
        self.table = (
            Table(checkpoint.data, checkpoint.versions, checkpoint.tombstones)
            if checkpoint
            else Table()
        )
        for number, row in checkpoint.sessions if checkpoint else ():
            try:
                self.sessions.restore(row)
            except ValueError as error:
                if not repair:
                    raise RecoveryError(checkpoint.path, number, str(error)) from None
                checkpoint.dropped.append(f"{checkpoint.path}, line {number}: {error}")
        recovered = recovery.replay(self._apply)
        self._applied = recovered.applied
        self._lsn = self._applied.get(self.origin, 0)
        end, preallocating = recovered.log_end, recovered.preallocating
        if recovered.rewrite:
            for item in recovered.dropped:
                log.warning("repair: dropped %s", item)
            end, preallocating = rewrite(self.directory, recovered, self.origin, self._checkpoint)
            self._checkpoint_lsn = self._lsn
        else:
            self._checkpoint_lsn = recovered.covered.get(self.origin, 0)
        log.info(
            "recovered %d keys from %s: checkpoint up to lsn %d, %d log records replayed, in %.0f ms",
            len(self.table.data),
            self.directory,
            recovered.covered.get(self.origin, 0),
            recovered.replayed,
            (time.perf_counter() - started) * 1000,
        )
        return storage_log.Log(
            self.directory,
            self.sync,
            origin=self.origin,
            next_lsn=self._lsn + 1,
            end=end,
            preallocating=preallocating,
        )

    def _checkpoint(self, logs: int) -> None:
        """Writes a checkpoint of the whole table in this process (start-up only)."""
        self._checkpoint_writer(logs)()

    def _checkpoint_writer(self, logs: int = storage_log.LOG_VERSION) -> Callable[[], None]:
        """A function writing a checkpoint of the state as it is now; a compaction
        runs it in a forked child, whose copy-on-write memory keeps that state."""
        applied = {**self._applied, self.origin: self._lsn}
        sessions, table, directory, origin = self.sessions, self.table, self.directory, self.origin

        def write() -> None:
            write_checkpoint(
                directory,
                origin=origin,
                applied=applied,
                sessions=sessions.rows(),
                data=table.data,
                versions=table.versions,
                tombstones=table.tombstones,
                logs=logs,
            )

        return write

    # ---- the rest -----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Figures for the catalog record and the logs."""
        return {
            "keys": len(self.table.data),
            "origin": self.origin,
            "lsn": self._lsn,
            "sync": self.sync,
            "log_entries": self._lsn - self._checkpoint_lsn,
            "log_bytes": self._log.size(),
            "compactions": self._compactions.done,
            "compaction_failures": self._compactions.failures,
            "compacting": self._compactions.running,
            "last_compaction_ms": self._compactions.last_ms,
            "last_pause_ms": self._compactions.last_pause_ms,
            "last_fork_ms": self._compactions.last_fork_ms,
            "sessions": len(self.sessions),
            "session_outcomes": self.sessions.outcomes,
            "versioned_keys": len(self.table.versions),
            "tombstones": len(self.table.tombstones),
        }

    def close(self) -> None:
        """Writes and syncs what is buffered, stops a compaction, releases the directory."""
        if self._closed:
            return
        self._closed = True
        try:
            self._compactions.kill()
            self._log.close()
        finally:
            os.close(self._lock)

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
