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

The parts: ``jx_tokens`` (text to tokens), ``jx_values`` (what each operator does
to values), this module (the parser, building a tree of closures, and ``Expression``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from catalog.jx_tokens import END, NAME, NUMBER, OP, STRING, JXSyntaxError, Token, tokenize
from catalog.jx_values import ABSENT, JXFail, apply_operator

__all__ = ["MAX_DEPTH", "Expression", "JXSyntaxError", "compile_expression", "tokenize"]

MAX_DEPTH = 100  # of the expression tree; evaluation recurses that deep
MAX_NESTING = 40  # of brackets and unary operators; parsing recurses ~12 frames for each

Record = dict[str, Any]

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
    required: frozenset[str] = frozenset()

    def __init__(self, value: Any) -> None:
        self.value = value
        self.depth = 1

    def __call__(self, record: Record) -> Any:
        return self.value


def _node(function: Node, *children: Node, required: frozenset[str] = frozenset()) -> Node:
    """``function`` as a node: its depth, and the strings that some field must equal
    for the whole node to be true (``required``; see ``Expression.required_strings``)."""
    depth = 1 + max((child.depth for child in children), default=0)  # type: ignore[attr-defined]
    if depth > MAX_DEPTH:
        raise JXSyntaxError(f"expression is nested more than {MAX_DEPTH} levels deep")
    function.depth = depth  # type: ignore[attr-defined]
    function.required = required  # type: ignore[attr-defined]
    return function


def _symbol(name: str) -> Node:
    def field(record: Record) -> Any:
        try:
            return record[name]
        except KeyError:
            raise JXFail from None

    field.symbol = name  # type: ignore[attr-defined]
    return _node(field)


def _binary(op: str, left: Node, right: Node) -> Node:
    def operate(record: Record) -> Any:
        return apply_operator(op, left(record), right(record))

    required: frozenset[str] = frozenset()
    if op == "==":
        for one, other in ((left, right), (right, left)):
            if hasattr(one, "symbol") and isinstance(other, _Literal) and type(other.value) is str:
                required = frozenset((other.value,))
    return _node(operate, left, right, required=required)


def _unary(op: str, operand: Node) -> Node:
    if isinstance(operand, _Literal) and op in "+-":
        value = operand.value
        if type(value) in (int, float):  # JX folds signed numeric literals
            return _Literal(-value if op == "-" else value)

    def operate(record: Record) -> Any:
        return apply_operator(op, ABSENT, operand(record))

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
                raise JXFail
        return combine(values)

    required = frozenset().union(*(o.required for o in operands)) if op == "and" else frozenset()  # type: ignore[attr-defined]
    return _node(operate, *operands, required=required)


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
    def required_strings(self) -> frozenset[str]:
        """Strings that some field of a record must equal (``field == "text"`` joined
        by ``and``) for the expression to be true there: a record whose text holds
        none of one of them cannot match, which is a cheap test to make first."""
        return self._root.required  # type: ignore[attr-defined]

    @property
    def always_true(self) -> bool:
        """True for the literal ``true``, what ``catalog_query`` sends without ``-w``."""
        return isinstance(self._root, _Literal) and self._root.value is True

    def evaluate(self, record: Record) -> Any:
        """The value of the expression for ``record``; ``ValueError`` if JX says error."""
        try:
            return self._root(record)
        except (JXFail, ArithmeticError, RecursionError):
            raise ValueError(f"{self.text!r} has no value for this record") from None

    def matches(self, record: Record) -> bool:
        try:
            return self._root(record) is True
        except (JXFail, ArithmeticError, RecursionError):
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
