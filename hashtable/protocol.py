"""The hash table's wire protocol, sans-IO: lines of JSON to and from ``Request``/``Outcome``.

One request or reply per ``\\n``-terminated line (framing is ``netkit.framing``'s
job). The server side turns a request line into a ``Request`` or, when the line
is not a valid request, into an INVALID ``Outcome`` saying what is wrong, and an
``Outcome`` into a reply line. The client side does the reverse. No sockets
here, so every rule is unit-testable; ``docs/protocol.md`` is the user's view.

``parse_request`` is the server's hot path: one ``orjson`` parse, one dict
lookup for the method, one pass over the fields.
"""

from __future__ import annotations

from typing import Any

import orjson

from hashtable.request import METHODS, MUTATIONS, OK_NONE, Outcome, Request, Status
from hashtable.sessions import MAX_CLIENT_ID, MAX_SEQ

# orjson refuses to encode deeper than 254 levels; a stored value is wrapped by the
# log record and by replies (scan: object > array > array > value), so values get a margin.
MAX_VALUE_DEPTH = 200
_MAX_MESSAGE_QUOTE = 80

_loads = orjson.loads
_dumps = orjson.dumps
_NEWLINE = orjson.OPT_APPEND_NEWLINE
_JSONDecodeError = orjson.JSONDecodeError


class ProtocolError(ValueError):
    """A reply line that does not follow the protocol (client side)."""


# Field kinds. A request's fields are exactly its method's required fields plus,
# for mutations, the optional exactly-once fields; anything else is refused.
_STR = "a string"
_ANY = "any JSON value"
_ATOMIC = "a string, number, boolean or null"
_CLIENT = f"a string of 1 to {MAX_CLIENT_ID} characters"
_SEQ = "an integer from 1 to 2**63-1"
_ACK = "an integer from 0 to 2**63-2"

_REQUIRED: dict[str, tuple[str, ...]] = {
    "insert": ("key", "value"),
    "lookup": ("key",),
    "remove": ("key",),
    "scan": ("regex",),
    "size": (),
    "query": ("subkey", "subvalue"),
}
_KINDS = {
    "key": _STR,
    "value": _ANY,
    "regex": _STR,
    "subkey": _STR,
    "subvalue": _ATOMIC,
    "client": _CLIENT,
    "seq": _SEQ,
    "ack": _ACK,
}
_EXACTLY_ONCE = ("client", "seq", "ack")
assert set(_REQUIRED) == METHODS

# method -> {field: kind} of every field it accepts
_FIELDS: dict[str, dict[str, str]] = {
    method: {
        name: _KINDS[name] for name in required + (_EXACTLY_ONCE if method in MUTATIONS else ())
    }
    for method, required in _REQUIRED.items()
}
_METHOD_LIST = ", ".join(_REQUIRED)


# ---------------------------------------------------------------- server side


def parse_request(line: bytes) -> Request | Outcome:
    """A request line (without its ``\\n``) -> the ``Request``, or an INVALID ``Outcome``."""
    try:
        obj = _loads(line)
    except _JSONDecodeError as exc:
        return Outcome.invalid(_json_problem(line, exc))
    if type(obj) is dict and len(obj) == 2 and obj.get("method") == "lookup":
        # The most frequent request, checked in full at half the general cost.
        key = obj.get("key")
        if type(key) is str:
            return Request("lookup", key)
    if type(obj) is not dict:
        return Outcome.invalid(f"a request must be a JSON object, not {_kind(obj)}")
    method = obj.pop("method", None)
    fields = _FIELDS.get(method) if type(method) is str else None
    if fields is None:
        return Outcome.invalid(_method_problem(method))
    session = 0  # exactly-once fields present
    for name, value in obj.items():
        kind = fields.get(name)
        if kind is None:
            return Outcome.invalid(f"{method} takes no field {_quote(name)}")
        if kind is _STR:
            if type(value) is not str:
                return _wrong_type(method, name, kind, value)
        elif kind is _ANY:
            if type(value) in _CONTAINERS and _too_deep(line, value):
                return Outcome.invalid(f'"value" nests deeper than {MAX_VALUE_DEPTH} levels')
        elif kind is _ATOMIC:
            if type(value) in _CONTAINERS:
                return _wrong_type(method, name, kind, value)
        else:
            if not _SESSION_CHECKS[kind](value):
                return _wrong_type(method, name, kind, value)
            session += 1
    if len(obj) - session != len(_REQUIRED[method]) or (session and _session_wrong(obj)):
        return Outcome.invalid(_fields_problem(method, obj))
    return Request(method, **obj)


def encode_reply(outcome: Outcome) -> bytes:
    """An ``Outcome`` -> its reply line, ``\\n`` included."""
    if outcome.status is Status.OK:
        if outcome.result is None:
            return _OK_NONE_LINE
        try:
            return _dumps({"status": "ok", "result": outcome.result}, option=_NEWLINE)
        except orjson.JSONEncodeError as exc:
            # The protocol's bounds make this unreachable; if it ever happens, the
            # client gets an answer and the server goes on.
            outcome = Outcome.failed("ServerError", f"the result cannot be encoded: {exc}")
    return _dumps(
        {"status": outcome.status.value, "error": outcome.error, "message": outcome.message},
        option=_NEWLINE,
    )


_OK_NONE_LINE = b'{"status":"ok","result":null}\n'
_CONTAINERS = (dict, list)


def _check_client(value: Any) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_CLIENT_ID


def _check_seq(value: Any) -> bool:
    return type(value) is int and 1 <= value <= MAX_SEQ


def _check_ack(value: Any) -> bool:
    return type(value) is int and 0 <= value < MAX_SEQ


_SESSION_CHECKS = {_CLIENT: _check_client, _SEQ: _check_seq, _ACK: _check_ack}


def _session_wrong(obj: dict[str, Any]) -> bool:
    seq = obj.get("seq")
    if seq is None or "client" not in obj:
        return True
    ack = obj.get("ack")
    return ack is not None and ack >= seq


def _fields_problem(method: str, obj: dict[str, Any]) -> str:
    """Why the fields present do not make a request (missing field, half a session id)."""
    for name in _REQUIRED[method]:
        if name not in obj:
            return f'{method} needs the field "{name}"'
    if ("client" in obj) != ("seq" in obj):
        return '"client" and "seq" go together'
    if "ack" in obj:
        if "seq" not in obj:
            return '"ack" needs "client" and "seq"'
        if obj["ack"] >= obj["seq"]:
            return '"ack" must be less than "seq" (a client cannot hold the reply it is asking for)'
    raise AssertionError(f"no problem found with {method} fields {sorted(obj)}")


def _too_deep(line: bytes, value: Any) -> bool:
    # Counting brackets in the raw line (C speed) rules out almost every value;
    # only a line with that many brackets, some perhaps inside strings, is walked.
    if line.count(b"[") + line.count(b"{") <= MAX_VALUE_DEPTH:
        return False
    level = [value]
    for _ in range(MAX_VALUE_DEPTH):
        level = [
            child
            for item in level
            for child in (item.values() if type(item) is dict else item)
            if type(child) in _CONTAINERS
        ]
        if not level:
            return False
    return True


def _json_problem(line: bytes, exc: orjson.JSONDecodeError) -> str:
    if not line.strip():
        return "empty request: send one JSON object per line"
    return f"not valid JSON ({exc})"


def _method_problem(method: Any) -> str:
    if method is None:
        return f'missing field "method" (one of {_METHOD_LIST})'
    if type(method) is not str:
        return f'field "method" must be a string, not {_kind(method)}'
    return f"unknown method {_quote(method)} (methods: {_METHOD_LIST})"


def _wrong_type(method: str, name: str, kind: str, value: Any) -> Outcome:
    return Outcome.invalid(f'{method}: field "{name}" must be {kind}, not {_describe(value)}')


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _describe(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {_quote(value)}"
    return _kind(value)


def _quote(text: str) -> str:
    """``text`` as a JSON string for a message, shortened: messages echo client input."""
    if len(text) > _MAX_MESSAGE_QUOTE:
        text = text[:_MAX_MESSAGE_QUOTE] + "..."
    return _dumps(text).decode()


# ---------------------------------------------------------------- client side


def encode_request(request: Request) -> bytes:
    """A ``Request`` -> its request line, ``\\n`` included.

    Raises ``ValueError`` for an unknown method and ``TypeError`` (orjson's
    ``JSONEncodeError``) for a value JSON cannot carry. Field types are the
    server's to check, so that there is one set of rules.
    """
    required = _REQUIRED.get(request.method)
    if required is None:
        raise ValueError(_method_problem(request.method))
    message: dict[str, Any] = {"method": request.method}
    for name in required:
        message[name] = getattr(request, name)
    if request.seq is not None:
        message["client"] = request.client
        message["seq"] = request.seq
        if request.ack is not None:
            message["ack"] = request.ack
    return _dumps(message, option=_NEWLINE)


def decode_reply(line: bytes) -> Outcome:
    """A reply line -> its ``Outcome``. Raises ``ProtocolError`` if it is not a reply."""
    try:
        reply = _loads(line)
        status = reply["status"]
        if status == "ok":
            result = reply["result"]
            return OK_NONE if result is None else Outcome(Status.OK, result)
        if status in ("failed", "invalid"):
            error, message = reply["error"], reply["message"]
            if type(error) is str and type(message) is str:
                return Outcome(Status(status), None, error, message)
    except (_JSONDecodeError, KeyError, TypeError):
        pass
    shown = line[:_MAX_MESSAGE_QUOTE] + (b"..." if len(line) > _MAX_MESSAGE_QUOTE else b"")
    raise ProtocolError(f"not a hash table reply: {shown!r}")
