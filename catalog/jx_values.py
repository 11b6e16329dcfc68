"""What JX operators do to values, as cctools' ``jx_eval.c`` decides (see ``catalog.jx``).

``apply_operator(op, a, b)`` is ``a op b`` (``a`` is ``ABSENT`` for a unary operator)
or raises ``JXFail`` where JX evaluates to an error: a type mismatch (other than
int/float, which mix, and ``==``/``!=``, which are false/true across types), a
division by zero, a missing index. Integers wrap at 64 bits like ``jx_int_t``.
"""

from __future__ import annotations

import math
from typing import Any

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class JXFail(Exception):
    """Evaluation failed (JX's error value): the record does not match."""


NULL, BOOLEAN, INTEGER, DOUBLE, TEXT, ARRAY, OBJECT = range(7)
_KIND = {type(None): NULL, bool: BOOLEAN, int: INTEGER, float: DOUBLE, str: TEXT}
_KIND.update({list: ARRAY, dict: OBJECT})
_ATOMIC = (NULL, BOOLEAN, INTEGER, DOUBLE)
ABSENT = object()  # the missing left operand of a unary operator


def _wrap(value: int) -> int:
    """Integer results wrap at 64 bits, as jx_int_t does (and stay bounded)."""
    return (value - INT64_MIN) % 2**64 + INT64_MIN


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
    raise JXFail


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
    raise JXFail


def _on_null(op: str, a: Any, b: Any) -> Any:
    if a is not ABSENT and op in ("==", "!="):
        return op == "=="
    raise JXFail


def _on_boolean(op: str, a: Any, b: Any) -> Any:
    if a is ABSENT:
        if op == "not":
            return not b
        raise JXFail
    if op in ("==", "!="):
        return (a == b) == (op == "==")
    raise JXFail


def _on_integer(op: str, a: Any, b: Any) -> Any:
    if a is ABSENT:
        a = 0  # unary - and + are 0-b and 0+b in JX
    if op == "+":
        return _wrap(a + b)
    if op == "-":
        return _wrap(a - b)
    if op == "*":
        return _wrap(a * b)
    if op in ("/", "%"):
        if b == 0:
            raise JXFail
        quotient = abs(a) // abs(b)  # C division truncates toward zero
        if op == "/":
            return _wrap(quotient if (a < 0) == (b < 0) else -quotient)
        remainder = abs(a) - quotient * abs(b)
        return _wrap(remainder if a >= 0 else -remainder)
    return _compare(op, a, b)


def _on_double(op: str, a: Any, b: Any) -> Any:
    if a is ABSENT:
        a = 0.0
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0:
            raise JXFail
        return a / b
    if op == "%":
        # JX takes the remainder of the values truncated to integers.
        if not (math.isfinite(a) and math.isfinite(b)):
            raise JXFail
        return float(_on_integer("%", int(a), int(b)))
    return _compare(op, a, b)


def _on_text(op: str, a: Any, b: Any) -> Any:
    if a is ABSENT:
        if op == "+":
            return b
        raise JXFail
    if op == "+":
        return a + b
    return _compare(op, a, b)  # code-point order is the UTF-8 byte order strcmp uses


def _on_array(op: str, a: Any, b: Any) -> Any:
    if a is ABSENT:
        raise JXFail
    if op == "==":
        return _equals(a, b)
    if op == "!=":
        return not _equals(a, b)
    if op == "+":
        return a + b
    raise JXFail


def _on_object(op: str, a: Any, b: Any) -> Any:
    raise JXFail  # JX objects support no operator, not even ==


_BY_KIND = (_on_null, _on_boolean, _on_integer, _on_double, _on_text, _on_array, _on_object)


def apply_operator(op: str, a: Any, b: Any) -> Any:
    """``a op b`` under JX's rules (``a`` is ``ABSENT`` for a unary operator).

    Raises ``JXFail`` for what JX evaluates to an error.
    """
    kind = _KIND[type(b)]
    if a is not ABSENT:
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
                raise JXFail
    return _BY_KIND[kind](op, a, b)
