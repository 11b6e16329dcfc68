"""Decoding one catalog update, sans-IO: bytes in, a validated JSON object out.

An update is one JSON object, sent as the whole of a UDP datagram or of a TCP
connection to port+1. A first byte of 0x1A means the rest is zlib data, as
cctools sends large updates. Everything a sender controls is bounded here, before
any of it is kept: the wire size, the decompressed size (a small compressed
datagram may expand to gigabytes), and the shape (a JSON object; orjson rejects
invalid UTF-8, lone surrogates, non-string keys and nesting deeper than 1024).

The decompressed size is bounded by the compressed size too (``MAX_RATIO``): what
an update costs the catalog (parsing, storing, journaling) grows with its JSON,
so a datagram of a few hundred bytes must not become a quarter of a megabyte.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

COMPRESSED_MARK = 0x1A
# Larger than any real service's record (chirp, work_queue: a few KiB) by far,
# small enough that 1024 of them in flight at once stay within 256 MiB.
MAX_UPDATE_BYTES = 256 * 1024

# Real records compress far less: catalog_update's own (231 bytes) 1.4x, a
# work_queue-like record of 60 workers with identical fields 9.4x; 32 leaves
# room beyond that, while a 326-byte datagram of ``[{},{},...]`` expanding to
# 261 KB (800x, 6.7 ms of parsing and journaling each) is refused.
MAX_RATIO = 32
# Any compressed update may expand to this much whatever its ratio: a small record
# (a few hundred bytes) costs no more than an ordinary uncompressed one.
RATIO_ALLOWANCE = 4096
# C clients that send strlen+1 bytes end their updates with a NUL; cctools takes them.
TRAILING = b"\x00\t\n\r "

# The fields the catalog sets itself; a sender's own values for them are overwritten.
STAMPED_FIELDS = ("address", "lastheardfrom", "name")


class UpdateError(ValueError):
    """An update that cannot be accepted; the message says why."""


def decode_update(data: bytes, limit: int = MAX_UPDATE_BYTES) -> dict[str, Any]:
    """The JSON object carried by one update, or ``UpdateError``."""
    if len(data) > limit:
        raise UpdateError(f"update of {len(data)} bytes is larger than the {limit}-byte limit")
    if data[:1] == bytes([COMPRESSED_MARK]):
        data = _decompress(data[1:], limit)
    if data[-1:] and data[-1] in TRAILING:  # (orjson takes white space, not a NUL)
        data = data.rstrip(TRAILING)
    try:
        record = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpdateError(f"update is not valid JSON: {exc}") from None
    if not isinstance(record, dict):
        raise UpdateError(f"update is a JSON {type(record).__name__}, not an object")
    return record


def _decompress(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj()
    ratio_limit = MAX_RATIO * len(data) + RATIO_ALLOWANCE
    most = min(limit, ratio_limit)
    try:
        # max_length stops a decompression bomb after most+1 bytes of output: the
        # work done is bounded by the sender's bytes, not by what they expand to.
        plain = inflater.decompress(data, most + 1)
    except zlib.error as exc:
        raise UpdateError(f"compressed update is not valid zlib data: {exc}") from None
    if len(plain) > limit:
        raise UpdateError(f"compressed update expands past the {limit}-byte limit")
    if len(plain) > most:
        raise UpdateError(
            f"compressed update of {len(data)} bytes expands more than {MAX_RATIO} times "
            "(real records compress under 10 times)"
        )
    if not inflater.eof:
        raise UpdateError("compressed update is truncated")
    return plain


def stamp(record: dict[str, Any], address: str, name: str, heard: float) -> dict[str, Any]:
    """Sets the fields only the catalog may set, replacing the sender's values.

    Assigning into the dict (rather than appending text, as cctools does) is what
    keeps each key once in the output: a sender cannot smuggle in its own
    ``address`` for readers that take the last duplicate.
    """
    record["address"] = address
    record["lastheardfrom"] = int(heard)
    record["name"] = name
    return record
