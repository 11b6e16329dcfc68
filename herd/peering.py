"""The protocol between neighbouring herd servers, sans-IO: flooding and anti-entropy.

Lines, one message each, on the peer port only (never on the client port):

    HERD 1 <herd> <from> <to> <epoch> <cursor-epoch> <cursor-lsn>   first line, each way
    UPDATE <lsn> <received-ns> <server> <diff> <client> <location> <time>
    ACK <lsn>                                                        "I have your changes up to lsn"
    PING                                                             heartbeat when idle

Each server numbers its own table changes (``lsn``, see herd.locations) and
streams them to each neighbour in that order; the neighbour remembers the last
one it got (its *cursor*: the sender's epoch and lsn) and names it in its HERD
line when the link comes back, so the sender resumes right after it: catch-up
sends only what changed meanwhile, and a location superseded meanwhile is not
sent at all. The epoch is random per process start: a restarted server (whose
numbering began again) is asked from the start, and sends its whole table.
Flooding is the same stream: a change accepted from one neighbour is a change
like any other, sent to every other neighbour; a duplicate or an older location
is not a change, so it goes nowhere and the flood stops.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from herd.locations import Location, LocationTable, TableFull
from herd.messages import SERVER_NAME, Invalid, parse_at_fields

VERSION = "1"
_EPOCH = re.compile(r"[0-9a-f]{1,32}|-")
_NUMBER = re.compile(r"\d{1,19}")
PING_LINE = b"PING\n"


class ProtocolError(Exception):
    """A neighbour broke the protocol; the link is dropped (and redialled)."""


@dataclass(frozen=True, slots=True)
class Hello:
    herd: str
    sender: str
    receiver: str
    epoch: str
    cursor_epoch: str  # "-": none
    cursor_lsn: int

    def line(self) -> bytes:
        return (
            f"HERD {VERSION} {self.herd} {self.sender} {self.receiver} {self.epoch} "
            f"{self.cursor_epoch} {self.cursor_lsn}\n"
        ).encode()


def parse_hello(line: bytes) -> Hello:
    try:
        fields = line.decode("ascii").split()
    except UnicodeDecodeError:
        raise ProtocolError("HERD line is not ASCII") from None
    if len(fields) != 8 or fields[0] != "HERD":
        raise ProtocolError("the first line must be HERD with 7 fields")
    _, version, herd, sender, receiver, epoch, cursor_epoch, cursor_lsn = fields
    if version != VERSION:
        raise ProtocolError(f"protocol version {version[:20]!r}, not {VERSION}")
    for name in (herd, sender, receiver):
        if not SERVER_NAME.fullmatch(name):
            raise ProtocolError("bad name in HERD line")
    if not (_EPOCH.fullmatch(epoch) and epoch != "-" and _EPOCH.fullmatch(cursor_epoch)):
        raise ProtocolError("bad epoch in HERD line")
    if not _NUMBER.fullmatch(cursor_lsn):
        raise ProtocolError("bad cursor in HERD line")
    return Hello(herd, sender, receiver, epoch, cursor_epoch, int(cursor_lsn))


def update_line(location: Location) -> str:
    at = location.at
    return (
        f"UPDATE {location.lsn} {location.received_ns} {at.server} {at.diff} "
        f"{at.client} {at.location} {at.time_text}"
    )


class Waiter(Protocol):
    """What AckWaiters resolves: an asyncio.Future has this shape."""

    def done(self) -> bool: ...
    def set_result(self, result: Any) -> None: ...


class Link:
    """One established link with a neighbour: what was sent, acknowledged, received."""

    def __init__(self, neighbour: str, their_epoch: str, resume_after: int, table_lsn: int):
        self.neighbour = neighbour
        self.their_epoch = their_epoch
        self.sent_upto = resume_after  # our lsn: everything up to it was sent (or not needed)
        self.acked = resume_after  # our lsn they confirmed having
        self.received_upto = 0  # their lsn: the last of their changes we got
        self.ack_due = False
        # A link whose neighbour is behind (new, or slow to acknowledge) is not
        # waited for by IAMAT replies until it has acknowledged this lsn.
        self.lagging_until: int | None = table_lsn if table_lsn > resume_after else None
        self._backlog: list[Location] = []
        self._backlog_pos = 0
        self._backlog_lsn = resume_after

    @property
    def lagging(self) -> bool:
        return self.lagging_until is not None

    def mark_lagging(self, until: int) -> None:
        self.lagging_until = max(until, self.lagging_until or 0)

    def receive(self, line: bytes, table: LocationTable) -> Location | None:
        """Handles one line; returns the location it changed in ``table``, if any.

        Raises ``ProtocolError`` for a line that breaks the protocol.
        """
        try:
            fields = line.decode().split()
        except UnicodeDecodeError:
            raise ProtocolError("line is not UTF-8") from None
        if not fields:
            raise ProtocolError("empty line")
        kind = fields[0]
        if kind == "UPDATE":
            return self._update(fields, table)
        if kind == "ACK" and len(fields) == 2 and _NUMBER.fullmatch(fields[1]):
            lsn = int(fields[1])
            if lsn > self.acked:
                self.acked = lsn
                if self.lagging_until is not None and lsn >= self.lagging_until:
                    self.lagging_until = None
            return None
        if kind == "PING" and len(fields) == 1:
            return None
        raise ProtocolError(f"unexpected {kind[:20]!r} line")

    def _update(self, fields: list[str], table: LocationTable) -> Location | None:
        if len(fields) != 8 or not (_NUMBER.fullmatch(fields[1]) and _NUMBER.fullmatch(fields[2])):
            raise ProtocolError("UPDATE takes lsn, received-ns and the 5 fields of an AT line")
        try:
            at = parse_at_fields(fields[3:])
        except Invalid as error:
            raise ProtocolError(f"bad UPDATE: {error}") from None
        lsn = int(fields[1])
        if lsn <= self.received_upto:
            raise ProtocolError(f"UPDATE lsn {lsn} after {self.received_upto}: out of order")
        self.received_upto = lsn
        self.ack_due = True
        location = Location(at, int(fields[2]))
        try:
            return location if table.offer(location, via=self) else None
        except TableFull:
            return None  # logged by the caller through the table's size; nothing to flood

    def ack_line(self) -> bytes | None:
        """The ACK to send after a batch of received lines, if any UPDATE came."""
        if not self.ack_due:
            return None
        self.ack_due = False
        return f"ACK {self.received_upto}\n".encode()

    def outgoing(self, table: LocationTable, limit: int) -> list[str]:
        """Up to ``limit`` UPDATE lines of changes the neighbour has not been sent, in order."""
        if self._backlog_pos >= len(self._backlog):
            if self.sent_upto >= table.lsn:
                return []
            self._backlog = table.changed_since(self.sent_upto)
            self._backlog_pos = 0
            self._backlog_lsn = table.lsn
        start = self._backlog_pos
        chunk = self._backlog[start : start + limit]
        self._backlog_pos = start + len(chunk)
        if self._backlog_pos >= len(self._backlog):
            self._backlog = []
            self._backlog_pos = 0
            self.sent_upto = self._backlog_lsn
        lines = []
        for location in chunk:
            # Not back to where it came from; not if superseded since (the newer goes out later).
            if location.via is not self and table.get(location.at.client) is location:
                lines.append(update_line(location))
        return lines

    @property
    def has_outgoing(self) -> bool:
        return self._backlog_pos < len(self._backlog)


class AckWaiters:
    """IAMAT replies waiting until every live, up-to-date neighbour has the update.

    Waiters are queued in lsn order (each IAMAT's change has a higher lsn than the
    last), and acknowledgements only grow, so only the front needs checking.
    """

    def __init__(self) -> None:
        self._waiting: deque[tuple[int, Waiter]] = deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, lsn: int, waiter: Waiter, links: list[Link]) -> None:
        self._waiting.append((lsn, waiter))
        self.release(links)

    def release(self, links: list[Link]) -> None:
        """Resolves every waiter that all live, non-lagging links have acknowledged."""
        waiting = self._waiting
        while waiting:
            lsn, waiter = waiting[0]
            if any(link.acked < lsn and link.lagging_until is None for link in links):
                return
            waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def expire(self, lsn: int, links: list[Link], table_lsn: int) -> None:
        """The wait for ``lsn`` timed out: links that have not acknowledged it are
        lagging (not waited for) until they catch up; then the waiters move on."""
        for link in links:
            if link.acked < lsn:
                link.mark_lagging(table_lsn)
        self.release(links)
