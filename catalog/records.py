"""The catalog's records, sans-IO: keying, expiry, bounds and their JSON.

Each record is serialized once, when its update arrives, so that answering
``/query.json`` is a join of ready bytes however many records there are. The
same bytes are the persistence format: the state file is a ``/query.json`` reply.

The store also keeps what the web page needs to stay cheap at any size: the
records in the table's default order (a sorted index, so the first page is a
slice of it), how many records there are of each type (cut as the page shows
it), and each record's shown fields (``catalog.shown``). When full, a new
record takes the place of another one, chosen by ``catalog.shares``.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from sortedcontainers import SortedList

from catalog.formats import value_text
from catalog.order import default_order
from catalog.shares import Shares, source_of
from catalog.shown import cut, summary

DEFAULT_LIFETIME = 900
# Bounds on what senders can make the catalog hold; see docs/catalog.md.
MAX_RECORDS = 100_000
MAX_STORE_BYTES = 256 * 1024 * 1024
MAX_KEY_LENGTH = 512
# Records displaced to make room for one update at most (a 256 KiB update in a
# store full of small records); beyond that the update is refused.
MAX_DISPLACED = 1024

Record = dict[str, Any]

# What became of a saved record given back to the store (``RecordStore.restore``).
KEPT, EXPIRED, REFUSED, MALFORMED = "kept", "expired", "refused", "malformed"


class RecordRejected(ValueError):
    """A record the store will not keep; the message says why."""


@dataclass(slots=True)
class Entry:
    key: str
    data: bytes  # the record as JSON
    expires: float  # wall-clock seconds
    order: str = ""  # its place in the default order (catalog.order.default_order)
    type: str = ""  # its type, as text (the page counts records by type)
    source: str = ""  # whose share it counts against (catalog.shares.source_of)
    shown: bytes = b"{}"  # what the table shows of it, cut (catalog.shown.summary)


def record_key(record: Record) -> str:
    """``address:port:name``, plus ``:uuid`` when the record has one, as cctools keys it."""
    port = record.get("port")
    if not isinstance(port, int) or isinstance(port, bool):
        port = 0  # cctools reads a missing or non-integer port as 0
    key = f"{record.get('address', 'unknown')}:{port}:{record.get('name', 'unknown')}"
    uuid = record.get("uuid")
    if isinstance(uuid, str):
        key += ":" + uuid
    return key


def record_lifetime(record: Record, lifetime: float) -> float:
    """The catalog's lifetime, or the record's own integer ``lifetime`` if shorter."""
    own = record.get("lifetime")
    if isinstance(own, int) and not isinstance(own, bool) and 0 < own < lifetime:
        return own
    return lifetime


def join_records(datas: list[bytes]) -> bytes:
    """A JSON array of already-serialized records."""
    if not datas:
        return b"[]\n"
    return b"[\n" + b",\n".join(datas) + b"\n]\n"


class RecordStore:
    """The live records, keyed as cctools keys them, each expiring on its own clock."""

    def __init__(
        self,
        lifetime: float = DEFAULT_LIFETIME,
        max_records: int = MAX_RECORDS,
        max_bytes: int = MAX_STORE_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lifetime = lifetime
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.clock = clock
        # Bumped whenever the set of live records changes: caches and the saver key on it.
        self.version = 0
        self.displaced = 0  # records that made room for others, since the start
        self._entries: dict[str, Entry] = {}
        self._bytes = 0
        # (expires, key) for every put; an item whose record was refreshed since is
        # stale and skipped when popped. Rebuilt when stale items pile up.
        self._expiry: list[tuple[float, str]] = []
        self._body: tuple[int, bytes] = (-1, b"")
        self._ordered: SortedList = SortedList()  # (entry.order, key) of every record
        self._types: Counter[str] = Counter()
        self._shares = Shares()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def put(self, record: Record, heard: float, *, heard_before: bool = False) -> tuple[str, bool]:
        """Keeps ``record`` (already stamped), replacing any record with its key.

        Returns ``(key, is_new)``. When the store is full, other records make room
        (``catalog.shares`` chooses which); ``RecordRejected`` when the record is
        invalid or no room can be made. ``heard_before``: a new record counts as
        one heard again (a restored one), the last to make room for others.
        """
        key = record_key(record)
        if len(key) > MAX_KEY_LENGTH:
            raise RecordRejected(f"record key is longer than {MAX_KEY_LENGTH} characters")
        try:
            data = orjson.dumps(record)
        except orjson.JSONEncodeError as exc:
            raise RecordRejected(f"record cannot be stored as JSON: {exc}") from None
        old = self._entries.get(key)
        if old is not None and old.data == data:
            # The same record again (a refresh within its second): only its expiry
            # moves. The version stays, so nothing is journaled or saved again.
            self._heard_again(old, heard + record_lifetime(record, self.lifetime))
            return key, False
        source = old.source if old else source_of(record.get("address"))
        growth = len(data) - (len(old.data) if old else 0)
        if (old is None and len(self._entries) >= self.max_records) or (
            self._bytes + growth > self.max_bytes
        ):
            self._make_room(source, growth, old is None)
        expires = heard + record_lifetime(record, self.lifetime)
        entry = Entry(
            key,
            data,
            expires,
            default_order(record),
            cut(value_text(record.get("type", ""))),
            source,
            summary(record),
        )
        self._entries[key] = entry
        self._bytes += growth
        if old is None:
            self._ordered.add((entry.order, key))
            self._types[entry.type] += 1
            self._shares.add(key, source, heard_before)
        else:
            if old.order != entry.order:
                self._ordered.remove((old.order, key))
                self._ordered.add((entry.order, key))
            if old.type != entry.type:
                self._count_type(old.type, -1)
                self._types[entry.type] += 1
            self._shares.heard_again(key, source)
        self._push_expiry(expires, key)
        self.version += 1
        return key, old is None

    def _heard_again(self, entry: Entry, expires: float) -> None:
        entry.expires = expires
        self._shares.heard_again(entry.key, entry.source)
        self._push_expiry(expires, entry.key)

    def _push_expiry(self, expires: float, key: str) -> None:
        heapq.heappush(self._expiry, (expires, key))
        if len(self._expiry) > 2 * len(self._entries) + 1024:
            self._expiry = [(e.expires, e.key) for e in self._entries.values()]
            heapq.heapify(self._expiry)

    def _make_room(self, source: str, growth: int, new: bool) -> None:
        """Makes room for ``growth`` more bytes and, if ``new``, one more record: a new
        record displaces others (at most ``MAX_DISPLACED``); a refresh never does."""

        def full() -> bool:
            return (new and len(self._entries) >= self.max_records) or (
                self._bytes + growth > self.max_bytes
            )

        displaced = 0
        while full() and new and growth <= self.max_bytes and displaced < MAX_DISPLACED:
            victim = self._shares.victim(source)
            if victim is None:
                break
            self._drop(self._entries[victim])
            displaced += 1
        if displaced:
            self.displaced += displaced
            self.version += 1
        if new and len(self._entries) >= self.max_records:
            raise RecordRejected(f"catalog is full ({self.max_records} records)")
        if self._bytes + growth > self.max_bytes:
            raise RecordRejected(f"catalog is full ({self.max_bytes} bytes of records)")

    def _drop(self, entry: Entry) -> None:
        del self._entries[entry.key]
        self._bytes -= len(entry.data)
        self._ordered.remove((entry.order, entry.key))
        self._count_type(entry.type, -1)
        self._shares.remove(entry.key, entry.source)

    def _count_type(self, type_text: str, change: int) -> None:
        left = self._types[type_text] + change
        if left:
            self._types[type_text] = left
        else:
            del self._types[type_text]

    def purge(self) -> int:
        """Drops the records whose lifetime has passed; returns how many."""
        now = self.clock()
        expiry = self._expiry
        dropped = 0
        while expiry and expiry[0][0] < now:
            _, key = heapq.heappop(expiry)
            entry = self._entries.get(key)
            if entry is not None and entry.expires < now:
                self._drop(entry)
                dropped += 1
        if dropped:
            self.version += 1
        return dropped

    def keys(self) -> list[str]:
        """The keys of the live records, in the order they were first heard from."""
        self.purge()
        return list(self._entries)

    @property
    def live(self) -> dict[str, Entry]:
        """The records by key, for reading only (may hold some expired ones: check
        ``expires``; ``purge`` drops them)."""
        return self._entries

    def ordered(self, start: int, stop: int) -> list[Entry]:
        """The live records from ``start`` to ``stop`` in the default order."""
        self.purge()
        return [self._entries[key] for _, key in self._ordered.islice(start, stop)]

    def type_counts(self) -> Counter[str]:
        """How many live records there are of each type (the live counter: do not change it)."""
        self.purge()
        return self._types

    def share_of(self, address: str) -> int:
        """How many records the sender ``address`` (its share: catalog.shares) holds."""
        return self._shares.count(source_of(address))

    def next_expiry(self) -> float | None:
        """When ``purge`` may next have work (wall clock; perhaps early, never late)."""
        return self._expiry[0][0] if self._expiry else None

    def entries(self) -> list[Entry]:
        """The live records, in the order their keys were first heard from."""
        self.purge()
        return list(self._entries.values())

    def get(self, key: str) -> Entry | None:
        self.purge()
        return self._entries.get(key)

    def json_body(self) -> bytes:
        """Every live record as one JSON array: the ``/query.json`` reply and the state file."""
        self.purge()
        version, body = self._body
        if version != self.version:
            body = join_records([e.data for e in self._entries.values()])
            self._body = (self.version, body)
        return body

    def load(self, data: bytes) -> tuple[int, int]:
        """Adds the records of a state file (a ``json_body``); returns ``(kept, dropped)``.

        Expired and malformed records are dropped; ``ValueError`` if the data is
        not a JSON array at all.
        """
        try:
            records = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        if not isinstance(records, list):
            raise ValueError("not a JSON array of records")
        now = self.clock()
        kept = sum(self.restore(record, now) == KEPT for record in records)
        return kept, len(records) - kept

    def restore(self, record: object, now: float) -> str:
        """Adds one record the catalog saved (state file or journal), heard when its
        ``lastheardfrom`` says, so that it expires when it would have.

        Returns ``KEPT``, ``EXPIRED`` (its lifetime passed by ``now``), ``REFUSED``
        (the store would not take it) or ``MALFORMED`` (not a record as saved).
        """
        heard = record.get("lastheardfrom") if isinstance(record, dict) else None
        if not isinstance(heard, int | float) or isinstance(heard, bool):
            return MALFORMED
        assert isinstance(record, dict)
        if heard + record_lifetime(record, self.lifetime) < now:
            return EXPIRED
        try:
            self.put(record, heard, heard_before=True)
        except RecordRejected:
            return REFUSED
        return KEPT
