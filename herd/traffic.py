"""The traffic log: every line in and out and every link event, in the server's log file.

Written by the server's own buffered writer, not a logging.Handler: the handler
formats a time and flushes for every record (about 35 us each here), and a
flooded update is some twenty lines across the herd. Lines of one loop turn are
joined and written with one ``os.write`` at the end of the turn, with the time
of that turn (to the millisecond). The server owns the turn: the first line
buffered calls ``on_first_line`` (HerdServer.schedule_turn), and the server's
end-of-turn callback calls ``flush`` after its own writes, so that one callback
per turn does both. The file is opened O_APPEND, so the logging module's
records (start, stop, warnings) can share it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


class TrafficLog:
    """Stands in for a ``logging.Logger`` where the server logs traffic: ``info(fmt, *args)``."""

    def __init__(self, path: Path | None, on_first_line: Callable[[], None] | None = None) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if path else -1
        self._lines: list[str] = []
        self._on_first_line = on_first_line
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

    def flush(self) -> None:
        if not self._lines or self._fd < 0:
            return
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not once a turn
            self._second = second
            self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        stamp = f"{self._second_text}.{int(now % 1 * 1000):03d} "
        text = stamp + ("\n" + stamp).join(self._lines) + "\n"
        self._lines.clear()
        data = text.encode(errors="backslashreplace")
        while data:
            data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
