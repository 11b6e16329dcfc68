"""The wire formats of the LS and the TS, sans-IO: bytes in, bytes out.

client -> LS: one host name a line. LS -> client: one answer line per query, in
the order of the queries: the TS's answer as it came (``GOOGLE.com 46.1.3.7 A IN``),
``NAME - TIMED OUT`` or ``NAME - ERROR invalid host name: REASON``.

LS -> TS: ``ID NAME``; TS -> LS: ``ID ANSWER`` when its table holds NAME, else
nothing. ID is the LS's decimal query number, so that an answer arriving after
its query timed out cannot be taken for the answer to a later query. A TS also
answers the assignment's bare ``NAME`` lines with a bare ``ANSWER``, so that it
can be tried by hand with ``nc``.

Every line ends with ``\\n``; a ``\\r`` before it and surrounding blanks are ignored.
"""

from __future__ import annotations

import re

# RFC 1035's limit on a whole name; nothing longer can be in any table.
MAX_NAME = 253
# Bounds on one line (framing), above the longest valid one: a longer line is
# not a mistake in a name but a peer that does not speak the protocol.
MAX_QUERY_LINE = 4096
MAX_ANSWER_LINE = 4096
# Decimal digits of a query id: 2**64 needs 20.
MAX_ID_DIGITS = 20

UTF8_BOM = b"\xef\xbb\xbf"

TIMED_OUT = b" - TIMED OUT"
INVALID = b" - ERROR invalid host name: "
# How much of an invalid name is echoed back in the error line.
SHOWN_CHARS = 64

_PLAIN_NAME = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_NAME)


def fold(name: bytes) -> bytes:
    """The key under which a name is matched: DNS compares ASCII letters
    case-insensitively and every other byte exactly (RFC 4343)."""
    return name.lower()


def name_problem(name: bytes) -> str | None:
    """Why ``name`` cannot be a host name, or None if it can.

    A host name here is 1 to 253 bytes of UTF-8 with no blank and no control
    character; letters beyond ASCII are allowed for tables of internationalised names.
    """
    if _PLAIN_NAME.fullmatch(name):
        return None
    if not name:
        return "empty"
    if len(name) > MAX_NAME:
        return f"longer than {MAX_NAME} bytes"
    try:
        text = name.decode()
    except UnicodeDecodeError:
        return "not valid UTF-8"
    if not text.isprintable() or any(char.isspace() for char in text):
        return "contains blanks or control characters"
    return None


def file_lines(data: bytes) -> list[bytes]:
    """The lines of a table or names file, without the UTF-8 byte-order mark that
    some editors put first (else it would be part of the first name)."""
    return data.removeprefix(UTF8_BOM).split(b"\n")


def query_name(line: bytes) -> bytes | None:
    """The name in a client's query line, or None for a blank line (no query)."""
    return line.strip() or None


def shown(name: bytes) -> bytes:
    """``name`` made safe to echo on one line: non-printable characters escaped, truncated."""
    text = name.decode(errors="backslashreplace")
    if len(text) > SHOWN_CHARS:
        text = text[:SHOWN_CHARS] + "..."
    safe = "".join(c if c.isprintable() and not c.isspace() else f"\\x{ord(c):02x}" for c in text)
    return safe.encode()


def timed_out_answer(name: bytes) -> bytes:
    """The answer when no TS answered in time, with the client's spelling."""
    return name + TIMED_OUT


def invalid_answer(name: bytes, problem: str) -> bytes:
    """The LS's answer to a query that cannot be a host name (``name_problem``)."""
    return shown(name) + INVALID + problem.encode()


def line_too_long_answer() -> bytes:
    """The last line a client gets when it exceeds the line bound."""
    return b"- ERROR line too long: more than %d bytes without a newline" % MAX_QUERY_LINE


# What a TS that serves its project's LSs over TLS says to a peer speaking plain
# text (the assignment's LS, nc) before it closes: the reason, on one line.
AUTHENTICATION_REQUIRED = (
    b"- ERROR authentication required: this TS answers only the LSs of its project, "
    b"over TLS with the project's secret (python -m lb.ls PORT --project NAME; docs/lb.md)\n"
)


def encode_ts_query(query_id: int, name: bytes) -> bytes:
    return b"%d %s\n" % (query_id, name)


def decode_ts_query(line: bytes) -> tuple[bytes | None, bytes] | None:
    """``(id, name)`` from an LS line, ``(None, name)`` from a bare assignment-style
    line, None for anything else (a TS ignores it)."""
    fields = line.split()
    if len(fields) == 1:
        return None, fields[0]
    if len(fields) == 2 and fields[0].isdigit() and len(fields[0]) <= MAX_ID_DIGITS:
        return fields[0], fields[1]
    return None


def encode_ts_answer(query_id: bytes | None, answer: bytes) -> bytes:
    """A TS's reply line: the id the query came with, if it came with one."""
    if query_id is None:
        return answer + b"\n"
    return query_id + b" " + answer + b"\n"


def decode_ts_answer(line: bytes) -> tuple[int, bytes] | None:
    """``(id, answer)`` from a TS's reply line, or None if it is not one."""
    query_id, _, answer = line.strip().partition(b" ")
    answer = answer.strip()
    if not answer or not query_id.isdigit() or len(query_id) > MAX_ID_DIGITS:
        return None
    return int(query_id), answer


def answer_name(answer: bytes) -> bytes:
    """The name an answer is about: its first field."""
    return answer.split(None, 1)[0]


def answers_query(answer: bytes, name: bytes) -> bool:
    """Whether an LS's answer line is about ``name`` (letters in any case): a TS's
    entry or a time-out names it, an invalid-name error echoes it as ``shown``."""
    fields = answer.split(None, 1)
    if fields and fold(fields[0]) == fold(name):
        return True
    return answer.startswith(shown(name) + INVALID)
