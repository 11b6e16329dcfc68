"""The transaction log being appended to, ``table.txn`` (format 2, docs/storage.md).

Every line is sealed (``hashtable.sealing``). Besides the mutation records
(which carry ``lsn``), a log holds a few control records, which tell recovery
how the file ended (``hashtable.logreader``):

- the header, its first line, written with the file: ``{"log": "hashtable-log",
  "version": 2, "origin": ..., "first": N}``, N being the lsn of its first record;
- ``{"closed": lsn}``, at a clean close and at a rotation, after the last record;
- ``{"preallocate": false}`` (and ``true`` again), when the file system stops
  taking the preallocation, so that recovery knows whether a crash leaves zeros.

A new log file is created whole (temporary file with its header, fsync,
rename, fsync of the directory): a ``table.txn`` always has its header.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

import orjson

from hashtable.sealing import seal
from hashtable.storage import LOG, OLD_LOG, PREALLOCATE, SYNC_MODES, StorageFailure, pwrite_all
from netkit import files

log = logging.getLogger("hashtable.storage")

LOG_FORMAT = "hashtable-log"
LOG_VERSION = 2
_ZEROS = bytes(1 << 16)
_CANNOT_PREALLOCATE = (
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EOPNOTSUPP,
    errno.EINVAL,
    errno.ENOSYS,
)


def log_header(origin: str, first: int) -> bytes:
    return seal(
        orjson.dumps({"log": LOG_FORMAT, "version": LOG_VERSION, "origin": origin, "first": first})
    )


def write_new_log(path: Path, origin: str, first: int) -> tuple[int, bool]:
    """Writes a new, empty log at ``path`` (a temporary name: the caller renames it)
    and syncs it; returns where its records will start and whether it is preallocated.

    It is preallocated before anyone can see it, so that no moment exists when
    ``table.txn`` ends right after its header without a crash having cut it."""
    content = log_header(origin, first)
    with open(path, "wb", opener=files.open_private) as file:
        try:
            os.posix_fallocate(file.fileno(), 0, len(content) + PREALLOCATE)
            preallocated = True
        except OSError as error:
            if error.errno not in _CANNOT_PREALLOCATE:
                raise
            content += seal(orjson.dumps({"preallocate": False}))
            preallocated = False
        file.write(content)
        file.flush()
        os.fdatasync(file.fileno())
    return len(content), preallocated


def create_log(directory: Path, origin: str, first: int) -> tuple[int, bool]:
    """Makes ``table.txn`` a new, empty log, atomically; ``write_new_log``'s result."""
    path = directory / LOG
    temporary = files.temporary_path(path)
    made = write_new_log(temporary, origin, first)
    os.replace(temporary, path)
    files.fsync_dir(directory)
    return made


class Log:
    """The transaction log being appended to, with its durability policy.

    ``append`` buffers a sealed record; ``commit`` writes the buffer with one
    write and, with sync ``always``, makes it durable with one fdatasync (group
    commit). With ``everysec``, ``sync_if_due`` syncs at most once a second;
    with ``no``, the operating system decides.

    ``end`` is where the recovered records of an existing ``table.txn`` end
    (``hashtable.logreader``); whatever follows is zeroed. The file is then kept
    preallocated ahead of the writes (``PREALLOCATE`` at a time, and always at
    least one byte ahead), so that most fdatasyncs flush the data alone, not a
    new file size as well (about a third cheaper on this machine's ext4,
    REPORT.md), and so that a crash always leaves zeros after the records: a
    file that ends right after a record was cut, not crashed (docs/storage.md).
    A clean close or a rotation writes ``{"closed": lsn}`` and cuts the zeros off.
    """

    def __init__(
        self,
        directory: Path,
        sync: str,
        *,
        origin: str,
        next_lsn: int,
        end: int | None = None,
        preallocating: bool = True,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}")
        self.directory = directory
        self.path = directory / LOG
        self.old_path = directory / OLD_LOG
        self.sync = sync
        self.origin = origin
        # One growing buffer, not a list of lines: keeping many small orjson
        # outputs alive costs several times more than the encoding itself.
        self.pending = bytearray()
        self.dirty = False  # written, not yet synced
        self.last_sync = time.monotonic()
        self._last_lsn = next_lsn - 1
        if end is None or not self.path.exists():
            self._create(next_lsn)
        else:
            self._reopen(end, preallocating)

    # ---- opening ------------------------------------------------------------------

    def _create(self, first: int) -> None:
        try:
            end, preallocated = create_log(self.directory, self.origin, first)
        except OSError as error:
            raise StorageFailure(f"cannot create {self.path}: {error}") from error
        self._reopen(end, preallocated)

    def _reopen(self, end: int, preallocating: bool) -> None:
        """Opens the file for appending after its first ``end`` bytes: zeroes what
        follows them (a torn write's remains), preallocates, syncs."""
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
            size = os.fstat(self._fd).st_size
            for offset in range(end, size, len(_ZEROS)):
                pwrite_all(self._fd, _ZEROS[: size - offset], offset)
        except OSError as error:
            raise StorageFailure(f"cannot open {self.path}: {error}") from error
        self._end = self._allocated = end
        self._preallocating = True  # until the file system cannot, or the disk is full
        try:
            self._preallocate(max(size, end + PREALLOCATE))
            if self._preallocating != preallocating:  # recovery must know which it is
                self.pending += self._control({"preallocate": self._preallocating})
                self._write_pending()
            os.fdatasync(self._fd)
        except OSError as error:
            raise StorageFailure(f"cannot prepare {self.path}: {error}") from error
        self.dirty = False

    # ---- writing ------------------------------------------------------------------

    @property
    def old_exists(self) -> bool:
        return self.old_path.exists()

    def size(self) -> int:
        """Bytes of records in the file."""
        return self._end

    def append(self, line: bytes, lsn: int) -> None:
        self.pending += line
        self._last_lsn = lsn

    def commit(self) -> None:
        if self.pending:
            self._write_pending()
            if self.sync == "always":
                self._sync()

    def sync_if_due(self, now: float) -> None:
        if self.dirty and now >= self.last_sync + 1.0:
            self._sync()

    def seconds_until_sync(self, now: float) -> float | None:
        return max(0.0, self.last_sync + 1.0 - now) if self.dirty else None

    def rotate(self) -> None:
        """Closes the log, renames it ``table.txn.old`` and starts a new one.

        The new file is made whole before the rename, so a crash leaves either
        the old log alone (recovery then creates the new one) or both."""
        self._finish()
        temporary = files.temporary_path(self.path)
        try:
            os.close(self._fd)
            end, preallocated = write_new_log(temporary, self.origin, self._last_lsn + 1)
            os.replace(self.path, self.old_path)
            os.replace(temporary, self.path)
            files.fsync_dir(self.directory)
        except OSError as error:
            raise StorageFailure(f"cannot rotate {self.path}: {error}") from error
        self._reopen(end, preallocated)

    def drop_old(self) -> None:
        try:
            self.old_path.unlink(missing_ok=True)
        except OSError as error:
            raise StorageFailure(f"cannot remove {self.old_path}: {error}") from error

    def close(self) -> None:
        try:
            self._finish()
        finally:
            os.close(self._fd)

    def _finish(self) -> None:
        """Writes what is buffered and the close record, syncs, cuts the zeros off.

        The sync comes before the cut: a crash between them leaves the close
        record followed by zeros, which recovery reads as a clean close."""
        self.pending += self._control({"closed": self._last_lsn})
        self._write_pending()
        self._sync()
        try:
            # fstat, not _allocated: a preallocation that failed half-way may have
            # grown the file all the same.
            if os.fstat(self._fd).st_size > self._end:
                os.ftruncate(self._fd, self._end)
            self._allocated = self._end
        except OSError as error:
            raise StorageFailure(f"cannot truncate {self.path}: {error}") from error

    def _control(self, record: dict[str, object]) -> bytes:
        return seal(orjson.dumps(record))

    def _write_pending(self) -> None:
        if not self.pending:
            return
        data, self.pending = self.pending, bytearray()
        end = self._end + len(data)
        try:
            # >=: a running log always has zeros after its records (see the class).
            if self._preallocating and end >= self._allocated:
                self._preallocate(end + PREALLOCATE)
                if not self._preallocating:
                    data = self._control({"preallocate": False}) + data
                    end = self._end + len(data)
            pwrite_all(self._fd, data, self._end)
        except OSError as error:
            raise StorageFailure(f"cannot write {self.path}: {error}") from error
        self._end = end
        self.dirty = self.sync != "no"

    def _preallocate(self, size: int) -> None:
        if size <= self._allocated:
            return
        try:
            os.posix_fallocate(self._fd, self._allocated, size - self._allocated)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                # Preallocation only makes syncs cheaper: the records may still fit,
                # and if they do not, the write itself fails.
                log.warning(
                    "%s: no room to preallocate %d bytes ahead (%s); writing without",
                    self.path,
                    size - self._allocated,
                    error.strerror,
                )
            elif error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise  # EIO, ...: the disk is failing
            self._preallocating = False  # plain appends it is, until the next log file
            return
        self._allocated = size

    def _sync(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError as error:
            raise StorageFailure(f"cannot sync {self.path}: {error}") from error
        self.dirty = False
        self.last_sync = time.monotonic()
