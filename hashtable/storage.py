"""The data directory: its files' names, its lock, its server id, its errors.

Layout (docs/storage.md describes the formats):
- ``table.txn``      the transaction log (``hashtable.logfile``): a header, then
                     one sealed JSON record per line, appended.
- ``table.txn.old``  the log being compacted away; exists from the start of a
                     compaction until its checkpoint is safely written.
- ``table.ckpt``     the checkpoint (``hashtable.checkpoint``). Replaced
                     atomically (temporary file, fsync, rename, fsync of the directory).
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
import shutil
from pathlib import Path

import orjson

from hashtable.sealing import unseal
from netkit import files

log = logging.getLogger(__name__)

LOG = "table.txn"
OLD_LOG = "table.txn.old"
CHECKPOINT = "table.ckpt"
ORIGIN = "table.origin"
LOCK = "table.lock"
REPAIRS = "repaired"  # where --repair moves the files it replaced
SYNC_MODES = ("always", "everysec", "no")
PREALLOCATE = 1 << 20  # bytes the log file grows by at a time, ahead of the writes

PROBE = ".write-probe"  # check_writable's file, and the name it is renamed to
# Every name the server makes in its directory: what tells a data directory from
# a folder of the user's, and the only files it ever chmods (netkit.files).
OWN_FILES = frozenset(
    [LOG, OLD_LOG, CHECKPOINT, ORIGIN, LOCK, REPAIRS, PROBE, PROBE + ".renamed"]
    + [files.temporary_path(Path(name)).name for name in (LOG, CHECKPOINT, ORIGIN)]
)

_ORIGIN_SHAPE = re.compile(r"[0-9A-Za-z_.-]{1,64}")


class StorageFailure(Exception):
    """Writing, syncing or renaming a data file failed: the server must exit (crash-only)."""


class RecoveryError(Exception):
    """The data directory cannot be opened or its contents are corrupt."""

    def __init__(
        self, path: Path | str, line: int | None, reason: str, *, repairable: bool = False
    ) -> None:
        self.path = Path(path)
        self.line = line
        self.reason = reason
        # True when --repair can start from what is intact (and says what it drops).
        self.repairable = repairable
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")


class DataDirBusy(RecoveryError):
    """Another process (a running server, or its compaction) holds the data directory."""


def open_directory(directory: Path, lock_timeout: float) -> int:
    """Creates ``directory`` if needed and locks it; returns the lock's descriptor.
    An existing one must be fit for a table (``netkit.files.claim_directory``).

    Waits up to ``lock_timeout`` seconds: after a crash, the dead server's
    compaction child may hold the lock for a moment longer (it dies with its
    parent), and it must be gone before anyone touches the files.
    """
    try:
        return files.lock_directory(
            directory, LOCK, OWN_FILES.__contains__, "a hash table", wait=lock_timeout
        )
    except files.DirectoryLocked as busy:
        raise DataDirBusy(
            directory, None, f"in use by another process (pid {busy.holder})"
        ) from None
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            reason = f"cannot write in the data directory: {error.strerror}"
            raise RecoveryError(directory, None, reason) from None
        file = directory.exists() and not directory.is_dir()
        reason = "it is a file, not a directory" if file else error.strerror or error
        raise RecoveryError(directory, None, f"cannot use as data directory: {reason}") from None


def read_origin(directory: Path) -> str:
    """This directory's server id, created on first use."""
    path = directory / ORIGIN
    try:
        origin = path.read_bytes().decode().strip()
    except FileNotFoundError:
        # A new id would make every record of the log someone else's: a lost one is
        # taken from the checkpoint, or refused with nothing written (a backup that
        # copied only table.ckpt and table.txn).
        checkpoint = directory / CHECKPOINT
        origin = _origin_of_checkpoint(checkpoint)
        if origin is None and checkpoint.exists():
            raise RecoveryError(
                checkpoint, 1, f"not a checkpoint header naming the server id, which {ORIGIN} "
                "held, and that file is missing; nothing was changed"
            ) from None  # fmt: skip
        if origin is None and (directory / LOG).exists():
            raise RecoveryError(
                path, None, "missing, though the table's log is here and no checkpoint names "
                "its server id: restore it from where they came from (the \"origin\" of the "
                "log's records); nothing was changed"
            ) from None  # fmt: skip
        if origin is None:
            origin = secrets.token_hex(8)  # a new table
        else:
            log.warning("%s was missing: restored the server id %s from %s", path, origin,
                        CHECKPOINT)  # fmt: skip
        files.replace_atomically(path, f"{origin}\n".encode())
    except (OSError, UnicodeDecodeError) as error:
        raise RecoveryError(path, None, f"cannot read the server id: {error}") from None
    if not _ORIGIN_SHAPE.fullmatch(origin):
        raise RecoveryError(path, 1, "not a server id (1 to 64 letters, digits, '_.-')")
    return origin


def _origin_of_checkpoint(checkpoint: Path) -> str | None:
    """The server id a checkpoint's header names (sealed, or plain as format 1
    wrote it), or None."""
    try:
        with open(checkpoint, "rb") as file:
            first = file.readline(1 << 16)
    except OSError:
        return None
    sealed = unseal(first)
    try:
        header = orjson.loads(sealed if sealed is not None else first)
    except orjson.JSONDecodeError:
        return None
    if type(header) is not dict:
        return None
    origin = header.get("origin")
    if sealed is None and not _plain_header_names(header, origin):
        return None
    return origin if type(origin) is str and _ORIGIN_SHAPE.fullmatch(origin) else None


def _plain_header_names(header: dict, origin: object) -> bool:
    """Whether a plain (format 1, unsealed: no checksum) header names ``origin``
    twice over, as its own id and among the logs it applied: a damaged id does not
    match the other, and is not taken for the server's."""
    applied = header.get("applied")
    return (
        header.get("format") == "hashtable-checkpoint"
        and header.get("version") == 1
        and type(applied) is dict
        and origin in applied
    )


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def remove_temporaries(directory: Path) -> None:
    """Drops what a crash left half-written: never renamed, so never part of the state."""
    for name in (CHECKPOINT, ORIGIN, LOG):
        files.remove_temporary(directory / name)


def check_writable(directory: Path, room: int) -> None:
    """RecoveryError unless ``directory`` takes new files, renames and ``room`` bytes.

    Compaction creates, renames and removes files: a directory that only lets
    the server append to its log would fail at the first compaction, after
    the server had accepted writes. A probe file tells for sure, root and
    read-only mounts included, where the mode bits do not."""
    probe = directory / PROBE
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, room)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                free = shutil.disk_usage(directory).free
                raise RecoveryError(
                    directory,
                    None,
                    f"no room for the log: it needs {room // 1024} KiB ahead of its "
                    f"records, and {free // 1024} KiB are free",
                ) from None
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
        finally:
            os.close(fd)
        os.replace(probe, probe.with_suffix(".renamed"))
        os.unlink(probe.with_suffix(".renamed"))
    except RecoveryError:
        probe.unlink(missing_ok=True)
        raise
    except OSError as error:
        for leftover in (probe, probe.with_suffix(".renamed")):
            with contextlib.suppress(OSError):
                leftover.unlink()
        reason = error.strerror or str(error)
        raise RecoveryError(
            directory, None, f"cannot write in the data directory: {reason}"
        ) from None
