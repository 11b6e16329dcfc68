"""argparse types shared by the programs: one wording for each kind of bad argument."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

MAX_SECONDS = 1e7  # beyond this a timer overflows select(); nobody means it
T = TypeVar("T")


def program_name(usual: str) -> str:
    """What a program's usage and errors call it: the console script's name when it
    was started as one (``hashtable-server``), else ``usual``, the way it runs from a
    checkout (``HashTableServer.py``, ``python -m catalog``)."""
    started_as = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not started_as or started_as == "-c" or started_as.endswith(".py"):
        return usual
    return started_as


def port_number(text: str) -> int:
    """A TCP/UDP port; 0 lets a server take any free one."""
    if not (text.isascii() and text.isdigit()) or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return int(text)


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least {minimum}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def nonnegative_int(text: str) -> int:
    return _whole_number(text, 0)


def int_between(minimum: int, maximum: int) -> Callable[[str], int]:
    """argparse type: a whole number from ``minimum`` to ``maximum``, for a bound
    that must stay one (a huge value would switch it off)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number from {minimum} to {maximum}"
            )
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value if value <= MAX_SECONDS else math.nan


def positive_seconds(text: str) -> float:
    """A duration greater than zero (finite)."""
    value = _seconds(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds greater than 0 (at most {MAX_SECONDS:g})"
        )
    return value


def nonnegative_seconds(text: str) -> float:
    """A duration of zero or more (finite)."""
    value = _seconds(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds from 0 to {MAX_SECONDS:g}"
        )
    return value


def positive_number(text: str) -> float:
    """A finite number greater than zero (a rate, a size in units)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number greater than 0")
    return value


_BYTE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MAX_BYTES = 1 << 62


def byte_size(text: str) -> int:
    """A number of bytes, whole or with a unit: ``536870912``, ``512M``, ``1.5GiB``
    (K, M, G, T are powers of 1024, with or without ``B``/``iB`` after them)."""
    number = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = number[-1:] if number[-1:] in _BYTE_UNITS else ""
    try:
        value = float(number[: len(number) - len(unit)]) * _BYTE_UNITS[unit]
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_BYTES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size in bytes (such as 536870912, 512M or 1.5G)"
        )
    return int(value)


def number_list(item: Callable[[str], T]) -> Callable[[str], list[T]]:
    """argparse type: a comma-separated list, each item parsed (and checked) by ``item``,
    e.g. ``number_list(positive_int)`` for ``1,2,4,8``."""

    def parse(text: str) -> list[T]:
        items = [item(word.strip()) for word in text.split(",") if word.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{text!r}: give at least one, comma-separated")
        return items

    return parse


def nonempty_path(text: str) -> Path:
    """A path that is not empty: ``""`` (an unset variable, say) would mean the
    current folder, which is never what was meant."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path names no file or folder")
    return Path(text)


def choice_list(choices: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """argparse type: a comma-separated list of some of ``choices``, in the order given,
    each once; ``what`` names one item in the error message."""

    def parse(text: str) -> list[str]:
        names = list(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(unknown) or repr(text)}; choose from {', '.join(choices)}"
            )
        return names

    return parse


def writable_file(text: str) -> Path:
    """argparse type: a file that can be written now, so that a program learns it
    before its work rather than after. Checked by opening it for appending (what
    permissions alone cannot tell: a read-only file system, a missing folder, root's
    rights); a file that was not there is removed again."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file")
    existed = os.path.lexists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {exc.strerror or exc}") from None
    if not existed:
        path.unlink(missing_ok=True)
    return path
