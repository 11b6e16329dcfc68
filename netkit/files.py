"""Files that must survive crashes: atomic replacement and directory locks.

Shared by the hash table's storage engine and the catalog's state directory.
Both keep a directory that exactly one process may use at a time (a lock file
held with ``flock``, so that it is released however the process ends), and
small files that a crash must leave either old or new, never half-written.
Both are private to their owner whatever the umask: a directory the service
creates is 0700, the files it writes 0600. A directory that already exists is
the user's: it is never chmod'ed, and it is used only if it is fit
(``claim_directory``): not writable by other users, and empty or already
holding the service's files (so that ``/`` or a home folder given by mistake is
refused, not filled with a table and every file in it made private).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("netkit.files")

TEMPORARY_SUFFIX = ".tmp"
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class DirectoryRefused(OSError):
    """An existing directory that is not fit to keep the service's files; the message
    says why and what to do (callers put the directory's name before it)."""


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
    the umask, durably. What exists already is left as it is: it is the user's, and
    its mode may matter to others (``/tmp``'s 1777, a shared folder's 0755)."""
    if directory.is_dir():
        return
    missing = [directory, *(p for p in directory.parents if not p.is_dir())]
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by someone else
            os.mkdir(path, mode)
            os.chmod(path, mode)  # mkdir's mode is cut by the umask; this is not
            fsync_dir(path.parent)
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is not a directory")


def claim_directory(directory: Path, ours: Callable[[str], bool], what: str) -> None:
    """Makes ``directory`` (0700) if it does not exist; else checks it is fit for the
    files of ``what`` (e.g. "a hash table"), whose names ``ours`` tells. Raises
    ``DirectoryRefused`` when it is not, ``OSError`` when it cannot be read.

    Refused: a directory others can write (they could plant or replace files the
    service then trusts, sticky bit or not), and a non-empty one holding none of
    the service's files (a folder of the user's given by mistake). One others can
    only read is used with a warning: the files are still 0600, but their names
    and sizes show."""
    if not directory.is_dir():
        make_directory(directory)
        return
    names = os.listdir(directory)
    if names and not any(ours(name) for name in names):
        example = sorted(names)[0]
        raise DirectoryRefused(
            f"it already holds other files ({len(names)}, e.g. {example!r}) and none of "
            f"{what}'s; give an empty or new directory (it is created, private)"
        )
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o022:
        raise DirectoryRefused(
            f"other users can write in it (mode {mode:04o}), so they could plant or replace "
            f"{what}'s files; give a directory only you can write (chmod go-w, or a new one)"
        )
    if mode & 0o077:
        log.warning(
            "%s can be read by other users (mode %04o): its files are private (0600) but "
            "their names and sizes show; chmod 700 %s to hide them",
            directory,
            mode,
            directory,
        )


def make_files_private(directory: Path, ours: Callable[[str], bool]) -> None:
    """Tightens to ``PRIVATE_FILE`` the service's own regular files directly in
    ``directory`` (those an earlier version, or another umask, left readable by
    others); a file ``ours`` does not name is someone else's, and left alone."""
    for entry in os.scandir(directory):
        if not ours(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        if stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode) & ~PRIVATE_FILE:
            os.chmod(entry.path, PRIVATE_FILE)


def lock_directory(
    directory: Path,
    lock_name: str,
    ours: Callable[[str], bool],
    what: str,
    wait: float = 0.0,
) -> int:
    """Claims ``directory`` for the files of ``what`` (``claim_directory``: created
    if needed) and locks it; returns the lock's descriptor (closing it releases
    the lock, as does the process's end).

    Waits up to ``wait`` seconds for another holder to let go. Raises
    ``DirectoryLocked`` when it does not, ``DirectoryRefused`` or ``OSError``
    when the directory cannot be used. The lock file holds the holder's pid, for
    the message. Once locked, the service's own files are ``PRIVATE_FILE``.
    """
    claim_directory(directory, ours, what)
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
        make_files_private(directory, ours)
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
