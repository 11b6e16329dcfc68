"""Which record makes room when the catalog is full, sans-IO: fair shares per source.

A full catalog does not refuse a new record (that let one sender fill the table and
keep every honest newcomer out); it takes the place of another record, chosen so
that a flood from one address only ever displaces that address's own records:

- the victim comes from the **source holding the most records** (a source is a
  sender's IPv4 address, or its IPv6 /64, since one host owns a whole /64);
  a sender that itself holds as many as anyone replaces one of its own;
- within that source, a record **heard only once** goes first (oldest first), before
  any record heard again (least recently heard first): services announce
  themselves every minute or so, a flood of one-off records does not.

So one address sending 110,000 distinct records rotates its own records while a
new server elsewhere is listed at its first announcement, and a server that keeps
announcing survives even a flood from its own address. Why not a fixed quota per
source: on one machine every service is the same source (127.0.0.1, or the
catalog's host), and any quota small enough to protect others would cap that
machine's own honest services.

Every operation is O(1): sources are kept in buckets by how many records they hold.
"""

from __future__ import annotations

import functools
import ipaddress


@functools.lru_cache(maxsize=4096)
def _ipv6_prefix(address: str) -> str:
    try:
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    except ValueError:
        return address


def source_of(address: object) -> str:
    """The share a record counts against: its sender's IPv4 address or IPv6 /64."""
    text = address if isinstance(address, str) else str(address)
    return _ipv6_prefix(text) if ":" in text else text


class _Source:
    __slots__ = ("again", "once")

    def __init__(self) -> None:
        # Insertion-ordered sets of record keys: oldest (least recently heard) first.
        self.once: dict[str, None] = {}
        self.again: dict[str, None] = {}

    @property
    def count(self) -> int:
        return len(self.once) + len(self.again)


class Shares:
    """The records of each source, in the order they would be displaced."""

    def __init__(self) -> None:
        self._sources: dict[str, _Source] = {}
        # count -> the sources holding exactly that many records (an ordered set)
        self._by_count: dict[int, dict[str, None]] = {}
        self._largest = 0

    def __len__(self) -> int:
        return sum(source.count for source in self._sources.values())

    def count(self, source: str) -> int:
        held = self._sources.get(source)
        return held.count if held else 0

    def add(self, key: str, source: str, heard_before: bool = False) -> None:
        """A new record; ``heard_before`` counts it as heard again (a restored record)."""
        held = self._sources.get(source)
        if held is None:
            held = self._sources[source] = _Source()
        (held.again if heard_before else held.once)[key] = None
        self._moved(source, held.count - 1, held.count)

    def heard_again(self, key: str, source: str) -> None:
        """A known record refreshed: it is now the last of its source to be displaced."""
        held = self._sources[source]
        if key in held.once:
            del held.once[key]
        else:
            held.again.pop(key, None)  # to be put back last
        held.again[key] = None

    def remove(self, key: str, source: str) -> None:
        held = self._sources.get(source)
        if held is None:
            return
        if key in held.once:
            del held.once[key]
        elif key in held.again:
            del held.again[key]
        else:
            return
        self._moved(source, held.count + 1, held.count)
        if not held.count:
            del self._sources[source]

    def victim(self, source: str) -> str | None:
        """The key of the record to displace so that ``source`` can add one; None if
        there is no record at all."""
        if not self._largest:
            return None
        if self.count(source) >= self._largest:
            held = self._sources[source]
        else:
            held = self._sources[next(iter(self._by_count[self._largest]))]
        return next(iter(held.once or held.again))

    def _moved(self, source: str, old: int, new: int) -> None:
        """Keeps the buckets right after ``source`` went from ``old`` to ``new`` records
        (always by one)."""
        if old:
            bucket = self._by_count[old]
            del bucket[source]
            if not bucket:
                del self._by_count[old]
        if new:
            self._by_count.setdefault(new, {})[source] = None
        if new > self._largest:
            self._largest = new
        elif old == self._largest and old not in self._by_count:
            self._largest = new  # the one source this large shrank by one
