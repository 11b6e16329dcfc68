"""A TS's table: ``DomainName IPaddress A`` lines, looked up case-insensitively."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from lb.protocol import file_lines, fold, name_problem, shown

log = logging.getLogger("lb.table")

RECORD_TYPE = "A"
CLASS = b"IN"


class TableError(ValueError):
    """A table file that cannot be used; the message names the file and line."""


class DnsTable:
    """Names to answer lines, e.g. ``google.com`` -> ``GOOGLE.com 46.1.3.7 A IN``.

    The answer keeps the table's spelling of the name; the lookup ignores ASCII case.
    """

    __slots__ = ("_answers",)

    def __init__(self, answers: dict[bytes, bytes]) -> None:
        self._answers = answers

    @classmethod
    def parse(cls, data: bytes, source: str) -> DnsTable:
        """Parses a table file's bytes; ``source`` names it in error messages.

        Blank lines, CRLF endings, extra blanks and a UTF-8 byte-order mark are
        tolerated. Anything else that is not ``DomainName IPaddress A`` raises
        ``TableError``. When a name appears twice, the first entry wins.
        """
        answers: dict[bytes, bytes] = {}
        first_line: dict[bytes, int] = {}
        for number, line in enumerate(file_lines(data), start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{source}, line {number}"
            name = _check_entry(fields, where)
            key = fold(name)
            if key in answers:
                log.warning(
                    "%s: %s repeats line %d; keeping the first",
                    where,
                    _quoted(name),
                    first_line[key],
                )
                continue
            answers[key] = b" ".join([*fields, CLASS])
            first_line[key] = number
        return cls(answers)

    def lookup(self, name: bytes) -> bytes | None:
        """The answer line for ``name``, or None if the table does not hold it."""
        return self._answers.get(fold(name))

    def __len__(self) -> int:
        return len(self._answers)


def _check_entry(fields: list[bytes], where: str) -> bytes:
    """The entry's name; raises ``TableError`` saying what is wrong with it."""
    if len(fields) != 3:
        raise TableError(
            f"{where}: expected 'DomainName IPaddress {RECORD_TYPE}', found {len(fields)} field(s)"
        )
    name, address, kind = fields
    problem = name_problem(name)
    if problem:
        raise TableError(f"{where}: domain name {_quoted(name)} is {problem}")
    try:
        ipaddress.IPv4Address(address.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise TableError(f"{where}: {_quoted(address)} is not an IPv4 address") from None
    if kind.upper() != RECORD_TYPE.encode():
        raise TableError(f"{where}: record type {_quoted(kind)} is not {RECORD_TYPE}")
    return name


def _quoted(field: bytes) -> str:
    return f"'{shown(field).decode()}'"  # escaped once: repr() would double the backslashes


def load_table(path: str | Path) -> DnsTable:
    """Reads and parses a table file; raises ``TableError`` for a missing or bad file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TableError(f"cannot read table file {path}: {exc.strerror or exc}") from None
    return DnsTable.parse(data, str(path))
