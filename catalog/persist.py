"""The catalog's state directory: its records on disk, so that a restart loses none.

``STATE_FILE`` holds a ``/query.json`` reply, written atomically (temporary
file, fsync, rename, fsync of the directory): a crash leaves the previous
version or the new one, never a mix. Writes happen on a background thread
(``Saver``) because an fsync can stall for a long time on a busy disk, and the
event loop must not. What was accepted since the last save is in the journal
files beside it (``catalog.journal``), which each save folds. A lock file keeps
two catalogs from sharing a directory.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from catalog.journal import JOURNAL_PREFIX, drop_journals
from catalog.records import RecordStore
from netkit import files

log = logging.getLogger("catalog.persist")

STATE_FILE = "records.json"
LOCK_FILE = "lock"


def _is_own_file(name: str) -> bool:
    """Whether the catalog makes files of this name (netkit.files.claim_directory)."""
    return name in (STATE_FILE, LOCK_FILE) or name.startswith((STATE_FILE, JOURNAL_PREFIX))


class StateDirError(RuntimeError):
    """The state directory cannot be used; the message says why."""


def default_state_dir(port: int) -> Path:
    """``$XDG_STATE_HOME/dht-catalog/PORT`` (``~/.local/state`` by default): one
    directory per port, so that catalogs on different ports keep apart."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "dht-catalog" / str(port)


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path / STATE_FILE
        self._lock_fd: int | None = None

    def open(self) -> None:
        """Creates and locks the directory; ``StateDirError`` if impossible or in use."""
        try:
            self._lock_fd = files.lock_directory(self.path, LOCK_FILE, _is_own_file, "a catalog")
        except files.DirectoryLocked:
            raise StateDirError(
                f"state directory {self.path} is in use by another catalog"
            ) from None
        except OSError as exc:
            raise StateDirError(
                f"cannot use state directory {self.path}: {exc.strerror or exc}"
            ) from None
        files.remove_temporary(self.file)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def read(self) -> bytes | None:
        """The saved records, or None when there are none yet."""
        try:
            return self.file.read_bytes()
        except FileNotFoundError:
            return None

    def set_aside(self) -> Path:
        """Moves an unreadable state file out of the way (it is kept, not deleted)."""
        aside = self.path / f"{STATE_FILE}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
        os.replace(self.file, aside)
        return aside

    def write(self, data: bytes) -> None:
        """Replaces the state file with ``data`` atomically and durably. Raises OSError."""
        files.replace_atomically(self.file, data)


class Saver:
    """Writes snapshots on a background thread; only the newest pending one is written.

    Once a snapshot is in place, the journal files it holds everything of are
    deleted (``catalog.journal``) and ``saved_upto`` says up to which number.
    """

    def __init__(self, state: StateDir) -> None:
        self.state = state
        self._pending: tuple[bytes, int] | None = None
        self._busy = False
        self._stopping = False
        self.last_error: str | None = None
        self.saved_upto = 0  # the journal files up to this number are folded and deleted
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="catalog-saver", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """A snapshot is waiting or being written."""
        return self._busy

    def submit(self, snapshot: bytes, folds: int = 0) -> None:
        """Writes ``snapshot``, which holds every record of the journal files up to
        number ``folds``: they are deleted once it is in place."""
        with self._ready:
            self._pending = (snapshot, folds)
            self._busy = True
            self._ready.notify()

    def close(self, final: bytes | None = None, folds: int = 0, timeout: float = 30.0) -> bool:
        """Writes ``final`` (if given; as ``submit``) and stops; True if it was written."""
        with self._ready:
            if final is not None:
                self._pending = (final, folds)
            self._stopping = True
            self._ready.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive() and self.last_error is None

    def _run(self) -> None:
        while True:
            with self._ready:
                while self._pending is None and not self._stopping:
                    self._ready.wait()
                pending, self._pending = self._pending, None
                if pending is None:
                    return
            snapshot, folds = pending
            try:
                self.state.write(snapshot)
                self.last_error = None
            except OSError as exc:
                self.last_error = str(exc)
                log.error("could not save records to %s: %s", self.state.file, exc)
            else:
                self._fold(folds)
            with self._ready:
                self._busy = self._pending is not None

    def _fold(self, upto: int) -> None:
        try:
            drop_journals(self.state.path, upto)
        except OSError as exc:
            log.warning(
                "could not delete the journal files saved in %s (%s); a restart replays "
                "them again, which gives the same records",
                self.state.file,
                exc.strerror or exc,
            )
        self.saved_upto = max(self.saved_upto, upto)


def restore(store: RecordStore, state: StateDir) -> None:
    """Loads the saved records into ``store``. A state file that cannot be read is
    set aside with a clear message and the catalog starts empty: it never crashes."""
    try:
        data = state.read()
    except OSError as exc:
        log.error("cannot read %s (%s); starting empty", state.file, exc.strerror or exc)
        return
    if data is None:
        log.info("no saved records in %s; starting empty", state.path)
        return
    try:
        kept, dropped = store.load(data)
    except ValueError as exc:
        try:
            aside = state.set_aside()
        except OSError as move_error:
            aside = f"nowhere ({move_error.strerror}): it will be overwritten"
        log.error(
            "state file %s is unreadable (%s); moved it to %s and starting empty",
            state.file,
            exc,
            aside,
        )
        return
    log.info(
        "restored %d records from %s (%d expired or invalid dropped)", kept, state.file, dropped
    )
