"""Files that must survive crashes: atomic replacement and directory locks.

Shared by the hash table's storage engine and the catalog's state directory.
Both keep a directory that exactly one process may use at a time (a lock file
held with ``flock``, so that it is released however the process ends), and
small files that a crash must leave either old or new, never half-written.
Both are private to their owner (directories 0700, files 0600) whatever the
umask: records and data are nobody else's to read.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from pathlib import Path

TEMPORARY_SUFFIX = ".tmp"
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class DirectoryLocked(OSError):
    """Another process holds the directory's lock; ``holder`` is its pid as it wrote it."""

    def __init__(self, directory: Path, holder: str) -> None:
        super().__init__(f"{directory} is in use by another process (pid {holder})")
        self.directory = directory
        self.holder = holder


def fsync_dir(directory: Path) -> None:
    """Makes the directory's entries (created, renamed, removed files) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directory(directory: Path, mode: int = PRIVATE_DIR) -> None:
    """Creates ``directory`` (and the parents it lacks) with exactly ``mode``, whatever
    the umask, durably; an existing ``directory`` more open than ``mode`` is tightened
    to it (its existing parents are left as they are: not ours to change)."""
    if directory.is_dir():
        if stat.S_IMODE(directory.stat().st_mode) & ~mode:
            os.chmod(directory, mode)
        return
    missing = [directory, *(p for p in directory.parents if not p.is_dir())]
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by someone else
            os.mkdir(path, mode)
            os.chmod(path, mode)  # mkdir's mode is cut by the umask; this is not
            fsync_dir(path.parent)
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is not a directory")


def make_files_private(directory: Path) -> None:
    """Tightens every regular file directly in ``directory`` to ``PRIVATE_FILE`` (files
    an earlier version, or another umask, left readable by others)."""
    for entry in os.scandir(directory):
        if not entry.is_file(follow_symlinks=False):
            continue
        if stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode) & ~PRIVATE_FILE:
            os.chmod(entry.path, PRIVATE_FILE)


def lock_directory(directory: Path, lock_name: str, wait: float = 0.0) -> int:
    """Creates ``directory`` if needed and locks it; returns the lock's descriptor
    (closing it releases the lock, as does the process's end).

    Waits up to ``wait`` seconds for another holder to let go. Raises
    ``DirectoryLocked`` when it does not, ``OSError`` when the directory cannot
    be used. The lock file holds the holder's pid, for the message. Once locked,
    the directory is ``PRIVATE_DIR`` and its files ``PRIVATE_FILE``, whatever they were.
    """
    make_directory(directory)
    fd = os.open(directory / lock_name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise DirectoryLocked(directory, holder) from None
            time.sleep(0.05)
    try:
        make_files_private(directory)
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def open_private(path: Path, flags: int) -> int:
    """Opens ``path`` with ``flags``, creating it if needed, as ``PRIVATE_FILE`` whatever
    the umask or the mode an existing file had; returns the descriptor. Raises ``OSError``.
    Also an ``opener`` for ``open()``."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # the umask, or a left-over file, may say otherwise
    except OSError:
        os.close(fd)
        raise
    return fd


def temporary_path(path: Path) -> Path:
    """Where ``replace_atomically`` writes ``path`` before the rename."""
    return path.with_name(path.name + TEMPORARY_SUFFIX)


def replace_atomically(path: Path, data: bytes) -> None:
    """Writes ``path`` so that a crash leaves either the old or the new content:
    a temporary file, fsync, rename over ``path``, fsync of the directory.
    Raises ``OSError``."""
    temporary = temporary_path(path)
    fd = open_private(temporary, os.O_WRONLY | os.O_TRUNC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    fsync_dir(path.parent)


def replacement_mode(path: Path) -> int:
    """The mode for a new file that replaces ``path`` (one not private, such as the
    lb client's answers): the mode ``path`` has if it exists, else the one a plain
    ``open()`` would give (0666 less the umask). A temporary file is made 0600, so
    a replacement renamed from one must be given this mode explicitly.

    The umask can only be read by setting it: not for threaded programs."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0o077)
        os.umask(umask)
        return 0o666 & ~umask


def remove_temporary(path: Path) -> None:
    """Drops what a crash left of ``replace_atomically(path, ...)``: never renamed,
    so never part of the state."""
    with contextlib.suppress(FileNotFoundError):
        temporary_path(path).unlink()
