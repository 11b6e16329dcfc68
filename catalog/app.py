"""What the catalog answers to each HTTP request, sans-IO: a ``Request`` in, response bytes out.

Routes:
  /query.json          every live record, a JSON array (ready-made bytes)
  /query.text          every live record as ``key value`` lines
  /query/<base64 JX>   the records for which the expression is true (catalog_query -w)
  / and /query.html    the table of services for people, a page at a time
                       (?sort=COLUMN, ?type=TYPE, ?q=TEXT, ?page=N; catalog.listing)
  /detail/<key>        one whole record
Anything else is 404. Errors on the /query API are plain text, for programs; on
pages they are escaped HTML, for people.

A reply that needs a scan of the records (a filtered query, a filtered or
re-sorted page) is not made at once: ``respond`` gives a ``Pending``, whose scan
the server runs a slice at a time (``catalog.scans``), then its ``reply()``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import orjson

from catalog import pages
from catalog.http import REASONS, HttpError, Request, response
from catalog.jx import JXSyntaxError, compile_expression
from catalog.listing import IndexedPage, Listing, PageError, PageJob, PageQuery
from catalog.records import RecordStore
from catalog.scans import QueryScan, TextScan

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
QUERY_PREFIX = "/query/"
PAGE_FRESH = 1.0  # seconds a rendered page of the table is served again as it is
MAX_FRESH_PAGES = 64


class Step(Protocol):
    def step(self, deadline: float) -> bool: ...


@dataclass
class Pending:
    """A reply to make once ``scan`` is done (``scan.step`` until it says so): a
    ``catalog.scans.Scan``, or another piece of work the server must budget."""

    scan: Step
    target: str
    reply: Callable[[], list[bytes]]


class CatalogApp:
    """Answers requests from a ``RecordStore``. ``title`` heads the web pages."""

    def __init__(self, store: RecordStore, title: str) -> None:
        self.store = store
        self.title = title
        # Pages rendered in the last PAGE_FRESH seconds, by query: a crowd reloading
        # the table costs one rendering a second, not one per reload.
        self._pages: dict[PageQuery, tuple[float, bytes]] = {}

    def respond(self, request: Request) -> list[bytes] | Pending:
        try:
            return self._route(request)
        except HttpError as exc:
            return self.error(exc.status, exc.message, request.path, request.head_only)

    def error(
        self, status: int, message: str, path: str = "/", head_only: bool = False
    ) -> list[bytes]:
        """The reply for a failed request: text for the /query API, a page otherwise."""
        extra: tuple[tuple[str, str], ...] = (("Allow", "GET, HEAD"),) if status == 405 else ()
        if path.startswith("/query") and not path.startswith("/query.html"):
            return response(status, (message + "\n").encode(), TEXT, head_only, extra)
        body = pages.error_page(status, REASONS.get(status, "Error"), message)
        return response(status, body, HTML, head_only, extra + pages.SECURITY_HEADERS)

    def _route(self, request: Request) -> list[bytes] | Pending:
        path, head = request.path, request.head_only
        if path == "/query.json":
            return response(200, self.store.json_body(), JSON, head)
        if path == "/query.text":
            text = TextScan(self.store)
            return Pending(text, request.target, lambda: response(200, text.body(), TEXT, head))
        if path.startswith(QUERY_PREFIX):
            return self._filtered(request, path[len(QUERY_PREFIX) :])
        if path in ("/", "/query.html"):
            return self._table(request)
        if path.startswith("/detail/"):
            key = path[len("/detail/") :]
            entry = self.store.get(key)
            if entry is None:
                raise HttpError(404, f"no live record has the key {key}")
            body = pages.detail_page(self.title, key, orjson.loads(entry.data), self.store.clock())
            return response(200, body, HTML, head, pages.SECURITY_HEADERS)
        raise HttpError(404, f"nothing here: {path}")

    def _table(self, request: Request) -> list[bytes] | Pending:
        try:
            query = PageQuery.parse(request.query)
            made, body = self._pages.get(query, (0.0, b""))
            if self.store.clock() - made < PAGE_FRESH:
                return response(200, body, HTML, request.head_only, pages.SECURITY_HEADERS)
            job = IndexedPage(self.store, query) if query.indexed else PageJob(self.store, query)
        except PageError as exc:
            raise HttpError(400, str(exc)) from None
        return Pending(
            job, request.target, lambda: self._page(query, job.listing(), request.head_only)
        )

    def _page(self, query: PageQuery, listing: Listing, head_only: bool) -> list[bytes]:
        now = self.store.clock()
        body = pages.index_page(self.title, listing, now)
        self._pages.pop(query, None)
        if len(self._pages) >= MAX_FRESH_PAGES:
            del self._pages[next(iter(self._pages))]  # the oldest
        self._pages[query] = (now, body)
        return response(200, body, HTML, head_only, pages.SECURITY_HEADERS)

    def _filtered(self, request: Request, encoded: str) -> list[bytes] | Pending:
        text = decode_expression(encoded)
        try:
            expression = compile_expression(text)
        except JXSyntaxError as exc:
            raise HttpError(400, f"invalid expression: {exc}") from None
        if expression.always_true:
            return response(200, self.store.json_body(), JSON, request.head_only)
        scan = QueryScan(self.store, expression)
        return Pending(
            scan, request.target, lambda: response(200, scan.body(), JSON, request.head_only)
        )


def decode_expression(encoded: str) -> str:
    """The JX text of a ``/query/<base64>`` path; ``HttpError(400)`` if it is not one.

    Accepts standard and URL-safe base64, with or without padding.
    """
    encoded = encoded.strip().replace("-", "+").replace("_", "/").rstrip("=")
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, ValueError):
        raise HttpError(400, "the query path is not base64 of UTF-8 text") from None
