"""Checksummed lines: the framing of every line of the log and the checkpoint (format 2).

A sealed line is a JSON text, a tab, the XXH3-64 checksum of the JSON text in
16 lower-case hex digits, and a newline::

    {"origin":"1ca0047a66abc3bd","lsn":41,"method":"remove","key":"zebra"}\t9c1f2e0a7b3d4c5e\n

orjson never writes a raw tab (it escapes control characters in strings and
adds no whitespace), so the tab that starts the last 18 bytes is the seal's.
XXH3 (the ``xxhash`` package) because it costs ~90 ns for a log record, a
fifth of what encoding the record costs; ``zlib.crc32`` costs four times more
here and CRC32C is not in the standard library. A checksum detects damage
(a flipped bit, an edited byte, a torn line); it is not a signature, and
nobody who can write the data directory is kept from forging a line.
"""

from __future__ import annotations

from xxhash import xxh3_64_hexdigest

SEAL_BYTES = 18  # "\t", 16 hex digits, "\n"
_TAB = 0x09


def seal(text: bytes) -> bytes:
    """The line for ``text`` (one JSON text, no newline)."""
    return b"%b\t%b\n" % (text, xxh3_64_hexdigest(text).encode())


def unseal(line: bytes) -> bytes | None:
    """The JSON text of a sealed line (with its newline), or None when the line is
    not sealed or its checksum does not match its text."""
    if len(line) <= SEAL_BYTES or line[-SEAL_BYTES] != _TAB or line[-1:] != b"\n":
        return None
    text = line[:-SEAL_BYTES]
    if xxh3_64_hexdigest(text).encode() != line[-17:-1]:
        return None
    return text


def is_sealed_shape(line: bytes) -> bool:
    """True when a line looks sealed (a tab before 16 hex digits and a newline),
    whether or not its checksum matches: tells format 2 from format 1."""
    return (
        len(line) > SEAL_BYTES
        and line[-SEAL_BYTES] == _TAB
        and line[-1:] == b"\n"
        and all(c in b"0123456789abcdef" for c in line[-17:-1])
    )
