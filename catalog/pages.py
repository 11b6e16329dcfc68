"""The catalog's web pages for people, sans-IO: records in, HTML bytes out.

Every piece of text that comes from a record, a key or a request is escaped
with ``html.escape`` (quotes included, since some of it lands in attributes);
nothing else is ever interpolated. Links to records percent-encode the key.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from catalog.formats import format_age, value_text

Record = dict[str, Any]

# Sent with every page: even if something slipped through escaping, no script runs.
SECURITY_HEADERS = (("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),)

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; }
th, td { padding: 0.25em 0.75em; text-align: left; border-bottom: 1px solid #ddd; }
th { background: #eef; } th a { color: inherit; }
td.num { text-align: right; } .muted { color: #777; }
"""


def _e(value: Any) -> str:
    return html.escape(value if isinstance(value, str) else value_text(value), quote=True)


def _page(title: str, body: str) -> bytes:
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    ).encode("utf-8", "replace")


def detail_link(key: str) -> str:
    return "/detail/" + quote(key, safe=":@")


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


class _Column:
    def __init__(self, name: str, title: str, cell: Callable[[Record, float], str], sort) -> None:
        self.name = name
        self.title = title
        self.cell = cell  # record, now -> text (not yet escaped)
        self.sort = sort  # record, now -> sortable key


def _field(name: str) -> _Column:
    def cell(record: Record, now: float) -> str:
        return value_text(record[name]) if name in record else ""

    def sort(record: Record, now: float) -> tuple:
        value = record.get(name)
        number = _number(value)
        return (value is None, number is None, number or 0, cell(record, now).lower())

    return _Column(name, name.capitalize(), cell, sort)


def _since(name: str, title: str) -> _Column:
    """A column showing how long ago the epoch-seconds field ``name`` was."""

    def cell(record: Record, now: float) -> str:
        when = _number(record.get(name))
        return "" if when is None else format_age(now - when)

    def sort(record: Record, now: float) -> tuple:
        when = _number(record.get(name))
        return (when is None, -(when or 0))

    return _Column(name, title, cell, sort)


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
_BY_NAME = {column.name: column for column in COLUMNS}
DEFAULT_ORDER = ("type", "project", "name", "port")


def index_page(
    title: str,
    records: list[tuple[str, Record]],
    now: float,
    sort: str | None = None,
    type_filter: str | None = None,
) -> bytes:
    """The table of services: one row per ``(key, record)``, each linking to its detail page.

    ``sort`` names a column (unknown names fall back to the default order);
    ``type_filter`` keeps one type of service.
    """
    counts = Counter(value_text(r.get("type", "")) for _, r in records)
    if type_filter is not None:
        records = [(k, r) for k, r in records if value_text(r.get("type", "")) == type_filter]
    order = [sort] if sort in _BY_NAME else DEFAULT_ORDER
    keys = [_BY_NAME[name].sort for name in order]
    records = sorted(records, key=lambda item: [key(item[1], now) for key in keys])

    def link(params: dict[str, str]) -> str:
        return "/?" + urlencode({k: v for k, v in params.items() if v is not None})

    by_type = " &middot; ".join(
        f"<a href='{_e(link({'type': name, 'sort': sort}))}'>{_e(name or '(no type)')}</a> {count}"
        for name, count in sorted(counts.items())
    )
    shown = "all" if type_filter is None else f"type {_e(type_filter)}"
    heads = "".join(
        f"<th><a href='{_e(link({'type': type_filter, 'sort': c.name}))}'>{_e(c.title)}</a></th>"
        for c in COLUMNS
    )
    rows = []
    for key, record in records:
        cells = []
        for column in COLUMNS:
            text = _e(column.cell(record, now))
            if column.name == "name":
                text = f"<a href='{_e(detail_link(key))}'>{text or _e(key)}</a>"
            cells.append(f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    body = (
        f"<h1>{_e(title)}</h1>\n"
        f"<p>{len(records)} of {sum(counts.values())} services shown ({shown}). "
        f"By type: {by_type or 'none'}. <a href='/'>all</a> &middot; "
        "<a href='/query.json'>JSON</a> &middot; <a href='/query.text'>text</a></p>\n"
        f"<table>\n<tr>{heads}</tr>\n" + "\n".join(rows) + "\n</table>\n"
        "<p class='muted'>Click a column to sort by it, a name for the whole record.</p>"
    )
    return _page(title, body)


def detail_page(title: str, key: str, record: Record, now: float) -> bytes:
    """Every field of one record."""
    rows = "\n".join(
        f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>"
        for name, value in sorted(record.items())
    )
    heard = _number(record.get("lastheardfrom"))
    age = "" if heard is None else f" &middot; heard from {format_age(now - heard)} ago"
    body = (
        f"<p><a href='/'>&larr; {_e(title)}</a></p>\n<h1>{_e(key)}</h1>\n"
        f"<p class='muted'>key {_e(key)}{age}</p>\n<table>\n{rows}\n</table>"
    )
    return _page(f"{key} - {title}", body)


def error_page(status: int, reason: str, message: str) -> bytes:
    body = (
        f"<h1>{status} {_e(reason)}</h1>\n<p>{_e(message)}</p>\n"
        "<p><a href='/'>back to the catalog</a></p>"
    )
    return _page(f"{status} {reason}", body)
