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
lines; a stop (SIGTERM, SIGINT) writes everything. The file is opened O_APPEND,
so the logging module's records (start, stop, warnings) can share it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

MAX_PENDING = 1 << 20  # bytes held back at most, whatever the interval
# What a line from the network may hold that would move a terminal's cursor, or
# look like a line break to a log reader: written escaped (\r, \x00, \u2028), so
# that no client can forge or hide a line of the log.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_ASCII_CONTROL = bytes([*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F])


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
    ) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if path else -1
        self._lines: list[str] = []  # this turn's
        self._pending: list[bytes] = []  # earlier turns', stamped, not written yet
        self._pending_size = 0
        self._on_first_line = on_first_line
        self._interval = flush_interval if call_later is not None else 0.0
        self._call_later = call_later
        self._timer_armed = False
        self._second = -1
        self._second_text = ""

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
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not once a turn
            self._second = second
            self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        stamp = f"{self._second_text}.{int(now % 1 * 1000):03d} "
        text = stamp + ("\n" + stamp).join(self._lines) + "\n"
        data = text.encode(errors="backslashreplace")
        # Checked on the bytes at C speed (a regular expression over the text cost 6 us
        # a KB, a tenth of a WHATSAT): only a turn with an ASCII control character, or
        # UTF-8 that may hold a C1 one or U+2028/9 (lead bytes C2, E2 80), is searched.
        if len(data.translate(None, _ASCII_CONTROL)) != len(data) or (
            not text.isascii() and (b"\xc2" in data or b"\xe2\x80" in data)
        ):
            data = _CONTROL.sub(_escaped, text).encode(errors="backslashreplace")
        self._lines.clear()
        self._pending.append(data)
        self._pending_size += len(data)
        if self._interval <= 0 or self._pending_size >= MAX_PENDING:
            self._write()
        elif not self._timer_armed:
            self._timer_armed = True
            self._call_later(self._interval, self._timer_fired)

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
        while data:
            data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
