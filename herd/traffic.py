"""The traffic log: every line in and out and every link event, in the server's log file.

Written by the server's own buffered writer, not a logging.Handler: the handler
formats a time and flushes for every record (about 35 us each here), and a
flooded update is some twenty-five lines across the herd. The lines of one
loop turn are joined with the time of that turn (to the millisecond) when the
turn ends (``end_turn``, from the server's end-of-turn callback: the first line
buffered calls ``on_first_line``, HerdServer.schedule_turn, so one callback per
turn does the server's writes and this), and written with one ``os.write``
at most every ``flush_interval`` seconds (0: at the end of every turn), as
nginx's ``access_log ... flush=`` does: a write per turn was about a tenth
of a server's CPU per update. What a SIGKILL can lose is the last interval's
lines; a stop (SIGTERM, SIGINT, SIGHUP) writes everything.

The logging module's records (start, links up and down, warnings) reach the
file through this writer too (``RecordHandler``), so that the file is in the
order things happened and one writer can rotate it: past ``max_bytes`` it
becomes ``NAME.log.1`` (older ones ``.2`` ... up to ``backups``), as
logging's RotatingFileHandler does, so that no client can fill the disk
through the log. A write that fails (a full disk) drops those lines, says so
once on standard error, and says how much was lost in the log once writing
works again; the server goes on serving.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

MAX_PENDING = 1 << 20  # bytes held back at most, whatever the interval
# What a line from the network may hold that would move a terminal's cursor, or
# look like a line break to a log reader: written escaped (\r, \x00, \u2028), so
# that no client can forge or hide a line of the log.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_ASCII_CONTROL = bytes([*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F])
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


class TrafficLog:
    """Stands in for a ``logging.Logger`` where the server logs traffic: ``info(fmt, *args)``."""

    def __init__(
        self,
        path: Path | None,
        on_first_line: Callable[[], None] | None = None,
        flush_interval: float = 0.0,
        call_later: Callable[[float, Callable[[], None]], object] | None = None,
        max_bytes: int = 0,
        backups: int = 1,
    ) -> None:
        self._path = path
        self._fd = os.open(path, _FLAGS, 0o644) if path else -1
        self._size = os.fstat(self._fd).st_size if path else 0
        self._max_bytes = max_bytes  # 0: never rotated
        self._backups = backups
        self._lock = threading.Lock()  # for records logged by other threads (RecordHandler)
        self._lost = 0  # bytes that could not be written, said in the log once it works
        self._lines: list[str] = []  # this turn's
        self._pending: list[bytes] = []  # earlier turns', stamped, not written yet
        self._pending_size = 0
        self._timer_armed = False
        # One tuple, replaced whole: write_now stamps from other threads too.
        self._second_stamp: tuple[int, str] = (-1, "")
        self.bind(on_first_line, flush_interval, call_later)

    def bind(
        self,
        on_first_line: Callable[[], None] | None,
        flush_interval: float,
        call_later: Callable[[float, Callable[[], None]], object] | None,
    ) -> None:
        """Joins the log to a server's loop turns (opened before the server exists,
        it writes every line at once until then)."""
        self._on_first_line = on_first_line
        self._interval = flush_interval if call_later is not None else 0.0
        self._call_later = call_later

    def info(self, message: str, *args: object) -> None:
        self.line(message % args if args else message)

    def line(self, text: str) -> None:
        """One line as it is (``info`` without the formatting, for the hot paths)."""
        if self._fd < 0:
            return
        if not self._lines and self._on_first_line is not None:
            self._on_first_line()
        self._lines.append(text)

    def lines(self, prefix: str, texts: list[str]) -> None:
        """One line for each of ``texts``, each after ``prefix``."""
        if self._fd < 0 or not texts:
            return
        if not self._lines and self._on_first_line is not None:
            self._on_first_line()
        self._lines.extend([prefix + text for text in texts])

    def end_turn(self) -> None:
        """Stamps this turn's lines with the time; writes them now or within the interval."""
        if not self._lines or self._fd < 0:
            return
        data = self._stamped(self._lines)
        self._lines.clear()
        self._pending.append(data)
        self._pending_size += len(data)
        if self._interval <= 0 or self._pending_size >= MAX_PENDING:
            self._write()
        elif not self._timer_armed:
            self._timer_armed = True
            self._call_later(self._interval, self._timer_fired)

    def _stamped(self, lines: list[str]) -> bytes:
        """The lines, each after the time, escaped, as bytes for the file."""
        now = time.time()
        second, second_text = self._second_stamp
        if int(now) != second:  # strftime once a second, not once a turn
            second = int(now)
            second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._second_stamp = (second, second_text)
        stamp = f"{second_text}.{int(now % 1 * 1000):03d} "
        text = stamp + ("\n" + stamp).join(lines) + "\n"
        data = text.encode(errors="backslashreplace")
        # Checked on the bytes at C speed (a regular expression over the text cost 6 us
        # a KB, a tenth of a WHATSAT): only a turn with an ASCII control character, or
        # UTF-8 that may hold a C1 one or U+2028/9 (lead bytes C2, E2 80), is searched.
        if len(data.translate(None, _ASCII_CONTROL)) != len(data) or (
            not text.isascii() and (b"\xc2" in data or b"\xe2\x80" in data)
        ):
            data = _CONTROL.sub(_escaped, text).encode(errors="backslashreplace")
        return data

    def _timer_fired(self) -> None:
        self._timer_armed = False
        self.flush()

    def flush(self) -> None:
        """Writes everything buffered."""
        self.end_turn()
        self._write()

    def _write(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        self._pending_size = 0
        with self._lock:
            self._write_out(data)

    def write_now(self, lines: list[str]) -> None:
        """Writes ``lines`` at once, from any thread (ahead of what the loop holds)."""
        if self._fd >= 0:
            data = self._stamped(lines)
            with self._lock:
                self._write_out(data)

    def _write_out(self, data: bytes) -> None:
        """Under the lock: rotates when ``data`` would pass ``max_bytes``, then writes."""
        if self._fd < 0:
            return
        if self._max_bytes and self._size and self._size + len(data) > self._max_bytes:
            self._rotate()
        if self._lost:
            data = (
                self._stamped([f"({self._lost} bytes of log lines were lost: not written)"]) + data
            )
        try:
            while data:
                written = os.write(self._fd, data)
                self._size += written
                data = data[written:]
        except OSError as error:
            if not self._lost:
                _warn(f"cannot write the log {self._path}: {error.strerror or error}; "
                      "its lines are dropped until it can be written again")  # fmt: skip
            self._lost += len(data)
        else:
            self._lost = 0

    def _rotate(self) -> None:
        """``NAME.log`` becomes ``NAME.log.1`` (``.1`` becomes ``.2``, ...), and a new
        ``NAME.log`` is begun. If that fails, the log grows on and is tried again later."""
        path = str(self._path)
        try:
            for index in range(self._backups - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{path}.{index}", f"{path}.{index + 1}")
            if self._backups:
                os.replace(path, f"{path}.1")
            fd = os.open(path, _FLAGS | (0 if self._backups else os.O_TRUNC), 0o644)
        except OSError as error:
            _warn(f"cannot rotate the log {path}: {error.strerror or error}")
            self._size = 0  # tried again after another max_bytes
            return
        os.close(self._fd)
        self._fd, self._size = fd, 0

    def close(self) -> None:
        self.flush()
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class RecordHandler(logging.Handler):
    """The logging module's records, into a ``TrafficLog`` in their place among the
    traffic lines (a handler of their own, writing at once, put them ahead of the
    lines the log still held). Records from other threads are written at once."""

    def __init__(self, log: TrafficLog) -> None:
        super().__init__()
        self.log = log
        self._thread = threading.get_ident()  # the loop's: the one that makes the server

    def emit(self, record: logging.LogRecord) -> None:
        try:
            lines = self.format(record).split("\n")
            if threading.get_ident() != self._thread:
                self.log.write_now(lines)
                return
            for line in lines:
                self.log.line(line)
            self.log.flush()
        except Exception:
            self.handleError(record)


def _warn(message: str) -> None:
    """To standard error, not through logging: the log itself is what failed."""
    print(f"{time.strftime('%H:%M:%S')} herd: {message}", file=sys.stderr, flush=True)
