"""The tokens of a JX expression (see ``catalog.jx``): text in, ``Token`` list out.

Numbers, names, strings (JSON escapes, plus the ``\\uffffffXX`` byte escapes that
``catalog_query`` prints for non-ASCII text) and operators; anything else, and the
mistakes people make (``=``, ``&``, ``|``), is a ``JXSyntaxError`` naming the position.
"""

from __future__ import annotations

import re
from typing import Any

from catalog.jx_values import INT64_MAX, INT64_MIN


class JXSyntaxError(ValueError):
    """An expression that cannot be parsed; the message says where and why."""


_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\n\r\f\v]+|\#[^\n\r]*)
  | (?P<number>(?:[0-9]|\.[0-9])(?:[0-9.]|[eE][-+]?)*)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<string>")
  | (?P<op>==|!=|<=|>=|&&|\|\||[-+*/%<>!()\[\]{},:;.=&|])
    """,
    re.VERBOSE,
)
_MISTAKES = {"=": "use == to compare, not =", "&": "use && or and", "|": "use || or or"}
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX = re.compile(r"[0-9a-fA-F]{4}")
_SIGNED_BYTE = re.compile(r"ffffff([89a-fA-F][0-9a-fA-F])", re.IGNORECASE)

# Token kinds
NUMBER, STRING, NAME, OP, END = "number", "string", "name", "op", "end"


class Token:
    __slots__ = ("kind", "pos", "text", "value")

    def __init__(self, kind: str, text: str, pos: int, value: Any = None) -> None:
        self.kind = kind
        self.text = text
        self.pos = pos
        self.value = value

    def describe(self) -> str:
        return "the end of the expression" if self.kind == END else repr(self.text)


def tokenize(text: str) -> list[Token]:
    tokens = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise JXSyntaxError(f"unexpected character {text[pos]!r} at position {pos + 1}")
        kind = match.lastgroup
        if kind == "string":
            value, end = _scan_string(text, pos + 1)
            tokens.append(Token(STRING, text[pos:end], pos, value))
            pos = end
            continue
        word = match.group()
        if kind == "number":
            tokens.append(Token(NUMBER, word, pos, _number(word, pos)))
        elif kind == "name":
            tokens.append(Token(NAME, word, pos))
        elif kind == "op":
            if word in _MISTAKES:
                raise JXSyntaxError(f"{_MISTAKES[word]} (position {pos + 1})")
            tokens.append(Token(OP, word, pos))
        pos = match.end()
    tokens.append(Token(END, "", len(text)))
    return tokens


def _number(word: str, pos: int) -> int | float:
    if word.isdigit():
        return clamp_integer(word)
    try:
        return float(word)
    except ValueError:
        raise JXSyntaxError(f"invalid number {word!r} at position {pos + 1}") from None


def _scan_string(text: str, pos: int) -> tuple[str, int]:
    """Reads a string literal from after its opening quote; returns (value, end)."""
    start = pos - 1
    out = bytearray()
    while pos < len(text):
        char = text[pos]
        pos += 1
        if char == '"':
            try:
                return out.decode("utf-8"), pos
            except UnicodeDecodeError:
                raise JXSyntaxError(f"string at position {start + 1} is not valid UTF-8") from None
        if char != "\\":
            out += char.encode("utf-8", "surrogatepass")
            continue
        if pos >= len(text):
            break
        char = text[pos]
        pos += 1
        if char != "u":
            out += _ESCAPES.get(char, char).encode("utf-8", "surrogatepass")
            continue
        # catalog_query prints each byte of non-ASCII text as a sign-extended
        # "\uffffffXX"; read those back as the bytes they were.
        signed = _SIGNED_BYTE.match(text, pos)
        if signed:
            out.append(int(signed.group(1), 16))
            pos = signed.end()
        elif _HEX.match(text, pos):
            code = int(text[pos : pos + 4], 16)
            if 0xD800 <= code <= 0xDFFF:
                raise JXSyntaxError(f"surrogate escape \\u{text[pos : pos + 4]} is not supported")
            out += chr(code).encode("utf-8")
            pos += 4
        else:
            raise JXSyntaxError(f"invalid \\u escape at position {pos - 1}")
    raise JXSyntaxError(f"string starting at position {start + 1} has no closing quote")


def clamp_integer(digits: str) -> int:
    """An integer literal as ``strtoll`` reads it: clamped to 64 bits. Past 19 digits it
    is out of range whatever it says, so it is never converted (Python refuses to
    convert more than 4,300 digits, and a long conversion is slow)."""
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(INT64_MAX)):
        return INT64_MAX
    return max(INT64_MIN, min(INT64_MAX, int(digits)))
