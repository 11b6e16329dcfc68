"""Work over every record, a slice at a time, so that it never holds the event loop.

A ``Scan`` visits the records live when it starts (it keeps their keys, not the
records: a record replaced or displaced meanwhile is not held in memory by it) in
``step(deadline)`` calls, each returning by its deadline; the server runs them
after each loop turn within a budget (``catalog.connections.SCAN_SLICE``). Each
record is read as it is when visited; one gone or expired since is skipped:
expired records are never served.
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
        self._keys = store.keys()
        self._next = 0
        self.done = False

    def visit(self, entry: Entry) -> None:
        raise NotImplementedError

    def step(self, deadline: float, clock: Callable[[], float] = time.perf_counter) -> bool:
        """Visits records until ``deadline`` (on ``clock``) or the last; True once done."""
        keys, visit, live = self._keys, self.visit, self.store.live
        now = self.store.clock()
        while self._next < len(keys):
            for key in keys[self._next : self._next + _CHECK_EVERY]:
                entry = live.get(key)
                if entry is not None and entry.expires >= now:
                    visit(entry)
            self._next += _CHECK_EVERY
            if clock() >= deadline:
                break
        self.done = self._next >= len(keys)
        return self.done


class QueryScan(Scan):
    """The records for which a JX expression is true: the ``/query/<JX>`` reply."""

    def __init__(self, store: RecordStore, expression: Expression) -> None:
        super().__init__(store)
        self.expression = expression
        # A record where field == "text" holds the JSON of "text", byte for byte (its
        # JSON is orjson's, as these are): without all of them, it cannot match.
        self._needles = [orjson.dumps(text) for text in expression.required_strings]
        self._found: list[bytes] = []

    def visit(self, entry: Entry) -> None:
        data = entry.data
        for needle in self._needles:
            if needle not in data:
                return
        if self.expression.matches(orjson.loads(data)):
            self._found.append(data)

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
