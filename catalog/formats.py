"""How records are shown as text: field values, ages, and the ``/query.text`` listing.

Shared by the web pages, the ``/query.text`` reply and the ``python -m catalog.query``
table, so that a record reads the same everywhere.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def value_text(value: Any) -> str:
    """A field value for people: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def one_line(text: str) -> str:
    """``text`` with control characters shown as escapes, so that a value can
    neither break a line-oriented format nor send escape sequences to a terminal."""
    return _CONTROL.sub(lambda m: _SHORT.get(m.group()) or f"\\u{ord(m.group()):04x}", text)


def format_age(seconds: float) -> str:
    """A duration, compactly: ``42s``, ``7m``, ``3h``, ``12d``."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def text_listing(records: list[dict[str, Any]]) -> bytes:
    """The ``/query.text`` reply: ``key value`` lines, a blank line after each record."""
    lines = []
    for record in records:
        lines += [f"{one_line(key)} {one_line(value_text(v))}" for key, v in record.items()]
        lines.append("")
    return ("\n".join(lines) + "\n").encode() if lines else b""
