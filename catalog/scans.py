"""Work over every record, a slice at a time, so that it never holds the event loop.

A ``Scan`` visits a snapshot of the store's records (taken when it starts) in
``step(deadline)`` calls, each returning by its deadline; the server runs them
after each loop turn within a budget (``catalog.server.SCAN_SLICE``). A record
that expired since the snapshot is skipped: expired records are never served.
The filtered queries (``/query/<JX>``), ``/query.text`` and the table's
filtered or re-sorted pages (``catalog.listing.PageJob``) are scans.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from catalog.formats import text_listing
from catalog.jx import Expression
from catalog.records import Entry, RecordStore, join_records

_CHECK_EVERY = 32  # records visited between two looks at the clock


class Scan:
    """Visits every live record once; subclasses say what ``visit`` does."""

    def __init__(self, store: RecordStore) -> None:
        self.store = store
        self._entries = store.entries()
        self._next = 0
        self.done = False

    def visit(self, entry: Entry) -> None:
        raise NotImplementedError

    def step(self, deadline: float, clock: Callable[[], float] = time.perf_counter) -> bool:
        """Visits records until ``deadline`` (on ``clock``) or the last; True once done."""
        entries, visit = self._entries, self.visit
        now = self.store.clock()
        while self._next < len(entries):
            for entry in entries[self._next : self._next + _CHECK_EVERY]:
                if entry.expires >= now:
                    visit(entry)
            self._next += _CHECK_EVERY
            if clock() >= deadline:
                break
        self.done = self._next >= len(entries)
        return self.done


class QueryScan(Scan):
    """The records for which a JX expression is true: the ``/query/<JX>`` reply."""

    def __init__(self, store: RecordStore, expression: Expression) -> None:
        super().__init__(store)
        self.expression = expression
        self._found: list[bytes] = []

    def visit(self, entry: Entry) -> None:
        if self.expression.matches(orjson.loads(entry.data)):
            self._found.append(entry.data)

    def body(self) -> bytes:
        """The JSON array of the matching records, once done."""
        return join_records(self._found)


class TextScan(Scan):
    """Every record as ``key value`` lines: the ``/query.text`` reply."""

    def __init__(self, store: RecordStore) -> None:
        super().__init__(store)
        self._parts: list[bytes] = []

    def visit(self, entry: Entry) -> None:
        self._parts.append(text_listing([orjson.loads(entry.data)]))

    def body(self) -> bytes:
        return b"".join(self._parts)
