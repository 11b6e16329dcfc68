"""The catalog's journal: every record the catalog accepted is on disk before it
answers anything else, so that a SIGKILL loses none of them.

The state file (``catalog.persist``) is written every few seconds; what arrived
since its last save is in the journal: files ``journal.N`` in the state
directory, one record a line (its JSON, as ``/query.json`` and the state file
hold it), appended with one plain write(2) per batch of updates (a loop turn's
datagrams, one TCP update, the updates a host name was waited for). No fsync:
the page cache outlives the process, so a killed catalog loses nothing it
accepted; a power loss or a kernel crash loses what the kernel had not written
to the disk yet (docs/catalog.md).

Folding: each save of the state file starts a new journal file first
(``rotate``); once the state file holding everything of the files up to N is
durably in place, the saver deletes them. On start, the state file is loaded,
then every journal file is replayed in order (``replay``), each record heard when
its ``lastheardfrom`` says and dropped if its lifetime has passed since, as the
state file's records are. Replaying a file a save already folded (a crash between
the save and the deletion) gives the same records again: harmless.

Bounds: the files not folded yet past ``FOLD_BYTES`` force a save; they hold at
most ``MAX_BYTES`` and ``MAX_FILES`` files: beyond, while saves fail or lag, the
journal stops (saying so) until a save folded it. A line past ``MAX_LINE`` bytes
is damage.

Damage, on replay: a last line without its newline is a write cut short by a
crash, and is ignored (said in one line); any other line that is not a saved
record is skipped with a warning naming the file and the line, and the file, once
replayed, is renamed ``journal.N.damaged`` (said in one line) rather than folded:
the catalog never deletes what it could not read. The catalog does
not refuse to start: its records are soft state, announced again by their
services every minute or so, so a skipped record costs a minute, while a catalog
refusing to start would cost every service its listing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import orjson

from catalog.records import MALFORMED, RecordStore
from catalog.updates import MAX_UPDATE_BYTES
from netkit import files

log = logging.getLogger("catalog.journal")

JOURNAL_PREFIX = "journal."
FOLD_BYTES = 32 * 1024 * 1024
MAX_BYTES = 256 * 1024 * 1024
MAX_FILES = 64
# A record is an update of at most MAX_UPDATE_BYTES, parsed and serialized again
# (``1E5`` becomes ``100000.0``): well under this, whatever its sender wrote.
MAX_LINE = 16 * MAX_UPDATE_BYTES
MAX_DAMAGE_WARNINGS = 10  # a file's first damaged lines are named; the rest counted
DAMAGED_SUFFIX = ".damaged"  # a journal file with damaged lines, kept aside after replay


def journal_path(directory: Path, number: int) -> Path:
    return directory / f"{JOURNAL_PREFIX}{number}"


def journal_files(directory: Path) -> list[tuple[int, Path]]:
    """The journal files in ``directory`` by number, oldest first. Raises OSError."""
    found = []
    for entry in os.scandir(directory):
        number = entry.name[len(JOURNAL_PREFIX) :]
        if entry.name.startswith(JOURNAL_PREFIX) and number.isascii() and number.isdigit():
            found.append((int(number), Path(entry.path)))
    return sorted(found)


def drop_journals(directory: Path, upto: int) -> None:
    """Deletes the journal files up to number ``upto``, which a saved state file holds.
    Raises OSError."""
    for number, path in journal_files(directory):
        if number <= upto:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


class Journal:
    """Appends accepted records to the newest journal file, on the event loop.

    Opens a new file, numbered after those already there (``earlier``, to replay);
    ``OSError`` if it cannot.
    """

    def __init__(
        self, directory: Path, fold_bytes: int = FOLD_BYTES, max_bytes: int = MAX_BYTES
    ) -> None:
        self.directory = directory
        self.fold_bytes = fold_bytes
        self.max_bytes = max_bytes
        existing = journal_files(directory)
        self.earlier = [path for _, path in existing]
        # The bytes of every file not folded yet, by number, the one written included.
        self._sizes = {number: path.stat().st_size for number, path in existing}
        self.number = (existing[-1][0] if existing else 0) + 1
        self._fd = files.open_private(self.path, os.O_WRONLY | os.O_APPEND)
        self._sizes[self.number] = 0
        self._folded = 0  # the files up to this number are folded
        self._stopped = False  # full: MAX_BYTES not folded yet
        self._failing = False  # the last write failed
        self.unjournaled = 0  # records accepted but not journaled (stopped or failing)

    @property
    def path(self) -> Path:
        """The file being written."""
        return journal_path(self.directory, self.number)

    @property
    def unfolded(self) -> int:
        """Bytes in the journal files that no saved state file holds yet."""
        return sum(self._sizes.values())

    @property
    def wants_fold(self) -> bool:
        """Enough is journaled that a save should come now rather than at its time."""
        return self.unfolded >= self.fold_bytes

    def write(self, records: list[bytes]) -> None:
        """Appends ``records`` (JSON without newlines), a line each, in one write(2)."""
        # One join, ending in its newline: ``+ b"\n"`` would copy the batch again
        # into fresh memory, which cost three times the write itself.
        data = b"\n".join([*records, b""])
        if self.unfolded + len(data) > self.max_bytes:
            if not self._stopped:
                self._stopped = True
                log.error(
                    "the journal holds %d MiB that no state file save holds yet (saves fail "
                    "or lag); until one does, new updates are not journaled: a crash before "
                    "the next save would lose them",
                    self.unfolded >> 20,
                )
            self.unjournaled += len(records)
            return
        size = self._sizes[self.number]
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            # Half a batch would glue the next one to half a line: cut it off.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            self.unjournaled += len(records)
            if not self._failing:
                self._failing = True
                log.error(
                    "cannot write the journal %s (%s); until it can, new updates are kept "
                    "by the state file saves only: a crash before the next save would lose them",
                    self.path,
                    exc.strerror or exc,
                )
            return
        self._sizes[self.number] = size + len(data)
        if self._stopped or self._failing:
            log.warning(
                "the journal %s is written again (%d updates since were not journaled)",
                self.path,
                self.unjournaled,
            )
            self._stopped = self._failing = False
            self.unjournaled = 0

    def rotate(self) -> int:
        """Starts a new file for what comes next; returns the number of the last file
        a snapshot of the records taken now holds entirely (for ``Saver.submit``)."""
        if not self._sizes[self.number] or len(self._sizes) >= MAX_FILES:
            return self.number - 1  # nothing in it yet, or enough files: keep writing it
        try:
            fd = files.open_private(
                journal_path(self.directory, self.number + 1), os.O_WRONLY | os.O_APPEND
            )
        except OSError as exc:
            log.error("cannot start a new journal file (%s); still writing %s", exc, self.path)
            return self.number - 1
        os.close(self._fd)
        self._fd = fd
        self.number += 1
        self._sizes[self.number] = 0
        return self.number - 1

    def folded(self, upto: int) -> None:
        """The journal files up to number ``upto`` are in a saved state file (and gone)."""
        if upto <= self._folded:
            return
        self._folded = upto
        for number in [number for number in self._sizes if number <= upto]:
            del self._sizes[number]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def journal_lines(
    file: BinaryIO, limit: int = MAX_LINE
) -> Iterator[tuple[int, bytes | None, bool]]:
    """Each line of ``file``: its number (from 1), its bytes without the newline (None
    when longer than ``limit``: they are skipped, never held), and whether it ended
    with a newline (only the last line may not)."""
    number = 0
    while chunk := file.readline(limit + 1):
        number += 1
        if chunk.endswith(b"\n"):
            yield number, chunk[:-1], True
        elif len(chunk) <= limit:
            yield number, chunk, False  # the file ends mid-line
            return
        else:
            while chunk and not chunk.endswith(b"\n"):
                chunk = file.readline(limit + 1)
            yield number, None, bool(chunk)


def replay(store: RecordStore, paths: list[Path]) -> Counter[str]:
    """Gives ``store`` the records of the journal files ``paths``, oldest first, after
    the state file's. Returns how many lines were kept, expired, refused, damaged
    and torn; never raises for what it reads."""
    counts: Counter[str] = Counter()
    if not paths:
        return counts
    now = store.clock()
    for path in paths:
        try:
            with open(path, "rb") as file:
                damaged = _replay_file(store, path, file, now, counts)
        except OSError as exc:
            log.error("cannot read the journal %s (%s); skipped it", path, exc.strerror or exc)
            damaged = 1
        if damaged:
            _set_aside(path)
    dropped = [
        f"{counts[outcome]} {wording}"
        for outcome, wording in (
            ("expired", "expired"),
            ("refused", "refused: the catalog is full"),
            ("damaged", "damaged lines skipped"),
            ("torn", "torn last lines ignored"),
        )
        if counts[outcome]
    ]
    log.info(
        "replayed %d records from %d journal files in %s%s",
        counts["kept"], len(paths), paths[0].parent, f" ({', '.join(dropped)})" if dropped else "",
    )  # fmt: skip
    return counts


def _replay_file(
    store: RecordStore, path: Path, file: BinaryIO, now: float, counts: Counter[str]
) -> int:
    """Replays one file; returns how many of its lines were damaged."""
    damaged = 0
    for number, line, complete in journal_lines(file):
        if not complete:
            counts["torn"] += 1
            log.warning(
                "journal %s line %d: ignored its torn last line (%s without an end of "
                "line): a write cut short by a crash",
                path, number, f"{len(line)} bytes" if line is not None else "too long",
            )  # fmt: skip
            break
        problem = None
        if line is None:
            problem = f"longer than {MAX_LINE} bytes"
        else:
            try:
                outcome = store.restore(orjson.loads(line), now)
            except orjson.JSONDecodeError as exc:
                problem = f"not valid JSON: {exc}"
            else:
                if outcome == MALFORMED:
                    problem = "not a record: an object with a lastheardfrom"
                else:
                    counts[outcome] += 1
        if problem is not None:
            damaged += 1
            if damaged <= MAX_DAMAGE_WARNINGS:
                log.warning("journal %s line %d is damaged (%s); skipped it", path, number, problem)
    if damaged > MAX_DAMAGE_WARNINGS:
        log.warning(
            "journal %s: %d more damaged lines skipped", path, damaged - MAX_DAMAGE_WARNINGS
        )
    counts["damaged"] += damaged
    return damaged


def _set_aside(path: Path) -> None:
    """Moves a journal file with lines it could not read out of the journal's way
    (no longer ``journal.N``, so no fold deletes it), kept for whoever looks: what
    the catalog cannot read may still be someone's data."""
    aside = path.with_name(path.name + DAMAGED_SUFFIX)
    number = 1
    while aside.exists():
        number += 1
        aside = path.with_name(f"{path.name}{DAMAGED_SUFFIX}.{number}")
    try:
        os.replace(path, aside)
    except OSError as exc:
        log.error(
            "cannot move the damaged journal %s aside (%s); it will be deleted by the next save",
            path, exc.strerror or exc,
        )  # fmt: skip
        return
    log.warning("journal %s had lines that could not be read: kept it as %s", path, aside)
