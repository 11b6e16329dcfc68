"""The order of records in the catalog's table, as strings that compare in that order.

A column's order is numbers first (numerically), then every other value by its text,
case-insensitively, then missing values (and ``null``). Encoding that order as one
string per value lets the record store keep its default order in a sorted index
(``RecordStore``) where every comparison is a plain string comparison, which is what
makes the first page of the table cheap whatever the number of records.
"""

from __future__ import annotations

import math
from typing import Any

from catalog.formats import value_text
from catalog.shown import MAX_SHOWN, shown_value

Record = dict[str, Any]

_NUMBER, _TEXT, _MISSING = "\x01", "\x02", "\x03"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SEPARATOR = "\x00"
# The columns of the default order: what a person looks for first.
DEFAULT_ORDER = ("type", "project", "name", "port")


def number_or_none(value: Any) -> int | float | None:
    """``value`` if it is a JSON number (not a boolean), else None."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _number_text(number: int | float) -> str:
    """Fixed-width digits that sort as the numbers do (clamped to 64 bits)."""
    if isinstance(number, float):
        if math.isnan(number):
            return _TEXT + "nan"
        whole = math.floor(number) if math.isfinite(number) else number
        whole = _INT64_MAX if whole > _INT64_MAX else _INT64_MIN if whole < _INT64_MIN else whole
        fraction = number - whole if math.isfinite(number) else 0.0
        return f"{_NUMBER}{int(whole) - _INT64_MIN:020d}.{fraction:.17f}"[:40]
    number = max(_INT64_MIN, min(_INT64_MAX, number))
    return f"{_NUMBER}{number - _INT64_MIN:020d}"


def sort_text(value: Any) -> str:
    """``value``'s place in a column: numbers, then text (case-insensitive), then missing."""
    if value is None:
        return _MISSING
    number = number_or_none(value)
    if number is not None:
        return _number_text(number)
    return _TEXT + value_text(value).lower()


def newest_first(value: Any) -> str:
    """The place of an epoch-seconds value in a column shown as an age: newest first."""
    number = number_or_none(value)
    return _MISSING if number is None else _number_text(-number)


def default_order(record: Record) -> str:
    """The record's place in the default order (type, project, name, port); records
    that tie are ordered by their keys. (Computed for every update: text and
    integers, what records hold there, take the short way.)"""
    parts = []
    for name in DEFAULT_ORDER:
        value = record.get(name)
        kind = type(value)
        if kind is str:
            # Cut as the table shows it: the order of what is shown, and an index
            # that never holds a copy of a 250 KB value.
            parts.append(_TEXT + value[:MAX_SHOWN].lower())
        elif kind is int and _INT64_MIN <= value <= _INT64_MAX:
            parts.append(f"{_NUMBER}{value - _INT64_MIN:020d}")
        else:
            parts.append(sort_text(shown_value(value)))
    return _SEPARATOR.join(parts)
