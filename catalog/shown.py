"""What the table of services shows of a record, kept beside it and cut to size, sans-IO.

The web page (``catalog.listing``, ``catalog.pages``) shows eight fields of each
row. Parsing each shown row's whole record let 100 records of 261 KB make one
page cost 0.5 s and 600 MB of memory, and values printed whole made a 25 MB
page of 100 rows. So each record's shown fields are taken when it is stored
(``summary``), text cut to ``MAX_SHOWN`` characters, and kept as JSON bytes
(about 150 bytes for a typical record; as Python objects they would cost several
times that for each of 100,000 records): a page parses 100 small summaries, and
its size is bounded whatever the records hold.
"""

from __future__ import annotations

from typing import Any

import orjson

from catalog.formats import value_text

# The fields of the table's columns (catalog.listing.COLUMNS), in their order.
SHOWN_FIELDS = ("type", "project", "owner", "name", "port", "address", "lastheardfrom", "starttime")
MAX_SHOWN = 100  # characters of a value shown in the table (and searched by its filter)
ELLIPSIS = "…"


def cut(text: str, limit: int = MAX_SHOWN) -> str:
    """``text``, or its first ``limit - 1`` characters and an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def shown_value(value: Any) -> Any:
    """A field value as the table shows it: numbers, booleans and null as they are
    (their size is bounded: orjson reads integers past 64 bits as floats), anything
    else as its text (``value_text``), cut."""
    if value is None or isinstance(value, bool | int | float):
        return value
    return cut(value_text(value))


def summary(record: dict[str, Any]) -> bytes:
    """The shown fields of ``record`` (those it has), as JSON."""
    return orjson.dumps(
        {name: shown_value(record[name]) for name in SHOWN_FIELDS if name in record}
    )
