"""The table's operations on an in-memory dict, with argument checks.

Pure functions of the dict: no logging, no persistence, no sessions. The same
code serves live requests and log replay, which is what makes replay
deterministic.
"""

from __future__ import annotations

import time
from typing import Any

import regex

from hashtable.request import OK_NONE, Outcome, Request

ATOMIC_TYPES = (str, int, float, bool, type(None))
_SHOWN_KEY_CHARS = 80  # keys may be megabytes long; messages show a prefix


def describe_key(key: str) -> str:
    """The key as shown in messages: quoted, and cut when long."""
    if len(key) <= _SHOWN_KEY_CHARS:
        return repr(key)
    return f"{key[:_SHOWN_KEY_CHARS]!r}... ({len(key)} characters)"


def check_arguments(request: Request) -> str | None:
    """Why the request's arguments are wrong for its method, or None when they are fine."""
    method = request.method
    if method in ("insert", "lookup", "remove"):
        if not isinstance(request.key, str):
            return f"{method} needs a string 'key', not {_kind(request.key)}"
    elif method == "scan":
        if not isinstance(request.regex, str):
            return f"scan needs a string 'regex', not {_kind(request.regex)}"
    elif method == "query":
        if not isinstance(request.subkey, str):
            return f"query needs a string 'subkey', not {_kind(request.subkey)}"
        if not isinstance(request.subvalue, ATOMIC_TYPES):
            return "query needs an atomic 'subvalue' (a string, number, true, false or null)"
    return None


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _missing(key: str) -> Outcome:
    return Outcome.failed("KeyError", f"no such key: {describe_key(key)}")


def _same_json(stored: Any, wanted: Any) -> bool:
    # JSON equality: true is not 1 (Python says True == 1), but 1 equals 1.0.
    return stored == wanted and isinstance(stored, bool) == isinstance(wanted, bool)


class Table:
    """The key-value dict and the operations of the protocol on it."""

    __slots__ = ("data",)

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = {} if data is None else data

    def insert(self, key: str, value: Any) -> Outcome:
        self.data[key] = value
        return OK_NONE

    def lookup(self, key: str) -> Outcome:
        try:
            return Outcome.ok(self.data[key])
        except KeyError:
            return _missing(key)

    def remove(self, key: str) -> Outcome:
        try:
            return Outcome.ok(self.data.pop(key))
        except KeyError:
            return _missing(key)

    def size(self) -> Outcome:
        return Outcome.ok(len(self.data))

    def scan(self, pattern: str, budget: float) -> Outcome:
        """``[key, value]`` pairs whose key the pattern matches anywhere (``search``).

        The whole scan gets ``budget`` seconds, so a pattern that backtracks
        forever costs the server that long once, not forever.
        """
        try:
            compiled = regex.compile(pattern)
        except regex.error as error:
            return Outcome.invalid(f"invalid regex: {error}")
        except (RecursionError, MemoryError, OverflowError, ValueError) as error:
            # Deeply nested or enormous patterns fail inside the compiler itself.
            return Outcome.invalid(f"invalid regex: {type(error).__name__}")
        search = compiled.search
        clock = time.monotonic
        deadline = clock() + budget
        found = []
        try:
            for key, value in self.data.items():
                remaining = deadline - clock()
                if remaining <= 0:
                    raise TimeoutError
                if search(key, timeout=remaining):
                    found.append([key, value])
        except TimeoutError:
            return Outcome.invalid(
                f"scan stopped: the regex took longer than {budget:g} s over the table"
            )
        return Outcome.ok(found)

    def query(self, subkey: str, subvalue: Any) -> Outcome:
        """``[key, value]`` pairs whose value is an object holding ``subkey`` == ``subvalue``."""
        found = []
        for key, value in self.data.items():
            if type(value) is dict and subkey in value and _same_json(value[subkey], subvalue):
                found.append([key, value])
        return Outcome.ok(found)
