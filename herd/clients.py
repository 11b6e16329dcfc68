"""The client port's asyncio protocol: bytes in, lines to the server, replies out in order.

Several commands per connection are answered in the order they came; an IAMAT
whose reply waits (for the commit, for the neighbours' acknowledgements) holds
back the replies behind it, never the other connections. Each reply is written
in one piece. At EOF the connection closes once the last reply is out.

Bounds: a line longer than ``max_line`` is answered with ``?`` and ends the
connection; a client that does not read its replies stops being read, and its
lines stop being answered, once ``HIGH_WATER`` bytes wait for it, and stops being
read while ``MAX_QUEUED`` of its lines wait for their answers; one
connection's lines are answered for ``TURN_SLICE`` seconds at most before the
loop serves the others (a client pipelining thousands of WHATSATs delays
nobody else by more than that); an idle connection is closed after
``idle_timeout`` seconds; past ``max_clients`` connections, a new one takes the
place of one that has sent no complete line yet, else of the one idle longest
for a second (netkit.room; as nginx reuses its idle keep-alive connections:
otherwise whoever holds every place, sending nothing, locks everyone else out
until ``idle_timeout``), and is closed if none may go.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from typing import TYPE_CHECKING

from netkit.framing import LineFramer, LineTooLong

if TYPE_CHECKING:
    from herd.replies import PendingReply
    from herd.server import HerdServer

HIGH_WATER = 256 * 1024
LINGER = 5.0
TURN_SLICE = 0.005  # seconds of one connection's lines per loop turn
MAX_QUEUED = 1000  # lines read ahead of their answers (behind a reply that waits, say)
_clock = time.monotonic  # the slices' clock (a test's own)


def prepare(transport: asyncio.Transport, high_water: int) -> str:
    """Sets up a new TCP connection (no Nagle delay: replies are small and latency
    counts; a bound on buffered output) and returns its peer as ``host:port``."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport.set_write_buffer_limits(high=high_water)
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


class ClientProtocol(asyncio.Protocol):
    def __init__(self, server: HerdServer) -> None:
        self.server = server
        self.framer = LineFramer(server.options.max_line)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        # Lines not answered yet, each with the time it arrived (time.time_ns()): an
        # IAMAT's receive time, however long it waits behind the replies before it.
        self._lines: deque[tuple[bytes | None, int]] = deque()
        self._waiting: PendingReply | None = None
        self._closing = False  # EOF or a fatal line: close once the replies are out
        self._paused = False  # its replies fill the transport's buffer
        self._yielded = False  # lines wait for the next loop turn (TURN_SLICE)
        self.last_active = time.monotonic()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._discarding = False  # after an over-long line: read and drop until EOF
        self._overlong = self._eof = False

    # ---- asyncio callbacks --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.peer = prepare(transport, HIGH_WATER)
        if not self.server.client_opened(self):
            transport.abort()
            return
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self._discarding:
            return
        now = time.time_ns()
        try:
            lines = self.framer.feed(data)
        except LineTooLong as error:
            self._lines.extend([(line, now) for line in error.lines])
            self._lines.append((None, now))  # marks the over-long line
            self._overlong = True
            self._closing = True
        else:
            self._lines.extend([(line, now) for line in lines])
        if self._lines:  # a complete line: not silent (netkit.room)
            self.server.client_heard(self, self.last_active)
        self._process()
        if len(self._lines) >= MAX_QUEUED and not self.transport.is_closing():
            self.transport.pause_reading()  # _read_more once they are answered

    def eof_received(self) -> bool:
        self._eof = True
        if self._discarding:
            self.transport.close()
            return True
        # A last line without its newline still counts.
        if self.framer.pending:
            now = time.time_ns()
            try:
                self._lines.extend([(line, now) for line in self.framer.feed(b"\n")])
            except LineTooLong as error:
                self._lines.extend([(line, now) for line in error.lines])
                self._lines.append((None, now))
        self._closing = True
        self._process()
        return True  # keep the transport open to write the remaining replies

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._lines.clear()
        self.server.client_closed(self)

    def pause_writing(self) -> None:
        self._paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        # Not from here, inside the transport's own write callback: closing there (the
        # last reply out after EOF) makes asyncio's transport lose its connection twice.
        self._next_turn_soon()

    def _read_more(self) -> None:
        transport = self.transport
        if self._paused or self._yielded or self._closing or transport.is_closing():
            return
        if len(self._lines) < MAX_QUEUED:
            transport.resume_reading()

    def _next_turn_soon(self) -> None:
        if not self._yielded:
            self._yielded = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    # ---- serving ------------------------------------------------------------------

    def _process(self) -> None:
        """Answers queued lines in order until one must wait, none are left, or this
        connection's slice of the loop turn is over."""
        transport = self.transport
        if transport is None or transport.is_closing() or self._paused or self._yielded:
            return  # resume_writing or _next_turn calls again
        replies = []
        size, deadline = 0, _clock() + TURN_SLICE
        while self._lines and self._waiting is None:
            if replies and (size >= HIGH_WATER or _clock() >= deadline):
                transport.pause_reading()  # what is queued is enough to go on with
                self._next_turn_soon()
                break
            line, received_ns = self._lines.popleft()
            if line is None:
                replies.append(self.server.overlong_line(self.peer))
                self._lines.clear()
                break
            result = self.server.handle_client_line(line, self.peer, received_ns)
            if isinstance(result, bytes):
                replies.append(result)
                size += len(result)
            else:
                self._waiting = result
                result.on_ready = self._reply_ready
        if replies:
            transport.write(b"".join(replies) if len(replies) > 1 else replies[0])
        if self._closing and not self._lines and self._waiting is None:
            self._close_gently()

    def _next_turn(self) -> None:
        self._yielded = False
        self._process()
        self._read_more()

    def _close_gently(self) -> None:
        """Closes once the replies are out. Unread input would make the kernel reset
        the connection and drop those replies, so a client still sending (after an
        over-long line) is read and ignored until its EOF, for a few seconds at most."""
        transport = self.transport
        if not self._overlong or self._eof:
            transport.close()
            return
        self._discarding = True
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()
        asyncio.get_running_loop().call_later(LINGER, transport.close)

    def _reply_ready(self, reply: bytes) -> None:
        self._waiting = None
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(reply)
        self.server.client_heard(self, time.monotonic())  # answered now: not idle since
        self._process()
        self._read_more()

    def idle(self) -> bool:
        """Nothing to answer and nothing waiting: closing it loses nothing."""
        return self._waiting is None and not self._lines and not self._paused

    def close_to_make_room(self, now: float) -> None:
        self.server.io_log.info(
            "client %s idle for %.1f s: closed to make room", self.peer, now - self.last_active
        )
        self.transport.abort()  # at once: a reply it never read must not keep it open

    def _arm_idle_timer(self) -> None:
        timeout = self.server.options.idle_timeout
        if timeout:
            self._idle_timer = asyncio.get_running_loop().call_later(timeout, self._check_idle)

    def _check_idle(self) -> None:
        idle = time.monotonic() - self.last_active
        if idle >= self.server.options.idle_timeout and self._waiting is None:
            self.server.io_log.info("client %s idle for %.0f s: closed", self.peer, idle)
            self.transport.close()
            return
        self._arm_idle_timer()
