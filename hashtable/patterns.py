"""A scan's regex, compiled so that compiling it cannot stall or exhaust the server.

The scan's timeouts bound the *matching*; what comes before it is not under
them, and it grows with the pattern. Measured here (regex 2026.11):

- compiling: a 2 MB literal took seconds; and the ``regex`` module unrolls
  counted repeats as it compiles, so a 13-byte ``a{4294967294}`` asks for
  gigabytes (``(?:a{1000}){1000}``: 0.4 s and 270 MB);
- the first search with a compiled pattern builds its tables for the literal
  run in it, in time cubic in the run's length for a repetitive one, and without
  looking at the timeout: ``"x" * 512`` 0.04 s, ``* 1024`` 0.3 s, ``* 4096`` 20 s.

Two bounds keep both to a few hundredths of a second:

- the pattern's length: ``MAX_PATTERN_CHARS``;
- what its counted repeats (``{m}``, ``{m,}``, ``{m,n}``: the minimum ``m`` is
  what gets unrolled) can multiply it to: the length times the product of every
  repeat's minimum, an upper bound whatever the nesting (it ignores which repeat
  holds which), at most ``MAX_UNROLLED`` (a compile then takes 20 ms at most).
  It may refuse a harmless pattern with many repeats in a row; a usual one
  stays far below it.
"""

from __future__ import annotations

import re

import regex

MAX_PATTERN_CHARS = 512
MAX_UNROLLED = 200_000
# A counted repeat as the regex module reads one: ASCII digits only, no spaces.
_COUNTED_REPEAT = re.compile(r"\{([0-9]*)(?:,[0-9]*)?\}")


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is too big to compile on the event loop, or None."""
    if len(pattern) > MAX_PATTERN_CHARS:
        return (
            f"invalid regex: {len(pattern)} characters long, more than the "
            f"{MAX_PATTERN_CHARS} a scan accepts"
        )
    unrolled = len(pattern)
    for minimum in _COUNTED_REPEAT.findall(pattern):
        unrolled *= max(int(minimum or 0), 1)
        if unrolled > MAX_UNROLLED:
            return (
                "invalid regex: its counted repeats ({n}) would unroll it to more than "
                f"{MAX_UNROLLED} items (its length times the product of the repeat counts)"
            )
    return None


def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """``regex.compile(pattern)``, kept in no cache (check ``pattern_problem`` first).
    Raises ``regex.error`` for a bad pattern, as ``regex.compile`` does."""
    try:
        # The module's cache keeps 500 compiled patterns, a client's included; each
        # scan compiles once, so a cache buys nothing here and would hold their memory.
        return regex.compile(pattern, cache_pattern=False)
    finally:
        # Even uncached, the module notes every pattern it compiled (whether it is
        # locale-sensitive) and forgets them only when purged: without this, each
        # distinct pattern a client sends stays in memory for good. Nothing else in
        # the process relies on that cache.
        regex.purge()
