"""The data directory's files: transaction log, checkpoint, server id and lock.

Layout (docs/storage.md describes the formats):
- ``table.txn``      the transaction log: one JSON record per line, appended.
- ``table.txn.old``  the log being compacted away; exists from the start of a
                     compaction until its checkpoint is safely written.
- ``table.ckpt``     the checkpoint: header, sessions, one ``[key, value]`` per
                     line, footer. Replaced atomically (temporary file, fsync,
                     rename, fsync of the directory).
- ``table.origin``   this server's persistent id.
- ``table.lock``     held (flock) by the process using the directory.

Every failure to write, sync or rename raises ``StorageFailure``: the process
must exit and let recovery start from what is on disk (crash-only), because
after a failed fsync nobody knows what the file holds.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from netkit import files

log = logging.getLogger("hashtable.storage")

LOG = "table.txn"
OLD_LOG = "table.txn.old"
CHECKPOINT = "table.ckpt"
ORIGIN = "table.origin"
LOCK = "table.lock"
CHECKPOINT_FORMAT = "hashtable-checkpoint"
CHECKPOINT_VERSION = 1
SYNC_MODES = ("always", "everysec", "no")
PREALLOCATE = 1 << 20  # bytes the log file grows by at a time, ahead of the writes

_ORIGIN_SHAPE = re.compile(r"[0-9A-Za-z_.-]{1,64}")
_dump_line = partial(orjson.dumps, option=orjson.OPT_APPEND_NEWLINE)
_NONE: Mapping[str, Any] = {}
_TORN = object()


class StorageFailure(Exception):
    """Writing, syncing or renaming a data file failed: the server must exit (crash-only)."""


class RecoveryError(Exception):
    """The data directory cannot be opened or its contents are corrupt."""

    def __init__(self, path: Path | str, line: int | None, reason: str) -> None:
        self.path = Path(path)
        self.line = line
        self.reason = reason
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")


class DataDirBusy(RecoveryError):
    """Another process (a running server, or its compaction) holds the data directory."""


def open_directory(directory: Path, lock_timeout: float) -> int:
    """Creates ``directory`` if needed and locks it; returns the lock's descriptor.

    Waits up to ``lock_timeout`` seconds: after a crash, the dead server's
    compaction child may hold the lock for a moment longer (it dies with its
    parent), and it must be gone before anyone touches the files.
    """
    try:
        return files.lock_directory(directory, LOCK, wait=lock_timeout)
    except files.DirectoryLocked as busy:
        raise DataDirBusy(
            directory, None, f"in use by another process (pid {busy.holder})"
        ) from None
    except OSError as error:
        file = directory.exists() and not directory.is_dir()
        reason = "it is a file, not a directory" if file else error.strerror or error
        raise RecoveryError(directory, None, f"cannot use as data directory: {reason}") from None


def read_origin(directory: Path) -> str:
    """This directory's server id, created on first use."""
    path = directory / ORIGIN
    try:
        origin = path.read_bytes().decode().strip()
    except FileNotFoundError:
        origin = secrets.token_hex(8)
        files.replace_atomically(path, f"{origin}\n".encode())
    except (OSError, UnicodeDecodeError) as error:
        raise RecoveryError(path, None, f"cannot read the server id: {error}") from None
    if not _ORIGIN_SHAPE.fullmatch(origin):
        raise RecoveryError(path, 1, "not a server id (1 to 64 letters, digits, '_.-')")
    return origin


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def remove_temporaries(directory: Path) -> None:
    """Drops what a crash left half-written: never renamed, so never part of the state."""
    for name in (CHECKPOINT, ORIGIN):
        files.remove_temporary(directory / name)


# ---- checkpoint ---------------------------------------------------------------


@dataclass
class Checkpoint:
    path: Path
    applied: dict[str, int]  # per origin, the last lsn whose effect the checkpoint holds
    data: dict[str, Any]
    sessions: list[tuple[int, Any]] = field(default_factory=list)  # (line number, row)
    # Versioned writes (docs/cluster.md): key -> (number, client), for live keys and
    # for tombstones (removed keys), each in the order written.
    versions: dict[str, tuple[int, str]] = field(default_factory=dict)
    tombstones: dict[str, tuple[int, str]] = field(default_factory=dict)


def write_checkpoint(
    directory: Path,
    *,
    origin: str,
    applied: dict[str, int],
    sessions: Iterable[dict[str, Any]],
    data: dict[str, Any],
    versions: Mapping[str, tuple[int, str]] = _NONE,
    tombstones: Mapping[str, tuple[int, str]] = _NONE,
) -> None:
    """Writes ``table.ckpt`` atomically: temporary file, fsync, rename, fsync directory.

    ``versions`` and ``tombstones`` (key -> (number, client)) are the versioned
    writes' bookkeeping, one ``{"version": [key, number, client]}`` or
    ``{"tombstone": [...]}`` line each after the entries; a table without them
    is written as before."""
    path = directory / CHECKPOINT
    temporary = files.temporary_path(path)
    header = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "origin": origin,
        "lsn": applied.get(origin, 0),
        "applied": applied,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with open(temporary, "wb", buffering=1 << 20) as file:
        file.write(_dump_line(header))
        count = 0
        for row in sessions:
            file.write(_dump_line(row))
            count += 1
        file.writelines(map(_dump_line, data.items()))
        footer = {"footer": True, "keys": len(data), "sessions": count}
        for kind, stamps in (("version", versions), ("tombstone", tombstones)):
            if stamps:
                file.writelines(_dump_line({kind: [k, n, c]}) for k, (n, c) in stamps.items())
                footer[f"{kind}s"] = len(stamps)
        file.write(_dump_line(footer))
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    files.fsync_dir(directory)


def read_checkpoint(directory: Path) -> Checkpoint | None:
    """Loads ``table.ckpt``, or None when there is none; RecoveryError when it is damaged."""
    path = directory / CHECKPOINT
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return None
    except OSError as error:
        raise RecoveryError(path, None, f"cannot read: {error}") from None
    with file:
        checkpoint = _checkpoint_header(path, file.readline())
        data = checkpoint.data
        footer = None
        for number, line in enumerate(file, 2):
            if footer is not None:
                raise RecoveryError(path, number, "data after the footer")
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError as error:
                raise RecoveryError(path, number, f"not valid JSON ({error})") from None
            if type(item) is list:
                if len(item) != 2 or type(item[0]) is not str:
                    raise RecoveryError(path, number, "an entry must be [key, value]")
                data[item[0]] = item[1]
            elif type(item) is dict and "client" in item:
                checkpoint.sessions.append((number, item))
            elif (
                type(item) is dict and len(item) == 1 and ("version" in item or "tombstone" in item)
            ):
                _read_stamp(path, number, item, checkpoint)
            elif type(item) is dict and item.get("footer") is True:
                footer, footer_line = item, number
            else:
                raise RecoveryError(
                    path, number, "neither an entry, a session, a version nor the footer"
                )
    if footer is None:
        raise RecoveryError(path, None, "no footer: the file is incomplete")
    if footer.get("keys") != len(data) or footer.get("sessions") != len(checkpoint.sessions):
        raise RecoveryError(
            path,
            footer_line,
            f"the footer counts {footer.get('keys')} keys and {footer.get('sessions')} sessions "
            f"but the file holds {len(data)} distinct keys and {len(checkpoint.sessions)} sessions",
        )
    for kind, stamps in (("versions", checkpoint.versions), ("tombstones", checkpoint.tombstones)):
        if footer.get(kind, 0) != len(stamps):
            raise RecoveryError(
                path,
                footer_line,
                f"the footer counts {footer.get(kind, 0)} {kind} but the file holds {len(stamps)}",
            )
    return checkpoint


def _read_stamp(path: Path, number: int, item: dict[str, Any], checkpoint: Checkpoint) -> None:
    """A ``{"version": [key, n, client]}`` or ``{"tombstone": [...]}`` line."""
    kind, stamp = next(iter(item.items()))
    if not (
        type(stamp) is list
        and len(stamp) == 3
        and type(stamp[0]) is str
        and type(stamp[1]) is int
        and type(stamp[2]) is str
    ):
        raise RecoveryError(path, number, f"a {kind} must be [key, number, client]")
    key = stamp[0]
    if kind == "version" and key not in checkpoint.data:
        raise RecoveryError(path, number, f"a version for a key the file does not hold: {key!r}")
    if kind == "tombstone" and key in checkpoint.data:
        raise RecoveryError(path, number, f"a tombstone for a key the file holds: {key!r}")
    stamps = checkpoint.versions if kind == "version" else checkpoint.tombstones
    stamps[key] = (stamp[1], stamp[2])


def _checkpoint_header(path: Path, line: bytes) -> Checkpoint:
    try:
        header = orjson.loads(line)
    except orjson.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT:
        raise RecoveryError(path, 1, f"not a {CHECKPOINT_FORMAT} header")
    if header.get("version") != CHECKPOINT_VERSION:
        raise RecoveryError(path, 1, f"unsupported checkpoint version {header.get('version')!r}")
    applied = header.get("applied")
    if not isinstance(applied, dict) or not all(
        type(lsn) is int and lsn >= 0 for lsn in applied.values()
    ):
        raise RecoveryError(path, 1, "'applied' must map origins to log sequence numbers")
    return Checkpoint(path, applied, {})


# ---- log ----------------------------------------------------------------------


def read_log(path: Path, *, tolerate_torn_tail: bool) -> Iterator[tuple[int, Any]]:
    """Yields ``(line number, record)`` for each line of a log file (none if it is missing).

    The records end at the end of the file or at its first NUL byte: ``Log``
    preallocates the file with zeros, and JSON text never holds a raw NUL. A
    crash leaves that zero tail behind, and possibly, after it, pieces of writes
    that were never synced, so never acknowledged: both are dropped.

    A torn last record (no newline, or not JSON) was being written when the
    process died, so it was never acknowledged either: with ``tolerate_torn_tail``
    it is dropped, and the file is cut after the last good record. Anything
    else that is not JSON is corruption: RecoveryError names the file and line.
    """
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return
    except OSError as error:
        raise RecoveryError(path, None, f"cannot read: {error}") from None
    good_bytes = 0
    with file:
        # Each line is yielded once the next one shows it is not the last: the
        # last one may be torn.
        previous: tuple[int, bytes] | None = None
        for number, line in enumerate(file, 1):
            nul = line.find(b"\0")
            if nul >= 0:
                line = line[:nul]
            if previous is not None:
                yield previous[0], _parse_record(path, *previous)
                good_bytes += len(previous[1])
            previous = (number, line) if line else None
            if nul >= 0:
                break
        if previous is not None:
            number, line = previous
            record = _TORN
            if line.endswith(b"\n"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    record = orjson.loads(line)
            if record is not _TORN:
                yield number, record
                good_bytes += len(line)
                previous = None
            elif not tolerate_torn_tail:
                raise RecoveryError(path, number, "incomplete last line")
        size = os.fstat(file.fileno()).st_size
        if good_bytes == size or not tolerate_torn_tail:
            return  # a closed log, or a rotated one: its zero tail (if any) is harmless
        file.seek(good_bytes + (len(previous[1]) if previous else 0))
        unsynced = any(chunk.strip(b"\0") for chunk in iter(partial(file.read, 1 << 20), b""))
    if previous is not None:
        log.warning(
            "%s: dropping the torn last line %d (%d bytes); it was never acknowledged",
            path,
            previous[0],
            len(previous[1]),
        )
    if unsynced:
        log.warning("%s: dropping writes after the end of the records; none was acknowledged", path)
    try:
        os.truncate(path, good_bytes)
        fd = os.open(path, os.O_WRONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as error:
        raise StorageFailure(f"cannot truncate {path}: {error}") from error


def _parse_record(path: Path, number: int, line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as error:
        raise RecoveryError(path, number, f"not valid JSON ({error})") from None


class Log:
    """The transaction log being appended to, with its durability policy.

    ``append`` buffers a record; ``commit`` writes the buffer with one write and,
    with sync ``always``, makes it durable with one fdatasync (group commit).
    With ``everysec``, ``sync_if_due`` syncs at most once a second; with ``no``,
    the operating system decides.

    Open it only after ``read_log`` has recovered the file, which cuts it at the
    end of its records. The file is then preallocated ahead of the writes
    (``PREALLOCATE`` at a time), so that most fdatasyncs flush the data alone, not
    a new file size as well: about a third cheaper on this machine's ext4
    (REPORT.md). A clean close or a rotation cuts the zero tail off again.
    """

    def __init__(self, directory: Path, sync: str) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}")
        self.directory = directory
        self.path = directory / LOG
        self.old_path = directory / OLD_LOG
        self.sync = sync
        # One growing buffer, not a list of lines: keeping many small orjson
        # outputs alive costs several times more than the encoding itself.
        self.pending = bytearray()
        self.dirty = False  # written, not yet synced
        self.last_sync = time.monotonic()
        self._fd, self._end = self._open()
        self._allocated = self._end
        self._preallocating = True  # until the file system cannot, or the disk is full

    def _open(self) -> tuple[int, int]:
        """The file's descriptor, and where its records end."""
        try:
            existed = self.path.exists()
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            if not existed:
                files.fsync_dir(self.directory)
            return fd, os.fstat(fd).st_size
        except OSError as error:
            raise StorageFailure(f"cannot open {self.path}: {error}") from error

    @property
    def old_exists(self) -> bool:
        return self.old_path.exists()

    def size(self) -> int:
        """Bytes of records in the file."""
        return self._end

    def append(self, line: bytes) -> None:
        self.pending += line

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
        """Renames the log to ``table.txn.old`` (fully written and synced) and starts a new one."""
        self._finish()
        try:
            os.close(self._fd)
            os.replace(self.path, self.old_path)
        except OSError as error:
            raise StorageFailure(f"cannot rotate {self.path}: {error}") from error
        self._fd, self._end = self._open()
        self._allocated = self._end
        self._preallocating = True  # a new file: maybe there is room again

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
        """Writes what is buffered, syncs what is not yet synced, cuts the preallocated tail."""
        self._write_pending()
        try:
            # fstat, not _allocated: a preallocation that failed half-way may have
            # grown the file all the same. The cut needs no sync of its own: if a
            # crash undoes it, the zeros are read as the end of the records.
            if os.fstat(self._fd).st_size > self._end:
                os.ftruncate(self._fd, self._end)
            self._allocated = self._end
        except OSError as error:
            raise StorageFailure(f"cannot truncate {self.path}: {error}") from error
        if self.dirty:
            self._sync()

    def _write_pending(self) -> None:
        if not self.pending:
            return
        data, self.pending = self.pending, bytearray()
        end = self._end + len(data)
        try:
            if self._preallocating and end > self._allocated:
                self._preallocate(end + PREALLOCATE)
            pwrite_all(self._fd, data, self._end)
        except OSError as error:
            raise StorageFailure(f"cannot write {self.path}: {error}") from error
        self._end = end
        self.dirty = self.sync != "no"

    def _preallocate(self, size: int) -> None:
        try:
            os.posix_fallocate(self._fd, self._allocated, size - self._allocated)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
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
