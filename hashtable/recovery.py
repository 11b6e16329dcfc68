"""Recovery: the table and its sessions back from the checkpoint and the logs.

Start-up *is* recovery (crash-only). The rules (docs/storage.md, "Recovery"):

- every line is checked against its checksum; a damaged one stops start-up
  with its file and line, unless the user asked for ``repair``;
- the records form one sequence without gaps from the checkpoint on
  (``lsn`` 1, 2, 3, ...): each log's header says where it starts, so a log
  whose first lines were deleted, or one that does not continue the
  checkpoint, is refused;
- how a log ends (``hashtable.logreader``) tells a crash from a cut.

With ``repair``, everything intact up to the first damage is kept, the
rest is listed (``dropped``), and ``rewrite`` starts the directory afresh:
the files it replaces are kept in ``repaired/STAMP/``. A directory of the
previous version (format 1) is rewritten the same way, without loss.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hashtable import checkpoint as checkpoints
from hashtable.checkpoint import Checkpoint
from hashtable.logfile import create_log
from hashtable.logreader import CLOSED, CRASHED, CUT, DAMAGED, LogReader, log_format
from hashtable.request import MUTATIONS, Request, numbering_problem, validate
from hashtable.storage import CHECKPOINT, LOG, OLD_LOG, REPAIRS, RecoveryError
from netkit import files

log = logging.getLogger("hashtable.recovery")

# (request, invalid, refused) -> the outcome; Database._apply, live and in replay alike.
Apply = Callable[[Request, "str | None", "list[str] | None"], Any]


@dataclass
class Recovered:
    applied: dict[str, int]  # per origin, the last lsn applied
    covered: dict[str, int]  # per origin, the last lsn the checkpoint holds
    replayed: int  # records applied from the logs
    log_end: int | None  # where table.txn's records end; None: it needs a new one
    preallocating: bool  # whether table.txn was being preallocated when it ended
    rewrite: bool  # write a new checkpoint and a new log before serving
    dropped: list[str] = field(default_factory=list)  # with repair: what was not kept
    replaced: list[Path] = field(default_factory=list)  # files the rewrite replaces


class Recovery:
    """One recovery of ``directory``: ``read_checkpoint()``, load it, then ``replay()``."""

    def __init__(self, directory: Path, origin: str, *, repair: bool = False) -> None:
        self.directory = directory
        self.origin = origin
        self.repair = repair
        self.checkpoint: Checkpoint | None = None

    def read_checkpoint(self) -> Checkpoint | None:
        self.checkpoint = checkpoints.read_checkpoint(self.directory, repair=self.repair)
        return self.checkpoint

    def replay(self, apply: Apply) -> Recovered:
        checkpoint = self.checkpoint
        covered = dict(checkpoint.applied) if checkpoint else {}
        format1 = checkpoint is None or checkpoint.logs == 1
        readers = [
            LogReader(self.directory / name, repair=self.repair, format1=format1)
            for name in (OLD_LOG, LOG)
        ]
        dropped = list(checkpoint.dropped) if checkpoint else []
        if checkpoint and checkpoint.dropped and not checkpoint.applied:
            covered = self._covered_from_logs(readers)
        self._check_log_exists(checkpoint, readers, covered, dropped)
        applied = dict(covered)
        replayed, broken = 0, False
        for reader in readers:
            if broken:
                if reader.exists:
                    dropped.append(f"{reader.path}: all of it, since records before it are lost")
                continue
            try:
                replayed += self._replay_file(reader, apply, covered, applied)
            except RecoveryError as error:
                if not (self.repair and error.repairable):
                    raise
                dropped.append(f"{error}; the records from there on")
                broken = True
                continue
            broken = self._judge_end(reader, dropped)
        txn = readers[1]
        versions = {reader.version for reader in readers if reader.exists}
        rewrite = bool(dropped) or 1 in versions or checkpoint is None or checkpoint.version == 1
        replaced = [self.directory / n for n in (CHECKPOINT, OLD_LOG, LOG)]
        return Recovered(
            applied=applied,
            covered=covered,
            replayed=replayed,
            log_end=txn.end.records_end if txn.exists and txn.version == 2 else None,
            preallocating=txn.preallocating,
            rewrite=rewrite,
            dropped=dropped,
            replaced=[path for path in replaced if path.exists()] if self.repair else [],
        )

    def _covered_from_logs(self, readers: list[LogReader]) -> dict[str, int]:
        """The checkpoint's header is lost (repair): it covered what precedes the logs."""
        for reader in readers:
            first = _header_first(reader.path)
            if first is not None:
                return {self.origin: first - 1}
        return {}

    def _check_log_exists(
        self,
        checkpoint: Checkpoint | None,
        readers: list[LogReader],
        covered: dict[str, int],
        dropped: list[str],
    ) -> None:
        if checkpoint is None or checkpoint.logs == 1 or any(r.exists for r in readers):
            return
        # A checkpoint is written only after the log that continues it exists.
        lsn = covered.get(self.origin, 0)
        reason = (
            f"missing: {CHECKPOINT} covers lsn {lsn}, and the log that continues it is "
            f"gone; the records after lsn {lsn}, if there were any, are lost"
        )
        if not self.repair:
            raise RecoveryError(self.directory / LOG, None, reason, repairable=True)
        dropped.append(f"{self.directory / LOG}: {reason}")

    def _replay_file(
        self,
        reader: LogReader,
        apply: Apply,
        covered: dict[str, int],
        applied: dict[str, int],
    ) -> int:
        replayed = 0
        started = False
        for number, record in reader.records():
            if not started:
                started = True
                self._check_start(reader, number, record, applied)
            replayed += self._replay(reader.path, number, record, covered, applied, apply)
        if not started and reader.first is not None:
            self._check_start(reader, 2, {"lsn": reader.first}, applied)
        return replayed

    def _check_start(
        self, reader: LogReader, number: int, record: dict[str, Any], applied: dict[str, int]
    ) -> None:
        """A log's header says where it starts: it must continue what came before."""
        if reader.first is None:
            return
        lsn = record.get("lsn")
        if lsn != reader.first:
            raise RecoveryError(
                reader.path,
                number,
                f"the first record has lsn {lsn} but the header says the file starts at "
                f"{reader.first}: its first records were removed",
                repairable=True,
            )
        before = applied.get(self.origin, 0)
        if reader.first > before + 1:
            raise RecoveryError(
                reader.path,
                1,
                f"the file starts at lsn {reader.first} but the records before it end at "
                f"lsn {before}: records {before + 1} to {reader.first - 1} are missing",
                repairable=True,
            )

    def _replay(
        self,
        path: Path,
        number: int,
        record: dict[str, Any],
        covered: dict[str, int],
        applied: dict[str, int],
        apply: Apply,
    ) -> int:
        """Re-executes one log record unless the checkpoint holds it; returns 1 if applied."""
        origin, lsn = record.get("origin"), record.get("lsn")
        if not isinstance(origin, str) or type(lsn) is not int:
            raise RecoveryError(path, number, "a log record needs 'origin' and 'lsn'")
        if lsn <= covered.get(origin, 0):
            return 0
        expected = applied.get(origin, 0) + 1
        if lsn != expected:
            raise RecoveryError(
                path,
                number,
                f"lsn {lsn} where {expected} was expected: records are missing",
                repairable=True,
            )
        request = Request(
            record.get("method"),
            key=record.get("key"),
            value=record.get("value"),
            client=record.get("client"),
            seq=record.get("seq"),
            ack=record.get("ack"),
            version=record.get("version"),
        )
        invalid, refused = record.get("invalid"), record.get("refused")
        problem = _record_problem(request, invalid, refused)
        if problem:
            raise RecoveryError(path, number, f"not a valid log record: {problem}")
        apply(request, invalid, refused)
        applied[origin] = lsn
        return 1

    def _judge_end(self, reader: LogReader, dropped: list[str]) -> bool:
        """Says how the file ended; True when nothing after it can be applied."""
        end = reader.end
        if not reader.exists:
            return False
        if reader.path.name == OLD_LOG and end.kind not in (CLOSED, DAMAGED):
            # A rotated log was closed before its rename: anything else is a cut.
            reason = end.message or "it does not end with its close record: it was cut short"
            if reader.version == 1 and end.kind == CRASHED and not end.dropped:
                return False
            if not self.repair:
                raise RecoveryError(reader.path, end.line or None, reason, repairable=True)
            dropped.append(f"{reader.path}: {reason}")
            return True
        if end.kind == CUT:
            if not self.repair:
                raise RecoveryError(reader.path, end.line, end.message or "cut", repairable=True)
            dropped.append(f"{reader.path}: {end.message}")
            return False
        if end.kind == DAMAGED:
            dropped.append(f"{reader.path}, {end.message}; the records from there on")
            return True
        if end.message:
            kept = _keep_dropped(reader.path, end.records_end) if end.dropped else None
            where = f"; they are kept in {kept}" if kept else ""
            log.warning("%s: %s%s", reader.path, end.message, where)
        return False


def _keep_dropped(path: Path, start: int) -> Path | None:
    """Copies what follows the records of ``path`` (up to its last non-zero byte) to
    ``repaired/STAMP/NAME.dropped`` before the log is reopened, which zeroes it: a
    crash's torn write and a damaged sector look alike, and the second would hold
    acknowledged records. None (with a warning) when it cannot."""
    aside = path.parent / REPAIRS / time.strftime("%Y%m%dT%H%M%S")
    target = aside / f"{path.name}.dropped"
    try:
        files.make_directory(aside)
        fd = files.open_private(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(fd, "wb") as out, open(path, "rb") as source:
            source.seek(start)
            written = last = 0
            while chunk := source.read(1 << 20):
                out.write(chunk)
                written += len(chunk)
                if stripped := chunk.rstrip(b"\0"):
                    last = written - len(chunk) + len(stripped)
            out.truncate(last)
            out.flush()
            os.fsync(out.fileno())
    except OSError as error:
        log.warning("cannot keep the dropped bytes of %s in %s: %s", path, target, error)
        return None
    return target


def _record_problem(request: Request, invalid: Any, refused: Any) -> str | None:
    if not isinstance(request.method, str) or request.method not in MUTATIONS:
        return f"method {request.method!r} is not a mutation"
    if invalid is None and refused is None:
        return validate(request)
    if invalid is not None and (not isinstance(invalid, str) or request.client is None):
        return "'invalid' must be a message, in a record with a client"
    if refused is not None and not (
        type(refused) is list
        and len(refused) == 2
        and all(type(part) is str for part in refused)
        and request.client is not None
        and invalid is None
    ):
        return "'refused' must be [error, message], in a record with a client"
    return numbering_problem(request)  # only its number was recorded


def _header_first(path: Path) -> int | None:
    reader = LogReader(path, repair=True, format1=False)
    for _ in reader.records():
        break
    return reader.first


def rewrite(
    directory: Path,
    recovered: Recovered,
    origin: str,
    write: Callable[[int], None],
) -> tuple[int, bool]:
    """Starts the directory afresh from the recovered state: a new checkpoint
    (``write(logs)`` writes it) and a new, empty log; returns ``create_log``'s result.

    With repair, the files it replaces are first linked into ``repaired/STAMP/``;
    every step leaves files that recover the same table if a crash stops it."""
    if recovered.replaced:
        aside = directory / REPAIRS / time.strftime("%Y%m%dT%H%M%S")
        files.make_directory(aside)
        for path in recovered.replaced:
            os.link(path, aside / path.name)
        files.fsync_dir(aside)
        log.warning("repair: the files it replaced are kept in %s", aside)
    format1_left = any(log_format(directory / name) == 1 for name in (OLD_LOG, LOG))
    # While a log of the previous format is still there, the checkpoint says so.
    write(1 if format1_left else 2)
    made = create_log(directory, origin, recovered.applied.get(origin, 0) + 1)
    (directory / OLD_LOG).unlink(missing_ok=True)
    files.fsync_dir(directory)
    if format1_left:
        write(2)
    return made
