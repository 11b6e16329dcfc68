"""The catalog's web pages for people, sans-IO: records in, HTML bytes out.

Every piece of text that comes from a record, a key or a request is escaped
with ``html.escape`` (quotes included, since some of it lands in attributes);
nothing else is ever interpolated. Links to records percent-encode the key.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote, urlencode

from catalog.formats import format_age, value_text
from catalog.listing import COLUMNS, MAX_FILTER_LENGTH, Listing, PageQuery
from catalog.order import number_or_none

Record = dict[str, Any]

# Sent with every page: even if something slipped through escaping, no script runs (the
# pages have none), forms go nowhere but here, and no other site may frame them. The
# one image allowed is the empty data: icon, so that browsers ask for no /favicon.ico.
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'",
    ),
)
_API_LINKS = "<a href='/query.json'>JSON</a> &middot; <a href='/query.text'>text</a>"

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table { border-collapse: collapse; }
th, td { padding: 0.25em 0.75em; text-align: left; border-bottom: 1px solid #ddd; }
th { background: #eef; } th a { color: inherit; }
td.num { text-align: right; } .muted { color: #777; }
form { margin: 0.5em 0; } .pager { margin: 0.5em 0; }
"""


def _e(value: Any) -> str:
    return html.escape(value if isinstance(value, str) else value_text(value), quote=True)


def _page(title: str, body: str) -> bytes:
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{_e(title)}</title>"
        "<link rel='icon' href='data:,'>"
        f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    ).encode("utf-8", "replace")


def detail_link(key: str) -> str:
    return "/detail/" + quote(key, safe=":@")


def _link(params: dict[str, str]) -> str:
    return "/?" + urlencode(params) if params else "/"


def _summary(listing: Listing) -> str:
    query = listing.query
    shown = len(listing.rows)
    where = []
    if query.type is not None:
        where.append(f"of type {_e(query.type)}")
    if query.text:
        where.append(f"containing &ldquo;{_e(query.text)}&rdquo;")
    matched = f"{listing.matched:,} {' '.join(where)}" if where else f"{listing.matched:,}"
    rows = f"{listing.first_row:,}&ndash;{listing.first_row + shown - 1:,}" if shown else "none"
    return f"<p>Services {rows} of {matched} ({listing.total:,} in all).</p>"


def _type_links(listing: Listing) -> str:
    query = listing.query
    if listing.types is None:
        return (
            f"<p>{listing.type_count:,} types (too many to list: the filter finds one). "
            f"<a href='/'>all</a> &middot; {_API_LINKS}</p>"
        )
    links = " &middot; ".join(
        f"<a href='{_e(_link(query.params(type=name, page=None)))}'>{_e(name or '(no type)')}</a> {count:,}"
        for name, count in listing.types
    )
    return f"<p>By type: {links or 'none'}. <a href='/'>all</a> &middot; {_API_LINKS}</p>"


def _filter_form(query: PageQuery) -> str:
    """The text filter; the sort order and the type chosen stay as they are."""
    kept = "".join(
        f"<input type='hidden' name='{name}' value='{_e(value)}'>"
        for name, value in query.params(q=None).items()
    )
    return (
        f"<form method='get' action='/'>{kept}<label>Filter: "
        f"<input type='search' name='q' value='{_e(query.text)}' maxlength='{MAX_FILTER_LENGTH}' "
        "placeholder='text in any column'></label> <button type='submit'>Filter</button> "
        "<a href='/'>clear</a></form>"
    )


def _pager(listing: Listing) -> str:
    query, page, pages = listing.query, listing.page, listing.pages
    if pages == 1:
        return ""

    def to(number: int, text: str) -> str:
        if number == page or not 1 <= number <= pages:
            return f"<span class='muted'>{text}</span>"
        target = _link(query.params(page=number if number > 1 else None))
        return f"<a href='{_e(target)}' rel='{'next' if number > page else 'prev'}'>{text}</a>"

    return (
        f"<p class='pager'>{to(1, '&laquo; first')} {to(page - 1, '&lsaquo; previous')} "
        f"page {page:,} of {pages:,} {to(page + 1, 'next &rsaquo;')} {to(pages, 'last &raquo;')}</p>"
    )


def index_page(title: str, listing: Listing, now: float) -> bytes:
    """The table of services: one page of ``listing``, each row linking to its record."""
    query = listing.query
    heads = "".join(
        f"<th><a href='{_e(_link(query.params(sort=column.name, page=None)))}'>{_e(column.title)}</a></th>"
        for column in COLUMNS
    )
    rows = []
    for key, record in listing.rows:
        cells = []
        for column in COLUMNS:
            text = _e(column.cell(record, now))
            if column.name == "name":
                text = f"<a href='{_e(detail_link(key))}'>{text or _e(key)}</a>"
            cells.append(f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    body = (
        f"<h1>{_e(title)}</h1>\n{_summary(listing)}\n{_type_links(listing)}\n"
        f"{_filter_form(query)}\n{_pager(listing)}\n"
        f"<table>\n<tr>{heads}</tr>\n" + "\n".join(rows) + "\n</table>\n"
        f"{_pager(listing)}\n"
        "<p class='muted'>Click a column to sort by it, a name for the whole record.</p>"
    )
    return _page(title, body)


def detail_page(title: str, key: str, record: Record, now: float) -> bytes:
    """Every field of one record."""
    rows = "\n".join(
        f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>"
        for name, value in sorted(record.items())
    )
    heard = number_or_none(record.get("lastheardfrom"))
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
