"""What one page of the catalog's table shows, sans-IO: a query in, a ``Listing`` out.

The table is paged (``PAGE_ROWS`` records a page) and can be filtered (by type,
by a piece of text) and sorted by any column. Two ways to a page, both bounded:

- the default order without a filter is a slice of the store's sorted index
  (``IndexedPage``): a page costs the same with a hundred records or a hundred
  thousand;
- anything else is a ``PageJob``: a scan of a snapshot of the records that keeps
  only the best rows so far, run a slice at a time (``catalog.scans``) so that
  the event loop serves everyone else in between. It serves the first
  ``MAX_SCANNED_ROWS`` rows of its order, which narrows with a filter.

Either way a row is read from the record's shown fields, kept cut beside it
(``catalog.shown``), never from the whole record: a page's cost and size are
bounded whatever the records hold.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from catalog.formats import format_age, value_text
from catalog.order import newest_first, number_or_none, sort_text
from catalog.records import Entry, RecordStore
from catalog.scans import Scan
from catalog.shown import SHOWN_FIELDS

Record = dict[str, Any]

PAGE_ROWS = 100
MAX_SCANNED_ROWS = 10_000  # of a filtered or re-sorted order: 100 pages
MAX_FILTER_LENGTH = 200
MAX_TYPE_LINKS = 30  # more distinct types than this: no list of them, the filter instead


class PageError(ValueError):
    """A page that cannot be served as asked; the message says why."""


@dataclass(frozen=True)
class Column:
    name: str
    title: str
    cell: Callable[[Record, float], str]  # record, now -> text (not yet escaped)
    place: Callable[[Record], str]  # record -> its place in the column's order


def _field(name: str) -> Column:
    def cell(record: Record, now: float) -> str:
        return value_text(record[name]) if name in record else ""

    return Column(name, name.capitalize(), cell, lambda record: sort_text(record.get(name)))


def _since(name: str, title: str) -> Column:
    """A column showing how long ago the epoch-seconds field ``name`` was, newest first."""

    def cell(record: Record, now: float) -> str:
        when = number_or_none(record.get(name))
        return "" if when is None else format_age(now - when)

    return Column(name, title, cell, lambda record: newest_first(record.get(name)))


COLUMNS = [
    _field("type"),
    _field("project"),
    _field("owner"),
    _field("name"),
    _field("port"),
    _field("address"),
    _since("lastheardfrom", "Heard from"),
    _since("starttime", "Up for"),
]
BY_NAME = {column.name: column for column in COLUMNS}
# What the text filter looks in: the columns shown as text (as shown: cut).
SEARCHED = ("type", "project", "owner", "name", "port", "address")
assert tuple(column.name for column in COLUMNS) == SHOWN_FIELDS  # what the store keeps


@dataclass(frozen=True)
class PageQuery:
    """What a person asked for: ``sort`` a column name (None: the default order),
    ``type`` an exact type, ``text`` a case-insensitive piece of any shown field."""

    sort: str | None = None
    type: str | None = None
    text: str = ""
    page: int = 1

    @classmethod
    def parse(cls, params: dict[str, list[str]]) -> PageQuery:
        """From a request's query string; ``PageError`` for a page number or a filter
        no one could mean. An unknown sort column is the default order."""

        def first(name: str) -> str | None:
            values = params.get(name)
            return values[0] if values else None

        page_text = first("page") or "1"
        if not (page_text.isascii() and page_text.isdigit() and 0 < len(page_text) < 7):
            raise PageError(f"page {page_text[:20]!r} is not a page number (1, 2, ...)")
        text = (first("q") or "").strip()
        if len(text) > MAX_FILTER_LENGTH:
            raise PageError(f"the filter is longer than {MAX_FILTER_LENGTH} characters")
        sort = first("sort")
        page = int(page_text)
        if page < 1:
            raise PageError(f"page {page_text!r} is not a page number (1, 2, ...)")
        return cls(sort if sort in BY_NAME else None, first("type"), text, page)

    @property
    def indexed(self) -> bool:
        """Served from the store's index (no scan): the default order, unfiltered."""
        return self.sort is None and self.type is None and not self.text

    def params(self, **changes: Any) -> dict[str, str]:
        """The query string of this query with ``changes`` (None leaves a parameter out)."""
        values = {"sort": self.sort, "type": self.type, "q": self.text or None, "page": None}
        values.update(changes)
        return {name: str(value) for name, value in values.items() if value is not None}


@dataclass
class Listing:
    """One page of the table: its rows, and what it was taken from."""

    query: PageQuery
    rows: list[tuple[str, Record]]  # (key, the record's shown fields: catalog.shown)
    matched: int  # records that pass the filter
    total: int  # live records
    page: int
    pages: int
    first_row: int  # 1-based number of the first row shown
    types: list[tuple[str, int]] | None  # (type, records) of every type; None if too many
    type_count: int


def _pages(rows: int) -> int:
    return max(1, math.ceil(rows / PAGE_ROWS))


def _listing(
    store: RecordStore, query: PageQuery, page_entries: list[Entry], matched: int, page: int
) -> Listing:
    counts = store.type_counts()
    types = sorted(counts.items()) if len(counts) <= MAX_TYPE_LINKS else None
    # The shown fields only (catalog.shown): a row costs the same whatever its record holds.
    rows = [(entry.key, orjson.loads(entry.shown)) for entry in page_entries]
    return Listing(
        query, rows, matched, len(store), page, _pages(matched),
        (page - 1) * PAGE_ROWS + 1, types, len(counts),
    )  # fmt: skip


class IndexedPage:
    """A page of the default order without a filter, straight from the index: one
    step, as cheap with a hundred records as with a hundred thousand. (A step like
    a scan's, so that the server counts it in the same budget per loop turn.)"""

    def __init__(self, store: RecordStore, query: PageQuery) -> None:
        self.store = store
        self.query = query
        self._listing: Listing | None = None

    def step(self, deadline: float) -> bool:
        store, query = self.store, self.query
        page = min(query.page, _pages(len(store)))
        start = (page - 1) * PAGE_ROWS
        rows = store.ordered(start, start + PAGE_ROWS)
        self._listing = _listing(store, query, rows, len(store), page)
        return True

    def listing(self) -> Listing:
        assert self._listing is not None, "step() first"
        return self._listing


def _raw_filter(text: str) -> bytes | None:
    """The bytes that an ASCII record's JSON holds (lowercased) wherever one of its
    fields contains ``text``, or None when that cannot be told from the bytes: text
    that JSON escapes, or non-ASCII text. (A record with non-ASCII bytes is always
    parsed: a few non-ASCII letters lowercase to ASCII ones, which ``bytes.lower``
    would miss.)"""
    if not text or not text.isascii() or any(c in text for c in '"\\') or not text.isprintable():
        return None
    return text.encode()


class _Best:
    """A row in the heap of the best rows so far, whose top is the worst of them."""

    __slots__ = ("entry", "place")

    def __init__(self, place: tuple, entry: Entry) -> None:
        self.place = place
        self.entry = entry

    def __lt__(self, other: _Best) -> bool:
        return self.place > other.place


class PageJob(Scan):
    """A page of a filtered or re-sorted table, found a slice at a time (a ``Scan``).

    The rows it shows are read again when it ends, so a record refreshed meanwhile
    shows its new values and one expired meanwhile is left out.
    """

    def __init__(self, store: RecordStore, query: PageQuery) -> None:
        if query.page * PAGE_ROWS > MAX_SCANNED_ROWS:
            raise PageError(
                f"a filtered or sorted table shows its first {MAX_SCANNED_ROWS // PAGE_ROWS} "
                "pages; narrow the filter to see more"
            )
        super().__init__(store)
        self.query = query
        self._keep = query.page * PAGE_ROWS
        self._best: list[_Best] = []
        self._matched = 0
        self._column = BY_NAME[query.sort] if query.sort else None
        self._text = query.text.lower()
        self._raw = _raw_filter(self._text)

    def visit(self, entry: Entry) -> None:
        if self.query.type is not None and entry.type != self.query.type:
            return
        raw, shown = self._raw, entry.shown
        if raw is not None and shown.isascii() and raw not in shown.lower():
            return  # the text is nowhere in the record's shown fields: no need to parse them
        record = orjson.loads(shown)
        if self._text and not self._has_text(record):
            return
        self._matched += 1
        column, best = self._column, self._best
        place = (column.place(record) if column else "", entry.order, entry.key)
        if len(best) < self._keep:
            heapq.heappush(best, _Best(place, entry))
        elif place < best[0].place:
            heapq.heapreplace(best, _Best(place, entry))

    def _has_text(self, record: Record) -> bool:
        return any(
            self._text in value_text(record[name]).lower() for name in SEARCHED if name in record
        )

    def listing(self) -> Listing:
        """The page, once ``step`` said it is done."""
        ordered = [item.entry for item in sorted(self._best, key=lambda item: item.place)]
        page = min(self.query.page, _pages(self._matched))
        start = (page - 1) * PAGE_ROWS
        current = (self.store.get(entry.key) for entry in ordered[start : start + PAGE_ROWS])
        return _listing(self.store, self.query, [e for e in current if e], self._matched, page)
