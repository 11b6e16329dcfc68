"""The wire protocol, sans-IO: every rule of docs/protocol.md without a network."""

from __future__ import annotations

import dataclasses
import enum
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashtable.protocol import (
    MAX_CLIENT_ID,
    MAX_VALUE_DEPTH,
    ProtocolError,
    decode_reply,
    encode_reply,
    encode_request,
    parse_request,
    too_many_values,
)
from hashtable.request import METHODS, Outcome, Request, Status


def parse(obj: object) -> Request | Outcome:
    return parse_request(orjson.dumps(obj))


def invalid_message(line: bytes) -> str:
    outcome = parse_request(line)
    assert isinstance(outcome, Outcome), f"{line!r} was accepted as {outcome!r}"
    assert outcome.status is Status.INVALID and outcome.error == "InvalidRequest"
    return outcome.message


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


class TestValidRequests:
    @pytest.mark.parametrize(
        ("wire", "request_"),
        [
            (
                {"method": "insert", "key": "k", "value": {"a": [1]}},
                Request("insert", "k", {"a": [1]}),
            ),
            ({"method": "insert", "key": "", "value": None}, Request("insert", "", None)),
            ({"method": "lookup", "key": "zebra"}, Request("lookup", "zebra")),
            ({"method": "remove", "key": "k"}, Request("remove", "k")),
            ({"method": "scan", "regex": "^a.*"}, Request("scan", regex="^a.*")),
            ({"method": "size"}, Request("size")),
            (
                {"method": "query", "subkey": "legs", "subvalue": 4},
                Request("query", subkey="legs", subvalue=4),
            ),
            (
                {"method": "query", "subkey": "x", "subvalue": None},
                Request("query", subkey="x", subvalue=None),
            ),
            (
                {"method": "insert", "key": "k", "value": 1, "client": "c", "seq": 3, "ack": 2},
                Request("insert", "k", 1, client="c", seq=3, ack=2),
            ),
            (
                {"method": "remove", "key": "k", "client": "c", "seq": 1},
                Request("remove", "k", client="c", seq=1),
            ),
        ],
    )
    def test_parses(self, wire, request_):
        assert parse(wire) == request_

    def test_field_order_does_not_matter(self):
        line = b'{"key": "k", "value": 2, "method": "insert"}'
        assert parse_request(line) == Request("insert", "k", 2)

    def test_crlf_and_spaces_are_accepted(self):
        # What telnet sends; nc sends a bare \n.
        assert parse_request(b'  {"method": "size"} \r') == Request("size")

    def test_any_unicode_key(self):
        key = "clé \u2603 \U0001f600 \x00 \n"
        assert parse({"method": "lookup", "key": key}) == Request("lookup", key)

    def test_value_at_the_depth_limit(self):
        value = nested(MAX_VALUE_DEPTH)
        assert parse({"method": "insert", "key": "k", "value": value}).value == value

    def test_many_brackets_inside_a_string_are_not_nesting(self):
        value = "[" * 5000
        assert parse({"method": "insert", "key": "k", "value": [value]}).value == [value]

    def test_64_bit_integers_are_kept(self):
        for number in (2**63 - 1, -(2**63), 2**64 - 1):
            assert parse({"method": "insert", "key": "k", "value": number}).value == number


class TestInvalidRequests:
    @pytest.mark.parametrize(
        ("line", "expected"),
        [
            (b"\xff\xfe garbage", "not valid JSON: the request is not UTF-8 (byte 1)"),
            (b'{"method": "lookup", "key": "\xc3"}', "the request is not UTF-8 (byte 30)"),
            (b'{"method": "lookup", "key": "\\ud800"}', "no low surrogate"),  # an escaped lone one
            (b'{"method": "insert", "key": "k", "value": NaN}', "not valid JSON"),
            (b'{"method": "insert", "key": "k", "value": 1e999}', "not valid JSON"),
            (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),  # beyond the parser's depth
            (b'{"method": "size"', "not valid JSON"),
            (b"", "empty request"),
            (b"   \r", "empty request"),
            (b"[1, 2]", "must be a JSON object, not an array"),
            (b'"size"', "must be a JSON object, not a string"),
            (b"null", "must be a JSON object, not null"),
            (b'{"key": "k"}', 'missing field "method"'),
            (b'{"method": 7}', 'field "method" must be a string, not a number'),
            (b'{"method": ["size"]}', 'field "method" must be a string, not an array'),
            (b'{"method": "drop_table"}', 'unknown method "drop_table"'),
            (b'{"method": "lookup"}', 'lookup needs the field "key"'),
            (b'{"method": "insert", "key": "k"}', 'insert needs the field "value"'),
            (b'{"method": "query", "subkey": "a"}', 'query needs the field "subvalue"'),
            (b'{"method": "lookup", "key": 5}', 'field "key" must be a string, not the number 5'),
            (b'{"method": "lookup", "key": null}', 'field "key" must be a string, not null'),
            (b'{"method": "scan", "regex": ["a"]}', 'field "regex" must be a string, not an array'),
            (
                b'{"method": "query", "subkey": "a", "subvalue": {"b": 1}}',
                'field "subvalue" must be',
            ),
            (b'{"method": "query", "subkey": true, "subvalue": 1}', 'field "subkey" must be'),
            (b'{"method": "lookup", "key": "k", "value": 1}', 'lookup takes no field "value"'),
            (b'{"method": "size", "verbose": true}', 'size takes no field "verbose"'),
            (b'{"method": "lookup", "key": "k", "client": "c", "seq": 1}', 'no field "client"'),
        ],
    )
    def test_refused_with_a_reason(self, line, expected):
        assert expected in invalid_message(line)

    def test_value_nested_too_deep(self):
        line = orjson.dumps({"method": "insert", "key": "k", "value": nested(MAX_VALUE_DEPTH + 1)})
        assert f"deeper than {MAX_VALUE_DEPTH}" in invalid_message(line)

    def test_messages_quote_client_input_briefly(self):
        message = invalid_message(orjson.dumps({"method": "x" * 10_000}))
        assert len(message) < 300

    @pytest.mark.parametrize(
        ("fields", "expected"),
        [
            ({"client": "", "seq": 1}, '"client" must be 1 to 128 printable ASCII characters'),
            ({"client": "é\n", "seq": 1}, '"client" must be 1 to 128 printable ASCII characters'),
            ({"client": "c" * (MAX_CLIENT_ID + 1), "seq": 1}, '"client" must be'),
            ({"client": 5, "seq": 1}, '"client" must be'),
            ({"client": "c", "seq": 0}, '"seq" must be an integer from 1'),
            (
                {"client": "c", "seq": True},
                '"seq" must be an integer from 1 to 2**63-1, not a boolean',
            ),
            ({"client": "c", "seq": 1.0}, '"seq" must be an integer'),
            ({"client": "c", "seq": 2**63}, '"seq" must be an integer'),
            ({"client": "c", "seq": 2, "ack": -1}, '"ack" must be an integer from 0'),
            ({"client": "c", "seq": 2, "ack": 2}, '"ack" must be less than "seq"'),
            ({"seq": 1}, '"client" and "seq" go together'),
            ({"client": "c"}, '"client" and "seq" go together'),
            ({"ack": 1}, '"ack" needs "client" and "seq"'),
        ],
    )
    def test_exactly_once_fields(self, fields, expected):
        line = orjson.dumps({"method": "insert", "key": "k", "value": 1, **fields})
        assert expected in invalid_message(line)

    def test_missing_value_is_not_hidden_by_session_fields(self):
        # Good numbering, bad request: refused, but recorded under its number (so the
        # client's next mutation is not refused as coming from an unknown session).
        line = orjson.dumps({"method": "insert", "key": "k", "client": "c", "seq": 1})
        parsed = parse_request(line)
        assert parsed == Request(
            "insert", client="c", seq=1, problem='insert needs the field "value"'
        )

    def test_a_bad_request_with_bad_numbering_is_simply_refused(self):
        line = orjson.dumps({"method": "insert", "key": 5, "value": 1, "client": "c"})
        assert 'field "key" must be a string' in invalid_message(line)


class TestReplies:
    def test_success(self):
        assert orjson.loads(encode_reply(Outcome.ok({"a": 1}))) == {
            "status": "ok",
            "result": {"a": 1},
        }
        assert orjson.loads(encode_reply(Outcome.ok())) == {"status": "ok", "result": None}

    def test_failed_operation(self):
        line = encode_reply(Outcome.failed("KeyError", "no such key: 'k'"))
        assert orjson.loads(line) == {
            "status": "failed",
            "error": "KeyError",
            "message": "no such key: 'k'",
        }

    def test_invalid_request(self):
        line = encode_reply(Outcome.invalid("bad"))
        assert orjson.loads(line) == {
            "status": "invalid",
            "error": "InvalidRequest",
            "message": "bad",
        }

    def test_one_line_each(self):
        for outcome in (
            Outcome.ok("a\nb"),
            Outcome.failed("KeyError", "x\ny"),
            Outcome.invalid(""),
        ):
            line = encode_reply(outcome)
            assert line.endswith(b"\n") and line.count(b"\n") == 1

    def test_a_result_that_cannot_be_encoded_becomes_an_error_reply(self):
        reply = orjson.loads(encode_reply(Outcome.ok(nested(300))))
        assert reply["status"] == "failed" and reply["error"] == "ServerError"

    @pytest.mark.parametrize(
        "outcome",
        [
            Outcome.ok(),
            Outcome.ok([["k", {"v": 1}]]),
            Outcome.failed("KeyError", "m"),
            Outcome.invalid("m"),
        ],
    )
    def test_client_decodes_what_the_server_encodes(self, outcome):
        assert decode_reply(encode_reply(outcome).rstrip(b"\n")) == outcome

    @pytest.mark.parametrize(
        "line",
        [
            b"",
            b"garbage",
            b"[]",
            b'{"status": "ok"}',
            b'{"status": "weird"}',
            b'{"status": "failed"}',
        ],
    )
    def test_client_refuses_what_is_not_a_reply(self, line):
        with pytest.raises(ProtocolError):
            decode_reply(line)


class TestClientEncoding:
    def test_insert_keeps_a_null_value(self):
        line = encode_request(Request("insert", "k", None))
        assert orjson.loads(line) == {"method": "insert", "key": "k", "value": None}

    def test_session_fields_only_when_numbered(self):
        line = encode_request(Request("remove", "k", client="c", seq=5, ack=4))
        assert orjson.loads(line) == {
            "method": "remove",
            "key": "k",
            "client": "c",
            "seq": 5,
            "ack": 4,
        }
        assert orjson.loads(encode_request(Request("size"))) == {"method": "size"}

    def test_unknown_method(self):
        with pytest.raises(ValueError, match="unknown method"):
            encode_request(Request("drop"))

    def test_value_json_cannot_carry(self):
        with pytest.raises(TypeError):
            encode_request(Request("insert", "k", {1, 2}))

    @pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
    def test_nan_and_infinity_are_refused_not_sent_as_null(self, number):
        # orjson alone writes them as null: the value would change without a word.
        @dataclasses.dataclass
        class Point:
            x: float

        kinds = enum.Enum("Kinds", {"odd": number})
        for value in (number, [1, {"a": [None, number]}], (number,), Point(number), kinds.odd):
            with pytest.raises(TypeError, match="NaN and infinity"):
                encode_request(Request("insert", "k", value))
        with pytest.raises(TypeError, match="NaN and infinity"):
            encode_request(Request("query", subkey="x", subvalue=number))

        @dataclasses.dataclass
        class Hidden:
            x: object
            _y: float = number  # orjson does not send it

        assert orjson.loads(encode_request(Request("insert", "k", Hidden(None))))["value"] == {
            "x": None
        }
        assert orjson.loads(encode_request(Request("insert", "k", [None, 1.5])))["value"] == [
            None,
            1.5,
        ]


# ---------------------------------------------------------------- properties

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
atoms = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text()


def _encodable(text: str) -> bool:
    try:
        orjson.dumps(text)
    except TypeError:  # lone surrogates: not UTF-8, cannot go on the wire
        return False
    return True


keys = st.text().filter(_encodable)


@st.composite
def requests(draw) -> Request:
    method = draw(st.sampled_from(sorted(METHODS)))
    request = Request(method)
    if method in ("insert", "lookup", "remove"):
        request.key = draw(keys)
    if method == "insert":
        request.value = draw(json_values.filter(lambda v: _encodable(orjson.dumps(v).decode())))
    if method == "scan":
        request.regex = draw(keys)
    if method == "query":
        request.subkey = draw(keys)
        request.subvalue = draw(atoms.filter(lambda v: not isinstance(v, str) or _encodable(v)))
    if method in ("insert", "remove") and draw(st.booleans()):
        printable_ascii = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
        request.client = draw(st.text(printable_ascii, min_size=1, max_size=MAX_CLIENT_ID))
        request.seq = draw(st.integers(1, 2**63 - 1))
        if draw(st.booleans()):
            request.ack = draw(st.integers(0, request.seq - 1))
    return request


@settings(max_examples=300, deadline=None)
@given(requests())
def test_every_request_a_client_encodes_parses_back(request):
    assert parse_request(encode_request(request).rstrip(b"\n")) == request


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(line):
    result = parse_request(line)
    assert isinstance(result, Request) or result.status is Status.INVALID


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["method", "key", "value", "regex", "subkey", "subvalue", "client", "seq", "ack", "x"]
        ),
        json_values | st.sampled_from(sorted(METHODS)),
        max_size=6,
    )
)
def test_arbitrary_objects_are_requests_or_reasons(obj):
    try:
        line = orjson.dumps(obj)
    except TypeError:
        return
    result = parse_request(line)
    if isinstance(result, Request):
        # Whatever is accepted encodes back to the same request.
        assert parse_request(encode_request(result)) == result
        assert result.method == obj["method"]
    else:
        assert result.status is Status.INVALID and result.message
        assert encode_reply(result).endswith(b"\n")


# ---------------------------------------------------------------- values per request

_TRICKY = st.text(alphabet=st.sampled_from('ab,:[{}]"\\\n\u00e9\U0001f600'), max_size=12)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _TRICKY,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(_TRICKY, children, max_size=6)
    ),
    max_leaves=60,
)


def _separators_of(value) -> int:
    """The ``[``, ``{``, ``,`` and ``:`` of ``value``'s compact JSON outside its strings."""
    if isinstance(value, list):
        return 1 + max(len(value) - 1, 0) + sum(_separators_of(item) for item in value)
    if isinstance(value, dict):
        inner = sum(_separators_of(item) for item in value.values())
        return 1 + max(len(value) - 1, 0) + len(value) + inner
    return 0


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_the_values_of_a_request_are_counted_outside_its_strings(value):
    line = orjson.dumps({"value": value})
    count = _separators_of({"value": value})
    if count < len(line):  # (a line no longer than the limit is let through unread)
        assert too_many_values(line, count - 1)
    assert not too_many_values(line, count)


def test_a_request_with_too_many_values_is_refused_unparsed():
    bomb = b'{"method": "insert", "key": "k", "value": [' + b"{}," * 300_000 + b"{}]}"
    reply = parse_request(bomb)
    assert isinstance(reply, Outcome) and reply.status is Status.INVALID
    assert "more than 250000 JSON values" in reply.message
    # Strings are cheap to parse: commas, colons and brackets inside them do not count.
    text = b'{"method": "insert", "key": "k", "value": "' + b'a,b:[{\\"' * 300_000 + b'"}'
    assert isinstance(parse_request(text), Request)
    assert isinstance(parse_request(bomb, max_values=1_000_000), Request)
