"""Decoding one catalog update, sans-IO: bytes in, a validated JSON object out.

An update is one JSON object, sent as the whole of a UDP datagram or of a TCP
connection to port+1. A first byte of 0x1A means the rest is zlib data, as
cctools sends large updates. Everything a sender controls is bounded here, before
any of it is kept: the wire size, the decompressed size (a small compressed
datagram may expand to gigabytes), and the shape (a JSON object; orjson rejects
invalid UTF-8, lone surrogates, non-string keys and nesting deeper than 1024).
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

COMPRESSED_MARK = 0x1A
# Larger than any real service's record (chirp, work_queue: a few KiB) by far,
# small enough that 1024 of them in flight at once stay within 256 MiB.
MAX_UPDATE_BYTES = 256 * 1024

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
    try:
        record = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpdateError(f"update is not valid JSON: {exc}") from None
    if not isinstance(record, dict):
        raise UpdateError(f"update is a JSON {type(record).__name__}, not an object")
    return record


def _decompress(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        # max_length stops a decompression bomb after limit+1 bytes of output.
        plain = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise UpdateError(f"compressed update is not valid zlib data: {exc}") from None
    if len(plain) > limit:
        raise UpdateError(f"compressed update expands past the {limit}-byte limit")
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
