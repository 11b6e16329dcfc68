"""The traffic log: every line in and out and every link event, in the server's log file.

Written by the server's own buffered writer, not a logging.Handler: the handler
formats a time and flushes for every record (about 35 us each here), and a
flooded update is some twenty lines across the herd. Lines of one loop turn are
joined and written with one ``os.write`` at the end of the turn, with the time
of that turn (to the millisecond). The file is opened O_APPEND, so the logging
module's records (start, stop, warnings) can share it.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path


class TrafficLog:
    """Stands in for a ``logging.Logger`` where the server logs traffic: ``info(fmt, *args)``."""

    def __init__(self, path: Path | None) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if path else -1
        self._lines: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def info(self, message: str, *args: object) -> None:
        if self._fd < 0:
            return
        if not self._lines and self._loop is not None:
            self._loop.call_soon(self.flush)
        self._lines.append(message % args if args else message)

    def flush(self) -> None:
        if not self._lines or self._fd < 0:
            return
        now = time.time()
        stamp = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d} "
        )
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
