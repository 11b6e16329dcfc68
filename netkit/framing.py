"""Newline-delimited message framing, sans-IO.

TCP is a byte stream: one ``recv`` may hold half a message or ten. ``LineFramer``
turns whatever bytes arrive into complete lines and refuses to buffer more than
``max_line`` bytes of a line that never ends, so a peer cannot exhaust memory.
Every line-oriented protocol in the project (hash table, TS, LS) frames with it.
"""

from __future__ import annotations

DEFAULT_MAX_LINE = 8 * 1024 * 1024


class LineTooLong(ValueError):
    """A peer sent more than ``max_line`` bytes without a newline.

    ``lines`` holds the complete lines that arrived before the over-long one:
    they are well-formed requests and must still be served, not dropped.
    """

    def __init__(self, max_line: int, lines: list[bytes] | None = None) -> None:
        super().__init__(f"line longer than {max_line} bytes")
        self.max_line = max_line
        self.lines = lines or []


class LineFramer:
    """Accumulates bytes and yields complete ``\\n``-terminated lines.

    Lines are returned without their terminator; a trailing ``\\r`` is kept so
    that callers decide whether CRLF matters to their protocol.
    """

    __slots__ = ("_buffer", "_scanned", "max_line")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        # Bytes of _buffer already known to hold no newline: without it a line
        # arriving in many small pieces would be rescanned from the start each time.
        self._scanned = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Adds ``data``; returns the lines it completed (possibly none).

        Raises ``LineTooLong`` once a line exceeds ``max_line``; the exception
        carries the complete lines before it. The framer is then unusable and
        the connection should be closed once those lines are answered.
        """
        buffer = self._buffer
        if not buffer and data.endswith(b"\n") and len(data) <= self.max_line + 1:
            # Fast path: the common case of whole requests per recv (none can be
            # longer than the data).
            lines = data.split(b"\n")
            lines.pop()
            return lines
        buffer += data
        end = buffer.rfind(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(buffer)
            if len(buffer) > self.max_line:
                raise LineTooLong(self.max_line)
            return []
        lines = bytes(buffer[:end]).split(b"\n")
        del buffer[: end + 1]
        self._scanned = 0
        if max(map(len, lines)) > self.max_line:
            n = next(n for n, line in enumerate(lines) if len(line) > self.max_line)
            raise LineTooLong(self.max_line, lines[:n])
        if len(buffer) > self.max_line:
            raise LineTooLong(self.max_line, lines)
        return lines

    def take_rest(self) -> bytes:
        """The bytes of an unfinished line, removed from the framer (at EOF, the
        peer's last line if it did not end it with a newline)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        return rest

    @property
    def pending(self) -> int:
        """Bytes held of a line not yet complete."""
        return len(self._buffer)
