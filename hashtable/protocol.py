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

import dataclasses
import enum
import math
import re
from typing import Any

import orjson

from hashtable.request import (
    ACCEPTED,
    FIELDS,
    MAX_CLIENT_ID,
    MAX_QUOTE,
    MAX_VALUE_DEPTH,
    MUTATIONS,
    OK_NONE,
    REQUIRED,
    Outcome,
    Request,
    Status,
    field_problem,
    kind_of,
    method_problem,
    quote,
    session_problem,
    too_deep,
)

__all__ = [
    "MAX_CLIENT_ID",
    "MAX_VALUE_DEPTH",
    "ProtocolError",
    "decode_outcome",
    "decode_reply",
    "encode_outcome",
    "encode_reply",
    "encode_request",
    "parse_request",
]

_loads = orjson.loads
_dumps = orjson.dumps
_NEWLINE = orjson.OPT_APPEND_NEWLINE
_JSONDecodeError = orjson.JSONDecodeError
_CONTAINERS = (dict, list)
# method -> {field name: its check}, for the fields the method accepts: one
# lookup tells both whether the field belongs and how to check it.
_CHECKS = {
    method: {name: FIELDS[name].check for name in names} for method, names in ACCEPTED.items()
}
_ANY_VALUE = FIELDS["value"].check  # any JSON value: only its depth is checked, apart

# A request's JSON values (and object keys) at most: what parsing costs is their
# number far more than the bytes (8 MiB of ``[{},{},...]`` is 2.8 million objects,
# 0.6 s to build and 250 MB to hold; 8 MiB of one string, 6 ms), and nobody else
# is served meanwhile. At this bound, the worst parse takes about 30 ms.
MAX_REQUEST_VALUES = 250_000


class ProtocolError(ValueError):
    """A reply line that does not follow the protocol (client side)."""


# ---------------------------------------------------------------- server side


def too_many_values(line: bytes, limit: int = MAX_REQUEST_VALUES) -> bool:
    """Whether the JSON of ``line`` holds more than ``limit`` values and keys, told
    without parsing it: every value but the first, and every key, follows a ``[``,
    ``{``, ``,`` or ``:`` outside a string, so their count outside strings bounds it
    (docs/protocol.md counts so). Everything is C-speed byte counting and
    splitting: only a line with that many such bytes has its strings cut out,
    which takes its escaped backslashes and quotes out first, so that the quotes
    left are the strings' own."""
    if len(line) <= limit:  # no more separators than bytes
        return False
    if _separators(line) <= limit:
        return False
    if b"\\" in line:
        line = line.replace(b"\\\\", b"").replace(b'\\"', b"")
    if line.count(b'"') // 2 > limit:
        return True  # that many strings already
    return _separators(b"".join(line.split(b'"')[::2])) > limit  # what is outside strings


def _separators(text: bytes) -> int:
    return text.count(b",") + text.count(b":") + text.count(b"[") + text.count(b"{")


def parse_request(line: bytes, max_values: int = MAX_REQUEST_VALUES) -> Request | Outcome:
    """A request line (without its ``\\n``) -> the ``Request``, or an INVALID ``Outcome``.

    The rules are ``hashtable.request``'s. A mutation whose exactly-once fields
    are good but whose other fields are not comes back as a ``Request`` with its
    ``problem`` set: the database answers it invalid and records its number.
    """
    if too_many_values(line, max_values):
        return Outcome.invalid(
            f"request holds more than {max_values} JSON values (arrays, objects, keys, "
            "strings, numbers...; counted by the commas, colons and brackets outside "
            "strings): more than the server parses in one request (--max-request-values)"
        )
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
        return Outcome.invalid(f"a request must be a JSON object, not {kind_of(obj)}")
    method = obj.pop("method", None)
    checks = _CHECKS.get(method) if type(method) is str else None
    if checks is None:
        return Outcome.invalid(method_problem(method))
    problem = None
    for name, value in obj.items():
        check = checks.get(name)
        if check is None:
            problem = f"{method} takes no field {quote(name)}"
            break
        if check is _ANY_VALUE:
            if type(value) in _CONTAINERS and _too_deep(line, value):
                problem = f'"value" nests deeper than {MAX_VALUE_DEPTH} levels'
                break
        elif not check(value):
            problem = field_problem(method, name, value)
            break
    else:
        for name in REQUIRED[method]:
            if name not in obj:
                problem = f'{method} needs the field "{name}"'
                break
        else:
            problem = session_problem(
                obj.get("client"), obj.get("seq"), obj.get("ack"), obj.get("version")
            )
            if problem is None:
                return Request(method, **obj)
    return _refused(method, obj, problem)


def _refused(method: str, obj: dict[str, Any], problem: str) -> Request | Outcome:
    """An invalid request: recorded under its number if it is a mutation that
    carries good exactly-once fields (``Request.problem``), else just refused."""
    client, seq, ack = obj.get("client"), obj.get("seq"), obj.get("ack")
    if (
        method in MUTATIONS
        and FIELDS["client"].check(client)
        and FIELDS["seq"].check(seq)
        and (ack is None or FIELDS["ack"].check(ack))
        and session_problem(client, seq, ack) is None
    ):
        return Request(method, client=client, seq=seq, ack=ack, problem=problem)
    return Outcome.invalid(problem)


_HTTP_REQUEST = re.compile(rb"\s*(GET|HEAD|POST|PUT|DELETE|CONNECT|OPTIONS|TRACE|PATCH) ", re.I)


def is_http_request(first_line: bytes) -> bool:
    """Whether a connection's first line is an HTTP request line (a browser, or a
    web page making one send a request to this port)."""
    return _HTTP_REQUEST.match(first_line) is not None


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
    return _dumps(encode_outcome(outcome), option=_NEWLINE)


_OK_NONE_LINE = b'{"status":"ok","result":null}\n'


def encode_outcome(outcome: Outcome) -> dict[str, Any]:
    """An ``Outcome`` as the JSON object that replies (and checkpoints) carry."""
    if outcome.status is Status.OK:
        return {"status": "ok", "result": outcome.result}
    return {"status": outcome.status.value, "error": outcome.error, "message": outcome.message}


def decode_outcome(data: Any) -> Outcome:
    """The inverse of ``encode_outcome``; ``ValueError`` when ``data`` is not one."""
    if type(data) is not dict:
        raise ValueError("an outcome must be an object")
    status = data.get("status")
    if status == "ok":
        if "result" not in data:
            raise ValueError("an ok outcome needs a result")
        result = data["result"]
        return OK_NONE if result is None else Outcome(Status.OK, result)
    error, message = data.get("error"), data.get("message")
    if status not in ("failed", "invalid") or type(error) is not str:
        raise ValueError(f"not an outcome: status {status!r}")
    if type(message) is not str:
        raise ValueError("an outcome's message must be a string")
    return Outcome(Status(status), None, error, message)


def _too_deep(line: bytes, value: Any) -> bool:
    # Counting brackets in the raw line (C speed) rules out almost every value;
    # only a line with that many brackets, some perhaps inside strings, is walked.
    if line.count(b"[") + line.count(b"{") <= MAX_VALUE_DEPTH:
        return False
    return too_deep(value)


def _json_problem(line: bytes, exc: orjson.JSONDecodeError) -> str:
    if not line.strip():
        return "empty request: send one JSON object per line"
    if "not valid UTF-8" in str(exc):  # orjson's message then speaks of surrogates
        try:
            line.decode()
        except UnicodeDecodeError as error:
            return f"not valid JSON: the request is not UTF-8 (byte {error.start + 1})"
    return f"not valid JSON ({exc})"


# The last line a peer gets that speaks plain text to a TLS server, or TLS to a plain one.
AUTHENTICATION_REQUIRED = encode_reply(
    Outcome.failed(
        "AuthenticationRequired",
        "this server requires authentication: TLS with the project's shared secret "
        "(HashTableClient does it; see docs/security.md); nothing was executed",
    )
)
NOT_AUTHENTICATING = encode_reply(
    Outcome.failed(
        "AuthenticationUnsupported",
        "this server does not authenticate (it runs with --no-auth, on loopback only): "
        "connect without TLS (HashTableClient(..., auth=False))",
    )
)


# ---------------------------------------------------------------- client side


def encode_request(request: Request) -> bytes:
    """A ``Request`` -> its request line, ``\\n`` included.

    Raises ``ValueError`` for an unknown method and ``TypeError`` (orjson's
    ``JSONEncodeError``) for a value JSON cannot carry. Field types are the
    server's to check, so that there is one set of rules.
    """
    required = REQUIRED.get(request.method)
    if required is None:
        raise ValueError(method_problem(request.method))
    message: dict[str, Any] = {"method": request.method}
    for name in required:
        message[name] = getattr(request, name)
    if request.seq is not None:
        message["client"] = request.client
        message["seq"] = request.seq
        if request.ack is not None:
            message["ack"] = request.ack
        if request.version is not None:
            message["version"] = request.version
    if request.servers is not None:
        message["servers"] = request.servers
    line = _dumps(message, option=_NEWLINE)
    # orjson writes NaN and infinities as null: the value would change silently.
    if b"null" in line and _non_finite(message):
        raise TypeError("NaN and infinity are not JSON numbers: JSON cannot carry this value")
    return line


def _non_finite(value: Any) -> bool:
    """Whether a NaN or an infinity is in ``value`` (which orjson took: at most
    255 levels deep; orjson refuses float subclasses, and writes dataclasses and
    enumerations as their public fields and values)."""
    if type(value) is float:
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_non_finite(item) for item in value)
    if isinstance(value, enum.Enum):
        return _non_finite(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)  # orjson leaves out the "_private" ones
        return any(_non_finite(getattr(value, f.name)) for f in fields if f.name[:1] != "_")
    return False


def decode_reply(line: bytes) -> Outcome:
    """A reply line -> its ``Outcome``. Raises ``ProtocolError`` if it is not a reply."""
    try:
        return decode_outcome(_loads(line))
    except (_JSONDecodeError, ValueError):
        pass
    shown = line[:MAX_QUOTE] + (b"..." if len(line) > MAX_QUOTE else b"")
    raise ProtocolError(f"not a hash table reply: {shown!r}")
