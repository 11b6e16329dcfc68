"""Files that must survive crashes: atomic replacement and directory locks.

Shared by the hash table's storage engine and the catalog's state directory.
Both keep a directory that exactly one process may use at a time (a lock file
held with ``flock``, so that it is released however the process ends), and
small files that a crash must leave either old or new, never half-written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
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
    """Creates ``directory`` (and its parents) if needed, durably."""
    if directory.is_dir():
        return
    directory.mkdir(mode=mode, parents=True)
    fsync_dir(directory.parent)


def lock_directory(directory: Path, lock_name: str, wait: float = 0.0) -> int:
    """Creates ``directory`` if needed and locks it; returns the lock's descriptor
    (closing it releases the lock, as does the process's end).

    Waits up to ``wait`` seconds for another holder to let go. Raises
    ``DirectoryLocked`` when it does not, ``OSError`` when the directory cannot
    be used. The lock file holds the holder's pid, for the message.
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
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def temporary_path(path: Path) -> Path:
    """Where ``replace_atomically`` writes ``path`` before the rename."""
    return path.with_name(path.name + TEMPORARY_SUFFIX)


def replace_atomically(path: Path, data: bytes) -> None:
    """Writes ``path`` so that a crash leaves either the old or the new content:
    a temporary file, fsync, rename over ``path``, fsync of the directory.
    Raises ``OSError``."""
    temporary = temporary_path(path)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    fsync_dir(path.parent)


def remove_temporary(path: Path) -> None:
    """Drops what a crash left of ``replace_atomically(path, ...)``: never renamed,
    so never part of the state."""
    with contextlib.suppress(FileNotFoundError):
        temporary_path(path).unlink()
