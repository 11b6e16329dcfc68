"""JX expressions (catalog/jx.py): parsing, cctools' precedence and evaluation rules."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog.jx import MAX_DEPTH, JXSyntaxError, compile_expression

RECORD = {
    "type": "hashtable",
    "owner": "José",
    "port": 9000,
    "load": 1.5,
    "up": True,
    "gone": None,
    "tags": ["a", "b"],
    "info": {"cpus": 2},
}


def matches(text: str, record: dict = RECORD) -> bool:
    return compile_expression(text).matches(record)


@pytest.mark.parametrize(
    "text",
    [
        'type=="hashtable"',
        'type == "hashtable" && port > 8000',
        'type=="hashtable" and port>=9000 and port<=9000',
        'owner!="bob" || port<0',
        "not (port == 1)",
        "!(port == 1)",
        "up",
        "up == true",
        "gone == null",
        "load > 1",
        "port == 9000.0",  # integers and floats mix
        "port / 2 == 4500 and port % 7 == 5",
        "-port < 0",
        '"x" + port == "x9000"',
        'tags[0] == "a" and tags[-1] == "b"',
        'info["cpus"] == 2',
        'tags == ["a", "b"]',
        "port == 9000;",
        "port == 9000  # a comment",
        'type == "hash" + "table"',
        "1 < 2",
    ],
)
def test_expressions_that_match(text):
    assert matches(text)


@pytest.mark.parametrize(
    "text",
    [
        'type=="chirp"',
        "missing == 1",  # an undefined field is an error, not null
        "missing != 1",
        "port == 1 or missing",
        "false and missing",  # no short-circuit: still an error
        "not (false and missing)",
        'port == "9000"',  # types do not convert
        'port > "a"',
        "port",  # a number is not true
        "type",
        "up and 1",
        "port / 0 == 1",
        "port % 0 == 1",
        "load % 0.5 == 0",  # JX truncates to integers first: 1 % 0 is an error
        "info == info",  # objects support no operator
        'tags == ["a", "b", "c"]',
        "tags[5] == 1",
        "info[0] == 1",
        "-type == 1",
        "!port",
        "null",
    ],
)
def test_expressions_that_do_not_match(text):
    assert not matches(text)


def test_and_binds_looser_than_or_as_in_jx():
    # catalog_query prints (a || b) && c as "a or b and c": JX reads that back as
    # (a or b) and c, so must we.
    assert matches('port == 1 or port == 9000 and type == "hashtable"')
    assert not matches('port == 9000 or port == 1 and type == "chirp"')


def test_binary_operators_group_to_the_right_as_in_jx():
    assert compile_expression("10 - 4 - 3").evaluate({}) == 9  # 10 - (4 - 3)
    assert compile_expression("2 * 3 - 1").evaluate({}) == 5


def test_c_arithmetic():
    value = compile_expression("-7 / 2 == -3 and -7 % 2 == -1 and 7 % -2 == 1")
    assert value.matches({})
    assert compile_expression("9223372036854775807 + 1").evaluate({}) == -(2**63)
    assert compile_expression("1.5 + 1").evaluate({}) == 2.5


def test_integer_literals_of_any_length_clamp_like_strtoll():
    assert compile_expression("9" * 5000).evaluate({}) == 2**63 - 1
    assert compile_expression("-" + "9" * 5000).evaluate({}) == -(2**63) + 1  # -(max)
    assert compile_expression("0" * 4000 + "42").evaluate({}) == 42
    assert compile_expression("1" * 5000 + ".5").evaluate({}) == float("inf")


def test_catalog_query_byte_escapes_read_back_as_utf8():
    # What catalog_query -w 'owner=="José"' sends over the wire.
    assert matches('owner=="Jos\\uffffffc3\\uffffffa9"')
    assert matches('owner=="Jos\\u00e9"')
    assert matches('owner=="José"')


def test_the_literal_true_is_recognised():
    assert compile_expression("true").always_true
    assert not compile_expression("true and up").always_true


def test_long_or_chains_stay_shallow():
    text = " or ".join(f"port == {n}" for n in range(5000, 9001))
    assert matches(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty expression"),
        ("   ", "empty expression"),
        ("port = 1", "use =="),
        ("a & b", "use &&"),
        ("a | b", "use ||"),
        ("port ==", "expected a value"),
        ("(port == 1", "expected ')'"),
        ("port == 1)", "unexpected ')'"),
        ("x in [1, 2]", "unexpected 'in'"),
        ("len(tags) > 1", "function calls are not supported"),
        ("tags.len()", "method calls"),
        ("tags[1:2]", "slices are not supported"),
        ('"open', "no closing quote"),
        ("1.2.3 > 1", "invalid number"),
        ("{1: 2}", "object keys must be strings"),
        ("port == @", "unexpected character"),
        ('"\\ud800"', "surrogate"),
        ('"\\uffffffc3"', "not valid UTF-8"),
        ("error(1)", "not supported"),
        ("(" * 50 + "1" + ")" * 50, "nested more than"),
        ("!" * 60 + "up", "nested more than"),
        (" - ".join(["port"] * (MAX_DEPTH + 5)), "nested more than"),
    ],
)
def test_syntax_errors_say_what_is_wrong(text, message):
    with pytest.raises(JXSyntaxError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_expression(text)


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
_PIECES = st.sampled_from(
    ["port", "type", "x", "1", "2.5", '"s"', "true", "null", "==", "!=", "<", "+", "-", "*",
     "/", "%", "and", "or", "not", "!", "(", ")", "[", "]", ",", "{", "}", ":", "&&", "||",
     "[0]", '"k":', ";", "#"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(_PIECES, max_size=20), record=st.dictionaries(st.text(), _VALUES))
def test_any_text_parses_or_fails_cleanly_and_never_breaks_evaluation(pieces, record):
    try:
        expression = compile_expression(" ".join(pieces))
    except JXSyntaxError:
        return
    record.update(port=1, type="t", x=[1, {"k": None}])
    assert expression.matches(record) in (True, False)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_arbitrary_text_only_ever_raises_syntax_errors(text):
    with contextlib.suppress(JXSyntaxError):
        compile_expression(text)
