"""The hash table's requests and outcomes, and the one set of rules a request must follow.

``hashtable.protocol`` turns wire lines into ``Request`` objects and ``Outcome``
objects into reply lines; ``hashtable.database`` executes requests. The rules
of a valid request (which fields each method takes, what each field may hold,
how the exactly-once fields go together) live here, once: the wire parser
checks them field by field as it reads a line, and ``validate`` checks a
``Request`` built any other way (by a program using the database directly, or
rebuilt from the log during recovery). docs/protocol.md states the same rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

import orjson

# Methods that change the table: logged, made durable, and deduplicated when retried.
MUTATIONS = frozenset({"insert", "remove"})
READS = frozenset({"lookup", "scan", "size", "query"})
# Reads that visit every key: run a slice at a time over a snapshot of the table.
WHOLE_TABLE_READS = frozenset({"scan", "query"})
METHODS = MUTATIONS | READS

MAX_CLIENT_ID = 128
MAX_SEQ = 2**63 - 1  # the log's JSON codec (orjson) holds 64-bit integers
MAX_VERSION = MAX_SEQ
# orjson refuses to encode deeper than 254 levels; a stored value is wrapped by the
# log record and by replies (scan: object > array > array > value), so values get a margin.
MAX_VALUE_DEPTH = 200
MAX_QUOTE = 80  # characters of client input echoed in a message
MAX_SERVERS = 1024  # a cluster's N at most: a size census answers N counts


class Status(StrEnum):
    OK = "ok"  # the operation succeeded; ``result`` holds its value
    FAILED = "failed"  # the operation failed, e.g. KeyError for a missing key
    INVALID = "invalid"  # the request itself is wrong: not JSON, unknown method, bad regex, ...


@dataclass(slots=True)
class Request:
    """One operation. Only the fields its method uses are set.

    ``client``/``seq`` identify a mutation so that a retried one is applied once:
    ``client`` is an opaque id chosen by the client (e.g. a UUID), ``seq`` grows
    by one per mutation of that client. ``ack`` tells the server that the client
    has the replies of all its mutations numbered ``<= ack``, so it may forget them.

    ``version``: a versioned write (the cluster's replicas, docs/cluster.md):
    ``[number, writer]``, ordered as a pair; a server keeps, per key, the newest
    version it was sent, an older one changes nothing, and a remove leaves a
    tombstone with its version. The writer id is the writer's own, the same on
    every server (a session's ``client`` id may change: a server that forgot a
    session makes the client start a new one). Only with ``client`` and ``seq``.

    ``servers``: a ``size`` that counts by placement (``hashtable.placement``) over a
    cluster of that many servers: the census a cluster client checks its replicas by.

    ``problem``: set by the wire parser on a mutation whose exactly-once fields
    are good but whose other fields are not. Such a request is answered invalid
    and still recorded under its number, so that the client's later mutations
    (numbered after it) are not refused as coming from an unknown session.
    """

    method: str
    key: str | None = None
    value: Any = None
    regex: str | None = None
    subkey: str | None = None
    subvalue: Any = None
    client: str | None = None
    seq: int | None = None
    ack: int | None = None
    version: list[Any] | None = None  # [number, writer]
    servers: int | None = None  # size: a census over a cluster of this many servers
    problem: str | None = None


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 3x to build, on the hot path
class Outcome:
    """What a request produced: a result, a failed operation, or an invalid request."""

    status: Status
    result: Any = None
    error: str | None = None  # for FAILED: the exception's name, e.g. "KeyError"
    message: str | None = None  # for FAILED and INVALID: what went wrong, for people

    @classmethod
    def ok(cls, result: Any = None) -> Outcome:
        return cls(Status.OK, result)

    @classmethod
    def failed(cls, error: str, message: str) -> Outcome:
        return cls(Status.FAILED, None, error, message)

    @classmethod
    def invalid(cls, message: str) -> Outcome:
        return cls(Status.INVALID, None, "InvalidRequest", message)


OK_NONE = Outcome.ok(None)


# ---------------------------------------------------------------- the rules


class Field(NamedTuple):
    kind: str  # what it must be, for messages: "a string", ...
    check: Callable[[Any], bool]


def _is_string(value: Any) -> bool:
    return type(value) is str


def _is_anything(value: Any) -> bool:
    return True  # any JSON value; its depth is checked apart (``too_deep``)


def _is_atomic(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return math.isfinite(value)
    return kind is str or kind is int or kind is bool or value is None


def _is_client(value: Any) -> bool:
    return (
        type(value) is str
        and 0 < len(value) <= MAX_CLIENT_ID
        and value.isascii()
        and value.isprintable()
    )


def _is_seq(value: Any) -> bool:
    return type(value) is int and 1 <= value <= MAX_SEQ


def _is_ack(value: Any) -> bool:
    return type(value) is int and 0 <= value < MAX_SEQ


def _is_servers(value: Any) -> bool:
    return type(value) is int and 1 <= value <= MAX_SERVERS


def _is_version(value: Any) -> bool:
    return (
        type(value) is list
        and len(value) == 2
        and type(value[0]) is int
        and 1 <= value[0] <= MAX_VERSION
        and _is_client(value[1])
    )


FIELDS: dict[str, Field] = {
    "key": Field("a string", _is_string),
    "value": Field("any JSON value", _is_anything),
    "regex": Field("a string", _is_string),
    "subkey": Field("a string", _is_string),
    "subvalue": Field("a string, number, boolean or null", _is_atomic),
    "client": Field(f"1 to {MAX_CLIENT_ID} printable ASCII characters", _is_client),
    "seq": Field("an integer from 1 to 2**63-1", _is_seq),
    "ack": Field("an integer from 0 to 2**63-2", _is_ack),
    "version": Field(
        f"[number, writer]: an integer from 1 to 2**63-1 and 1 to {MAX_CLIENT_ID} printable "
        "ASCII characters",
        _is_version,
    ),
    "servers": Field(f"an integer from 1 to {MAX_SERVERS}", _is_servers),
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "insert": ("key", "value"),
    "lookup": ("key",),
    "remove": ("key",),
    "scan": ("regex",),
    "size": (),
    "query": ("subkey", "subvalue"),
}
SESSION_FIELDS = ("client", "seq", "ack")
# Fields a method may carry besides its required ones and the session's.
OPTIONAL: dict[str, tuple[str, ...]] = {
    "insert": ("version",),
    "remove": ("version",),
    "size": ("servers",),
}
assert set(REQUIRED) == METHODS
# method -> the names of every field it accepts
ACCEPTED: dict[str, frozenset[str]] = {
    method: frozenset(
        required + (SESSION_FIELDS if method in MUTATIONS else ()) + OPTIONAL.get(method, ())
    )
    for method, required in REQUIRED.items()
}
METHOD_LIST = ", ".join(REQUIRED)


def method_problem(method: Any) -> str:
    """Why ``method`` names no method (call only when it does not)."""
    if method is None:
        return f'missing field "method" (one of {METHOD_LIST})'
    if type(method) is not str:
        return f'field "method" must be a string, not {kind_of(method)}'
    return f"unknown method {quote(method)} (methods: {METHOD_LIST})"


def field_problem(method: str, name: str, value: Any) -> str:
    """The message for a field whose value breaks its rule."""
    return f'{method}: field "{name}" must be {FIELDS[name].kind}, not {describe(value)}'


def session_problem(client: Any, seq: Any, ack: Any, version: Any = None) -> str | None:
    """Why the exactly-once fields and ``version`` (each already of a valid kind,
    or None for absent) do not go together, or None when they do."""
    if (client is None) != (seq is None):
        return '"client" and "seq" go together'
    if version is not None and client is None:
        return '"version" needs "client" and "seq" (versioned writes are exactly-once too)'
    if ack is not None:
        if seq is None:
            return '"ack" needs "client" and "seq"'
        if ack >= seq:
            return '"ack" must be less than "seq" (a client cannot hold the reply it is asking for)'
    return None


def too_deep(value: Any) -> bool:
    """True when a value nests containers deeper than ``MAX_VALUE_DEPTH``."""
    level = [value]
    for _ in range(MAX_VALUE_DEPTH):
        level = [
            child
            for item in level
            for child in (item.values() if type(item) is dict else item)
            if type(child) in (dict, list)
        ]
        if not level:
            return False
    return True


def validate(request: Request) -> str | None:
    """Why ``request`` breaks the rules, or None when it follows them.

    For requests not read from the wire: the same rules, the same messages, as
    ``hashtable.protocol.parse_request``.
    """
    return argument_problem(request) or numbering_problem(request)


def argument_problem(request: Request) -> str | None:
    """What is wrong with the method and its fields (all but the numbering), or None."""
    method = request.method
    accepted = ACCEPTED.get(method) if type(method) is str else None
    if accepted is None:
        return method_problem(method)
    for name in REQUIRED[method]:
        value = getattr(request, name)
        if not FIELDS[name].check(value):
            return field_problem(method, name, value)
    if method == "insert" and type(request.value) in (dict, list) and too_deep(request.value):
        return f'"value" nests deeper than {MAX_VALUE_DEPTH} levels'
    for name in OPTIONAL.get(method, ()):
        value = getattr(request, name)
        if value is not None and not FIELDS[name].check(value):
            return field_problem(method, name, value)
    for name in FIELDS:
        if name not in accepted and getattr(request, name) is not None:
            return f"{method} takes no field {quote(name)}"
    return None


def numbering_problem(request: Request) -> str | None:
    """What is wrong with a mutation's exactly-once fields, or None (also for reads,
    which ``argument_problem`` refuses such fields)."""
    if type(request.method) is not str or request.method not in MUTATIONS:
        return None
    for name in SESSION_FIELDS:
        value = getattr(request, name)
        if value is not None and not FIELDS[name].check(value):
            return field_problem(request.method, name, value)
    return session_problem(request.client, request.seq, request.ack, request.version)


# ---------------------------------------------------------------- messages


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else f"a Python {type(value).__name__}"


def describe(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {quote(value)}"
    return kind_of(value)


def quote(text: str) -> str:
    """``text`` as a JSON-style quoted string for a message, shortened: messages
    echo client input."""
    if len(text) > MAX_QUOTE:
        text = text[:MAX_QUOTE] + "..."
    try:
        return orjson.dumps(text).decode()
    except TypeError:  # a lone surrogate: not Unicode text, shown escaped
        return repr(text)
