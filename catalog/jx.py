"""cctools JX filter expressions, as ``catalog_query -w EXPR`` sends them.

``compile_expression(text)`` parses once (``JXSyntaxError`` with a message for
people); ``Expression.matches(record)`` is true when the expression evaluates
to the boolean ``true`` for that record, as the real catalog decides.

What is supported, and how it behaves, follows cctools' ``jx_parse.c`` and
``jx_eval.c``, because ``catalog_query`` re-prints the user's expression from its
own parse tree before sending it, relying on JX's rules to read it back:

- literals: integers, floats, "strings" (JSON escapes), true, false, null,
  [arrays] and {"objects"}; field names; ``#`` comments; a trailing ``;``.
- operators, loosest first: ``and``/``&&``; ``or``/``||``; ``== != < <= > >=``;
  ``+ -``; ``* / %``; then unary ``not``/``!``, ``-``, ``+``; then ``x[i]``.
  Note that ``and`` binds LOOSER than ``or``, and that binary operators group
  to the right (``a-b-c`` is ``a-(b-c)``), exactly as in JX.
- evaluation: a missing field, a type mismatch (other than int/float, which
  mix, and ``==``/``!=``, which are simply false/true across types) or a
  division by zero is an error, and an error anywhere means "no match". There
  is no short-circuit: ``false and x`` is an error when ``x`` is missing.
- strings: besides JSON escapes, the ``\\uffffffXX`` byte escapes that
  ``catalog_query`` produces for non-ASCII text are read back as UTF-8, so
  ``-w 'owner=="José"'`` works (the real catalog rejects it).

Not supported (a clear ``JXSyntaxError``): function calls, ``.method()`` calls,
slices, comprehensions (``for``/``in``/``if``) and ``error(...)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, NoReturn

MAX_DEPTH = 100  # of the expression tree; evaluation recurses that deep
MAX_NESTING = 40  # of brackets and unary operators; parsing recurses ~12 frames for each

Record = dict[str, Any]


class JXSyntaxError(ValueError):
    """An expression that cannot be parsed; the message says where and why."""


class _Fail(Exception):
    """Evaluation failed (JX's error value): the record does not match."""


# --------------------------------------------------------------------------- tokens

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
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

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
        return max(_INT64_MIN, min(_INT64_MAX, int(word)))  # strtoll clamps, so do we
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


# --------------------------------------------------------------------------- values

NULL, BOOLEAN, INTEGER, DOUBLE, TEXT, ARRAY, OBJECT = range(7)
_KIND = {type(None): NULL, bool: BOOLEAN, int: INTEGER, float: DOUBLE, str: TEXT}
_KIND.update({list: ARRAY, dict: OBJECT})
_ATOMIC = (NULL, BOOLEAN, INTEGER, DOUBLE)
_ABSENT = object()  # the missing left operand of a unary operator


def _wrap(value: int) -> int:
    """Integer results wrap at 64 bits, as jx_int_t does (and stay bounded)."""
    return (value - _INT64_MIN) % 2**64 + _INT64_MIN


def _text(value: Any) -> str:
    """An atomic value as JX prints it, for ``"string" + value``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _equals(a: Any, b: Any) -> bool:
    """JX equality of two values: types must match, deeply (so 1 != true, [1] != [1.0])."""
    kind = _KIND[type(a)]
    if kind != _KIND[type(b)]:
        return False
    if kind == ARRAY:
        return len(a) == len(b) and all(_equals(x, y) for x, y in zip(a, b, strict=True))
    if kind == OBJECT:
        return a.keys() == b.keys() and all(_equals(v, b[k]) for k, v in a.items())
    return a == b


def _lookup(container: Any, index: Any) -> Any:
    if isinstance(container, dict) and isinstance(index, str):
        if index in container:
            return container[index]
    elif isinstance(container, list) and type(index) is int:
        position = index + len(container) if index < 0 else index
        if 0 <= position < len(container):
            return container[position]
    raise _Fail


def _compare(op: str, a: Any, b: Any) -> bool:
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    if op == ">=":
        return a >= b
    raise _Fail


def _on_null(op: str, a: Any, b: Any) -> Any:
    if a is not _ABSENT and op in ("==", "!="):
        return op == "=="
    raise _Fail


def _on_boolean(op: str, a: Any, b: Any) -> Any:
    if a is _ABSENT:
        if op == "not":
            return not b
        raise _Fail
    if op in ("==", "!="):
        return (a == b) == (op == "==")
    raise _Fail


def _on_integer(op: str, a: Any, b: Any) -> Any:
    if a is _ABSENT:
        a = 0  # unary - and + are 0-b and 0+b in JX
    if op == "+":
        return _wrap(a + b)
    if op == "-":
        return _wrap(a - b)
    if op == "*":
        return _wrap(a * b)
    if op in ("/", "%"):
        if b == 0:
            raise _Fail
        quotient = abs(a) // abs(b)  # C division truncates toward zero
        if op == "/":
            return _wrap(quotient if (a < 0) == (b < 0) else -quotient)
        remainder = abs(a) - quotient * abs(b)
        return _wrap(remainder if a >= 0 else -remainder)
    return _compare(op, a, b)


def _on_double(op: str, a: Any, b: Any) -> Any:
    if a is _ABSENT:
        a = 0.0
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0:
            raise _Fail
        return a / b
    if op == "%":
        # JX takes the remainder of the values truncated to integers.
        if not (math.isfinite(a) and math.isfinite(b)):
            raise _Fail
        return float(_on_integer("%", int(a), int(b)))
    return _compare(op, a, b)


def _on_text(op: str, a: Any, b: Any) -> Any:
    if a is _ABSENT:
        if op == "+":
            return b
        raise _Fail
    if op == "+":
        return a + b
    return _compare(op, a, b)  # code-point order is the UTF-8 byte order strcmp uses


def _on_array(op: str, a: Any, b: Any) -> Any:
    if a is _ABSENT:
        raise _Fail
    if op == "==":
        return _equals(a, b)
    if op == "!=":
        return not _equals(a, b)
    if op == "+":
        return a + b
    raise _Fail


def _on_object(op: str, a: Any, b: Any) -> Any:
    raise _Fail  # JX objects support no operator, not even ==


_BY_KIND = (_on_null, _on_boolean, _on_integer, _on_double, _on_text, _on_array, _on_object)


def _apply(op: str, a: Any, b: Any) -> Any:
    """``a op b`` under JX's rules (``a`` is ``_ABSENT`` for a unary operator).

    Raises ``_Fail`` for what JX evaluates to an error.
    """
    kind = _KIND[type(b)]
    if a is not _ABSENT:
        left = _KIND[type(a)]
        if left != kind:
            if left == INTEGER and kind == DOUBLE:
                a = float(a)
            elif left == DOUBLE and kind == INTEGER:
                b = float(b)
                kind = DOUBLE
            elif op == "==":
                return False
            elif op == "!=":
                return True
            elif op == "[":
                return _lookup(a, b)
            elif op == "+" and left == TEXT and kind in _ATOMIC:
                b = _text(b)
                kind = TEXT
            elif op == "+" and kind == TEXT and left in _ATOMIC:
                a = _text(a)
            else:
                raise _Fail
    return _BY_KIND[kind](op, a, b)


# --------------------------------------------------------------------------- parser

# A compiled expression is a tree of closures, record -> value; each carries
# its depth so that the parser can refuse trees too deep to evaluate.
Node = Callable[[Record], Any]

_LEVELS = {"and": 5, "&&": 5, "or": 4, "||": 4, "*": 1, "/": 1, "%": 1, "+": 2, "-": 2}
_LEVELS.update(dict.fromkeys(("==", "!=", "<", "<=", ">", ">="), 3))
_CANONICAL = {"&&": "and", "||": "or", "!": "not"}
_TOP_LEVEL = 5
_UNSUPPORTED = {
    "for": "comprehensions (for ... in ...) are not supported",
    "in": "'in' is not supported (comprehensions are not supported)",
    "if": "comprehensions (if ...) are not supported",
    "error": "error(...) is not supported",
}


class _Literal:
    __slots__ = ("depth", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.depth = 1

    def __call__(self, record: Record) -> Any:
        return self.value


def _node(function: Node, *children: Node) -> Node:
    depth = 1 + max((child.depth for child in children), default=0)  # type: ignore[attr-defined]
    if depth > MAX_DEPTH:
        raise JXSyntaxError(f"expression is nested more than {MAX_DEPTH} levels deep")
    function.depth = depth  # type: ignore[attr-defined]
    return function


def _symbol(name: str) -> Node:
    def field(record: Record) -> Any:
        try:
            return record[name]
        except KeyError:
            raise _Fail from None

    return _node(field)


def _binary(op: str, left: Node, right: Node) -> Node:
    def operate(record: Record) -> Any:
        return _apply(op, left(record), right(record))

    return _node(operate, left, right)


def _unary(op: str, operand: Node) -> Node:
    if isinstance(operand, _Literal) and op in "+-":
        value = operand.value
        if type(value) in (int, float):  # JX folds signed numeric literals
            return _Literal(-value if op == "-" else value)

    def operate(record: Record) -> Any:
        return _apply(op, _ABSENT, operand(record))

    return _node(operate, operand)


def _logical(op: str, operands: list[Node]) -> Node:
    """A chain of ``and`` (or of ``or``) as one node: flat, so long chains stay
    shallow. Without short-circuit, any non-boolean operand is an error however
    the chain is grouped, so this equals JX's right-nested evaluation."""
    combine = all if op == "and" else any

    def operate(record: Record) -> Any:
        values = [operand(record) for operand in operands]
        for value in values:
            if type(value) is not bool:
                raise _Fail
        return combine(values)

    return _node(operate, *operands)


def _array(items: list[Node]) -> Node:
    if all(isinstance(item, _Literal) for item in items):
        return _Literal([item.value for item in items])  # type: ignore[attr-defined]
    return _node(lambda record: [item(record) for item in items], *items)


def _object(pairs: list[tuple[str, Node]]) -> Node:
    if all(isinstance(value, _Literal) for _, value in pairs):
        return _Literal({key: value.value for key, value in pairs})  # type: ignore[attr-defined]
    values = [value for _, value in pairs]
    return _node(lambda record: {key: value(record) for key, value in pairs}, *values)


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.index = 0
        self.nesting = 0

    def enter(self, token: Token) -> None:
        """Counts one level of brackets or unary operators, refusing too many
        before the parser's own recursion could overflow the stack."""
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            self.fail(token, f"expression is nested more than {MAX_NESTING} levels deep")

    def peek(self) -> Token:
        return self.tokens[self.index]

    def take(self) -> Token:
        token = self.tokens[self.index]
        if token.kind != END:
            self.index += 1
        return token

    def expect(self, text: str, context: str) -> None:
        token = self.take()
        if token.kind != OP or token.text != text:
            self.fail(token, f"expected {text!r} {context}, found {token.describe()}")

    def fail(self, token: Token, message: str) -> NoReturn:
        raise JXSyntaxError(f"{message} (position {token.pos + 1})")

    def operator_at(self, level: int) -> str | None:
        token = self.peek()
        if token.kind in (OP, NAME) and _LEVELS.get(token.text) == level:
            return _CANONICAL.get(token.text, token.text)
        return None

    def expression(self, level: int = _TOP_LEVEL) -> Node:
        operand = self.unary if level == 1 else lambda: self.expression(level - 1)
        operands = [operand()]
        ops = []
        while (op := self.operator_at(level)) is not None:
            self.take()
            ops.append(op)
            operands.append(operand())
        if not ops:
            return operands[0]
        if level >= 4:  # and / or
            return _logical(ops[0], operands)
        # Fold to the right, as JX's recursive parser groups: a-b-c is a-(b-c).
        node = operands[-1]
        for op, left in zip(reversed(ops), reversed(operands[:-1]), strict=True):
            node = _binary(op, left, node)
        return node

    def unary(self) -> Node:
        token = self.peek()
        if (token.kind == OP and token.text in ("-", "+", "!")) or (
            token.kind == NAME and token.text == "not"
        ):
            self.take()
            self.enter(token)
            node = _unary(_CANONICAL.get(token.text, token.text), self.unary())
            self.nesting -= 1
            return node
        return self.postfix()

    def postfix(self) -> Node:
        node = self.atom()
        while True:
            token = self.peek()
            if token.kind != OP:
                return node
            if token.text == "[":
                self.take()
                self.enter(token)
                if self.peek().text == ":":
                    self.fail(self.peek(), "slices are not supported")
                index = self.expression()
                if self.peek().text == ":":
                    self.fail(self.peek(), "slices are not supported")
                self.expect("]", "to close the index")
                self.nesting -= 1
                node = _binary("[", node, index)
            elif token.text == "(":
                self.fail(token, "function calls are not supported")
            elif token.text == ".":
                self.fail(token, "method calls (.name()) are not supported")
            else:
                return node

    def atom(self) -> Node:
        token = self.take()
        if token.kind in (NUMBER, STRING):
            return _Literal(token.value)
        if token.kind == NAME:
            word = token.text
            if word in ("true", "false", "null"):
                return _Literal({"true": True, "false": False, "null": None}[word])
            if word in _UNSUPPORTED:
                self.fail(token, _UNSUPPORTED[word])
            if word in ("and", "or"):
                self.fail(token, f"expected a value before {word!r}")
            return _symbol(word)
        if token.kind == OP and token.text in ("(", "[", "{"):
            self.enter(token)
            if token.text == "(":
                node = self.expression()
                self.expect(")", "to close the parenthesis")
            elif token.text == "[":
                node = _array(self.sequence("]", self.expression))
            else:
                node = _object(self.sequence("}", self.pair))
            self.nesting -= 1
            return node
        if token.kind == END:
            self.fail(token, "expected a value at the end of the expression")
        self.fail(token, f"expected a value, found {token.describe()}")

    def sequence(self, close: str, item: Callable[[], Any]) -> list[Any]:
        """Comma-separated items up to ``close``; a trailing comma is allowed, as in JX."""
        items = []
        while True:
            if self.peek().kind == OP and self.peek().text == close:
                self.take()
                return items
            items.append(item())
            token = self.take()
            if token.kind == OP and token.text == close:
                return items
            if token.kind != OP or token.text != ",":
                self.fail(token, f"expected ',' or {close!r}, found {token.describe()}")

    def pair(self) -> tuple[str, Node]:
        token = self.take()
        if token.kind != STRING:
            self.fail(token, "object keys must be strings")
        self.expect(":", "after an object key")
        return token.value, self.expression()


class Expression:
    """A compiled JX expression."""

    def __init__(self, text: str, root: Node) -> None:
        self.text = text
        self._root = root

    @property
    def always_true(self) -> bool:
        """True for the literal ``true``, what ``catalog_query`` sends without ``-w``."""
        return isinstance(self._root, _Literal) and self._root.value is True

    def evaluate(self, record: Record) -> Any:
        """The value of the expression for ``record``; ``ValueError`` if JX says error."""
        try:
            return self._root(record)
        except (_Fail, ArithmeticError, RecursionError):
            raise ValueError(f"{self.text!r} has no value for this record") from None

    def matches(self, record: Record) -> bool:
        try:
            return self._root(record) is True
        except (_Fail, ArithmeticError, RecursionError):
            return False


def compile_expression(text: str) -> Expression:
    """Parses a JX expression; raises ``JXSyntaxError`` with a message for people."""
    tokens = tokenize(text)
    if tokens[0].kind == END:
        raise JXSyntaxError("empty expression")
    parser = _Parser(tokens)
    root = parser.expression()
    if parser.peek().kind == OP and parser.peek().text == ";":
        parser.take()
    token = parser.peek()
    if token.kind != END:
        parser.fail(token, f"unexpected {token.describe()} after the expression")
    return Expression(text, root)
