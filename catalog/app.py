"""What the catalog answers to each HTTP request, sans-IO: a ``Request`` in, response bytes out.

Routes:
  /query.json          every live record, a JSON array (ready-made bytes)
  /query.text          every live record as ``key value`` lines
  /query/<base64 JX>   the records for which the expression is true (catalog_query -w)
  / and /query.html    the table of services for people (?sort=COLUMN, ?type=TYPE)
  /detail/<key>        one whole record
Anything else is 404. Errors on the /query API are plain text, for programs; on
pages they are escaped HTML, for people.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from catalog import pages
from catalog.formats import text_listing
from catalog.http import REASONS, HttpError, Request, response
from catalog.jx import JXSyntaxError, compile_expression
from catalog.records import RecordStore, join_records

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
QUERY_PREFIX = "/query/"


class CatalogApp:
    """Answers requests from a ``RecordStore``. ``title`` heads the web pages."""

    def __init__(self, store: RecordStore, title: str) -> None:
        self.store = store
        self.title = title

    def respond(self, request: Request) -> list[bytes]:
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

    def _route(self, request: Request) -> list[bytes]:
        path, head = request.path, request.head_only
        if path == "/query.json":
            return response(200, self.store.json_body(), JSON, head)
        if path == "/query.text":
            return response(200, text_listing(self._records()), TEXT, head)
        if path.startswith(QUERY_PREFIX):
            return response(200, self._filtered(path[len(QUERY_PREFIX) :]), JSON, head)
        if path in ("/", "/query.html"):
            items = [(e.key, orjson.loads(e.data)) for e in self.store.entries()]
            body = pages.index_page(
                self.title,
                items,
                self.store.clock(),
                sort=_param(request, "sort"),
                type_filter=_param(request, "type"),
            )
            return response(200, body, HTML, head, pages.SECURITY_HEADERS)
        if path.startswith("/detail/"):
            key = path[len("/detail/") :]
            entry = self.store.get(key)
            if entry is None:
                raise HttpError(404, f"no live record has the key {key}")
            body = pages.detail_page(self.title, key, orjson.loads(entry.data), self.store.clock())
            return response(200, body, HTML, head, pages.SECURITY_HEADERS)
        raise HttpError(404, f"nothing here: {path}")

    def _records(self) -> list[dict[str, Any]]:
        return [orjson.loads(entry.data) for entry in self.store.entries()]

    def _filtered(self, encoded: str) -> bytes:
        text = decode_expression(encoded)
        try:
            expression = compile_expression(text)
        except JXSyntaxError as exc:
            raise HttpError(400, f"invalid expression: {exc}") from None
        if expression.always_true:
            return self.store.json_body()
        entries = self.store.entries()
        return join_records([e.data for e in entries if expression.matches(orjson.loads(e.data))])


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


def _param(request: Request, name: str) -> str | None:
    values = request.query.get(name)
    return values[0] if values else None
