"""Reading a log file for recovery, and telling how it ended.

A log file's records end at the end of the file or at its first NUL byte
(JSON text never holds a raw NUL; a running server keeps zeros preallocated
after its records). How the file ends tells what happened to it:

- ``CLOSED``: its last record is ``{"closed": lsn}`` (a clean stop or a
  rotation), perhaps followed by zeros.
- ``CRASHED``: zeros follow the records, as a running server leaves them. A
  partial line just before the zeros was being written when the process
  died; it was not acknowledged, since the server syncs a record and all those
  before it before it replies. Data after the zeros, starting on a sector
  boundary, is what a crash can leave of an unsynced write.
- ``CUT``: the file ends right after a record, or inside one, with no close
  record and no zeros, while the server was preallocating: something cut it
  short (``truncate``, a deleted last line) and what followed is lost.
- ``UNKNOWN``: the same ending while the server was writing without
  preallocation (a full disk): a crash cannot be told from a cut.
- ``DAMAGED``: a line whose checksum does not match, a zero byte inside a
  line. Without repair, ``RecoveryError`` names the line.

Format 1 files (the previous version: no header, no seals) are read as that
version did, with messages that do not claim more than it can know.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from hashtable.logfile import LOG_FORMAT, LOG_VERSION
from hashtable.sealing import is_sealed_shape, unseal
from hashtable.storage import RecoveryError

CLOSED, CRASHED, CUT, UNKNOWN, DAMAGED = "closed", "crashed", "cut", "unknown", "damaged"
SECTOR = 512  # the unit a disk persists whole: a torn write loses whole sectors
_CHUNK = 1 << 20


@dataclass
class LogEnd:
    kind: str
    line: int  # the last line that was read whole (0: none)
    records_end: int  # the offset just after that line: where appending resumes
    dropped: int  # bytes after records_end that are not zeros, dropped
    message: str | None  # what to tell the operator, if anything


def format_of(first_line: bytes) -> int:
    """The format of a log whose first line is ``first_line``: format 2 begins with a
    sealed header; anything else is read, if at all, as format 1 (unsealed lines)."""
    return LOG_VERSION if is_sealed_shape(first_line) else 1


def log_format(path: Path) -> int | None:
    """The format of the log at ``path``, or None when there is none."""
    try:
        with open(path, "rb") as file:
            return format_of(file.readline())
    except FileNotFoundError:
        return None


class LogReader:
    """Reads one log file; iterate ``records()``, then look at ``end``.

    ``records()`` yields ``(line number, record)`` for the mutation records
    (those with an ``lsn``); control records are taken in here. With
    ``repair``, damage stops the reading (``end.kind`` is ``DAMAGED``) instead
    of raising. ``format1`` allows a file without a header."""

    def __init__(self, path: Path, *, repair: bool = False, format1: bool = True) -> None:
        self.path = path
        self.repair = repair
        self.format1 = format1
        self.exists = path.exists()
        self.version: int | None = None
        self.first: int | None = None  # the header's first lsn
        self.closed_lsn: int | None = None
        self.preallocating = True
        self.end = LogEnd(CLOSED, 0, 0, 0, None)

    def records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            file = open(self.path, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            return
        except OSError as error:
            raise RecoveryError(self.path, None, f"cannot read: {error}") from None
        with file:
            first = file.readline()
            file.seek(0)
            if format_of(first) == LOG_VERSION:
                self.version = LOG_VERSION
                yield from self._format2(file)
            elif self.format1:
                self.version = 1
                yield from self._format1(file)
            elif not first.strip(b"\0"):
                self._damage(1, "the file has no header: it was emptied, or zeroed")
            else:
                self._damage(1, "not a log header (a line without its checksum)")

    # ---- format 2 -------------------------------------------------------------------

    def _format2(self, file: IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
        offset = number = 0
        last_closes = False
        for number, line in enumerate(file, 1):
            nul = line.find(b"\0")
            if nul >= 0:
                self._zeros(file, number, line[:nul], offset, offset + nul)
                return
            text = unseal(line)
            if text is None:
                if not line.endswith(b"\n"):
                    self._eof_inside(number, line, offset)
                elif is_sealed_shape(line):
                    self._damage(number, "its checksum does not match its contents", offset)
                else:
                    self._damage(number, "a line without its checksum", offset)
                return
            record = _loads(text)
            if number == 1:
                if not self._header(record):
                    return
            elif type(record) is dict and "lsn" in record:
                yield number, record
                last_closes = False
            elif type(record) is dict and type(record.get("closed")) is int:
                self.closed_lsn = record["closed"]
                last_closes = True
            elif type(record) is dict and type(record.get("preallocate")) is bool:
                self.preallocating = record["preallocate"]
            else:
                self._damage(number, "neither a record nor a control line", offset)
                return
            offset += len(line)
        self._ended(number, offset, last_closes)

    def _header(self, record: Any) -> bool:
        if (
            type(record) is dict
            and record.get("log") == LOG_FORMAT
            and record.get("version") == LOG_VERSION
            and type(record.get("first")) is int
            and record["first"] >= 1
        ):
            self.first = record["first"]
            return True
        self._damage(1, "not a log header")
        return False

    def _ended(self, number: int, offset: int, last_closes: bool) -> None:
        """The file ended right after line ``number``."""
        if last_closes or number <= 1:  # closed; or new, made whole with its header
            self.end = LogEnd(CLOSED, number, offset, 0, None)
        elif self.preallocating:
            self.end = LogEnd(
                CUT,
                number,
                offset,
                0,
                f"the file ends after line {number} without its close record and without "
                "the zeros a running server keeps after its records: it was cut short "
                "(truncated, or its last lines deleted); records after line "
                f"{number}, if there were any, are lost",
            )
        else:
            self.end = LogEnd(
                UNKNOWN,
                number,
                offset,
                0,
                f"the file ends after line {number} without its close record, and the "
                "server was writing without preallocation: a crash cannot be told "
                f"from a cut; if it was cut, the records after line {number} are lost",
            )

    def _eof_inside(self, number: int, line: bytes, offset: int) -> None:
        """The file ends inside line ``number``, with no zeros after it."""
        if self.preallocating:
            self.end = LogEnd(
                CUT,
                number - 1,
                offset,
                len(line),
                f"the file ends inside line {number} ({len(line)} bytes of it) with no "
                "zeros after it: it was cut short (a running server keeps zeros after "
                f"its records); what followed line {number - 1} is lost",
            )
        else:
            self.end = LogEnd(
                UNKNOWN,
                number - 1,
                offset,
                len(line),
                f"dropping the incomplete line {number} ({len(line)} bytes): the server "
                "was writing without preallocation, so this is either a write "
                "interrupted by a crash (never acknowledged) or a file cut short",
            )

    def _zeros(self, file: IO[bytes], number: int, partial: bytes, offset: int, at: int) -> None:
        """A NUL byte at offset ``at``, inside line ``number`` (``partial`` before it)."""
        if number == 1:
            self._damage(1, "a zero byte inside the header")
            return
        file.seek(at)
        resume = _next_nonzero(file, at)
        if resume is None:
            message = None
            if partial:
                message = (
                    f"dropping line {number} ({len(partial)} bytes), incomplete before the "
                    "zeros a running server keeps after its records: a write interrupted "
                    "by a crash, never acknowledged (the server replies only after its "
                    "records are synced)"
                )
            self.end = LogEnd(CRASHED, number - 1, offset, len(partial), message)
            return
        if resume % SECTOR or _closes_after(file, resume):
            where = f"a zero byte inside line {number} (offset {at})"
            self._damage(number, f"{where}, and data after it", offset)
            return
        file.seek(resume)
        rest = whole = 0
        carry = b""  # a line begun in the chunk before
        while chunk := file.read(_CHUNK):
            rest += len(chunk.rstrip(b"\0"))
            lines = (carry + chunk).split(b"\n")
            carry = lines.pop()[-_MAX_CARRY:]  # the zeros after the last line: no record
            whole += sum(unseal(line.strip(b"\0") + b"\n") is not None for line in lines)
        sealed = f", {whole} of them whole, sealed records" if whole else ""
        self.end = LogEnd(
            CRASHED,
            number - 1,
            offset,
            len(partial) + rest,
            f"dropping {len(partial) + rest} bytes after the records end at line {number}"
            f"{sealed}: they follow {resume - at} zero bytes, on a sector boundary, which is "
            "what a crash leaves of a write that was never synced (so never acknowledged); "
            "but damage to a synced sector looks the same",
        )

    # ---- format 1 -------------------------------------------------------------------

    def _format1(self, file: IO[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
        offset = number = 0
        for number, line in enumerate(file, 1):
            nul = line.find(b"\0")
            body = line[:nul] if nul >= 0 else line
            record = _loads(body) if body.endswith(b"\n") else None
            if record is None:
                if nul < 0 and line.endswith(b"\n"):
                    self._damage(number, "not valid JSON", offset)
                    return
                if nul >= 0:
                    file.seek(offset + nul)
                    dropped = len(body) + sum(
                        len(c.strip(b"\0")) for c in iter(lambda: file.read(_CHUNK), b"")
                    )
                else:
                    dropped = len(line)
                message = None
                if dropped:
                    message = (
                        f"dropping {dropped} bytes after line {number - 1}: a write "
                        "interrupted by a crash, or damage (format 1 cannot tell)"
                    )
                self.end = LogEnd(CRASHED, number - 1, offset, dropped, message)
                return
            if type(record) is not dict:
                self._damage(number, "a log record must be a JSON object", offset)
                return
            yield number, record
            offset += len(body)
            if nul >= 0:
                self.end = LogEnd(CRASHED, number, offset, 0, None)
                return
        self.end = LogEnd(CLOSED, number, offset, 0, None)

    # ---- damage ---------------------------------------------------------------------

    def _damage(self, number: int, reason: str, offset: int = 0) -> None:
        if not self.repair:
            raise RecoveryError(self.path, number, reason, repairable=True)
        self.end = LogEnd(DAMAGED, number - 1, offset, 0, f"line {number}: {reason}")


_MAX_CARRY = 1 << 24  # bytes of an unfinished line kept while counting records


def _next_nonzero(file: IO[bytes], at: int) -> int | None:
    """The offset of the first byte after ``at`` that is not zero, or None."""
    position = at
    while chunk := file.read(_CHUNK):
        stripped = chunk.lstrip(b"\0")
        if stripped:
            return position + len(chunk) - len(stripped)
        position += len(chunk)
    return None


def _closes_after(file: IO[bytes], at: int) -> bool:
    """True when a sealed close record lies after ``at``: the server closed the
    file after that point, so it had synced all before, and zeros there are damage."""
    file.seek(at)
    for line in file:
        text = unseal(line.lstrip(b"\0"))
        if text is not None and b'"closed"' in text:
            return True
    return False


def _loads(text: bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def read_records(path: Path) -> list[dict[str, Any]]:
    """The mutation records of a log file, for tools and tests: read as recovery
    would, except that damage ends the list instead of raising."""
    return [record for _, record in LogReader(path, repair=True).records()]
