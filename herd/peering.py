"""The protocol between neighbouring herd servers, sans-IO: flooding and anti-entropy.

Lines, one message each, on the peer port only (never on the client port):

    HERD 2 <herd> <from> <to> <epoch> <cursor-epoch> <cursor-lsn>   first line, each way
    UPDATE <lsn> <received-ns> <server> <diff> <client> <location> <time> <fanout>
    ACK <lsn>                                                        "I have your changes up to lsn"
    PING                                                             heartbeat when idle

Acknowledgements are cumulative and cost a message each way, so only those a
reply waits for go out at once: an IAMAT's reply waits for the neighbours'
ACK of its update, and that update names its sender as the server that took
it (the AT line's server field). A batch holding one is acknowledged in the
same loop turn; any other ACK rides along with the next UPDATE lines going
back on that link, or goes out after ``LAZY_DELAY`` seconds (herd.links).
In a flood most updates a server receives were not taken by the sender (they
are being passed on, or are the second copy of one already passed on), so
most ACKs never need a message of their own.

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

Fanout: an UPDATE names (``<fanout>``, comma-separated, ``-`` for none) the
servers known to be getting that change promptly: those its sender sends it
to at once, and those the sender was told of in turn. A server holds back a
change from a neighbour named there for up to ``LAZY_DELAY`` seconds
(herd.links), unless something not covered goes to that neighbour anyway, in
which case everything pending goes in order, as always. Nothing is ever
skipped, only delayed: if the promised copy was lost (the link broke with it
in flight), the held one arrives a moment later. In the shipped five, an
update taken at Goloman then costs four prompt UPDATE messages instead of eight.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from herd.locations import Location, LocationTable, TableFull
from herd.messages import SERVER_NAME, Invalid, parse_at_fields

VERSION = "2"  # 2: UPDATE carries the fanout
_EPOCH = re.compile(r"[0-9a-f]{1,32}|-")
_NUMBER = re.compile(r"\d{1,19}", re.ASCII)
_NAME = SERVER_NAME.pattern
_FANOUT = re.compile(rf"-|{_NAME}(?:,{_NAME}){{0,63}}")
NO_FANOUT: frozenset[str] = frozenset()
_SPACE = re.compile(r"[ \t\n\r\x0b\x0c]")  # what bytes.split() splits at
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
        f"UPDATE {location.lsn} {location.received_ns} {at.server} {at.diff} {at.client} "
        f"{at.location} {at.time_text} {fanout_text(location.fanout)}"
    )


@functools.lru_cache(maxsize=1024)
def fanout_text(names: frozenset[str]) -> str:
    return ",".join(sorted(names)) or "-"


@functools.lru_cache(maxsize=1024)
def parse_fanout(text: str) -> frozenset[str]:
    """The servers an UPDATE's fanout field names (one shared set per distinct field).

    A fanout is only a hint (who else gets the change promptly): one that does not
    parse names nobody, so the change is passed on to every other neighbour and
    nothing is lost, where refusing it would drop the link and have the same line
    sent again on every redial."""
    if not _FANOUT.fullmatch(text):
        return NO_FANOUT
    return NO_FANOUT if text == "-" else frozenset(text.split(","))


def fanout(location: Location, neighbours: list[str], known: frozenset[str]) -> frozenset[str]:
    """Who gets ``location`` promptly: those its sender told us of (from us it will wait),
    and our other live links (``neighbours``), which we send it to at once. Names
    outside ``known`` (the herd's servers) are dropped, so the field stays short. It
    depends on the location's ``covered`` and ``via`` only."""
    told = location.covered & known
    via = location.via.neighbour if isinstance(location.via, Link) else None
    return told.union(n for n in neighbours if n != via)


class BadUpdate(ProtocolError):
    """A well-framed UPDATE whose location does not parse: skipped, the link kept."""


class Link:
    """One established link with a neighbour: what was sent, acknowledged, received."""

    def __init__(self, neighbour: str, their_epoch: str, resume_after: int, table_lsn: int):
        self.neighbour = neighbour
        self.their_epoch = their_epoch
        self.sent_upto = resume_after  # our lsn: everything up to it was sent (or not needed)
        self.acked = resume_after  # our lsn they confirmed having
        self.received_upto = 0  # their lsn: the last of their changes we got
        self.ack_due = False
        self.ack_urgent = False  # an UPDATE the sender's client waits for came: ACK this turn
        # A link whose neighbour is behind (new, or slow to acknowledge) is not
        # waited for by IAMAT replies until it has acknowledged this lsn.
        self.lagging_until: int | None = table_lsn if table_lsn > resume_after else None
        self._backlog: list[Location] = []
        self._backlog_pos = 0
        self._backlog_lsn = resume_after
        self._held_checked = resume_after  # changes up to here are all ones we may hold

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
            text = line.decode()
        except UnicodeDecodeError:
            raise ProtocolError("line is not UTF-8") from None
        if text.startswith("UPDATE"):
            return self._update(text, table)
        fields = text.split()
        if not fields:
            raise ProtocolError("empty line")
        kind = fields[0]
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

    def _update(self, text: str, table: LocationTable) -> Location | None:
        # One space between fields, as update_line writes them (a client ID holds none).
        fields = text.split(" ")
        if fields[0] != "UPDATE":
            raise ProtocolError(f"unexpected {fields[0][:20]!r} line")
        if len(fields) != 9 or not (_NUMBER.fullmatch(fields[1]) and _NUMBER.fullmatch(fields[2])):
            raise ProtocolError(
                "UPDATE takes lsn, received-ns, the 5 fields of an AT line and the fanout,"
                " one space apart"
            )
        lsn, received_ns = int(fields[1]), int(fields[2])
        current = table.get(fields[5])
        if current is not None and _same(current, received_ns, fields):
            # A flood brings some updates more than once: the copy we hold needs no
            # parsing, it was checked when it first came.
            self._accept(lsn, fields[3], fields[8])
            return None
        try:
            if _SPACE.search(fields[5]):
                raise Invalid("a client ID holds no whitespace")
            at = parse_at_fields(fields[3:8])
        except Invalid as error:
            # Taken (numbered and acknowledged) but not stored: dropping the link would
            # have it sent again on every redial, and cut the link off for good.
            self._accept(lsn, "", fields[8])
            raise BadUpdate(f"UPDATE {lsn} skipped: {error}") from None
        location = Location(at, received_ns)
        location.covered = self._accept(lsn, at.server, fields[8])
        try:
            return location if table.offer(location, via=self) else None
        except TableFull:
            return None  # logged by the caller through the table's size; nothing to flood

    def _accept(self, lsn: int, server: str, fanout_field: str) -> frozenset[str]:
        """Records a well-formed UPDATE's lsn (in order, or ``ProtocolError``) and the ACK
        it is owed; returns the servers its fanout names."""
        if lsn <= self.received_upto:
            raise ProtocolError(f"UPDATE lsn {lsn} after {self.received_upto}: out of order")
        covered = parse_fanout(fanout_field)
        self.received_upto = lsn
        self.ack_due = True
        if server == self.neighbour:
            self.ack_urgent = True
        return covered

    def ack_line(self) -> bytes | None:
        """The ACK of every UPDATE received so far, if one came since the last ACK."""
        if not self.ack_due:
            return None
        self.ack_due = self.ack_urgent = False
        return f"ACK {self.received_upto}\n".encode()

    def outgoing(self, table: LocationTable, limit: int, hold: bool = False) -> list[str]:
        """Up to ``limit`` UPDATE lines of changes the neighbour has not been sent, in order.

        With ``hold``, none while every one of them is a change the neighbour is
        getting from elsewhere promptly (its fanout names it): see ``holding``.
        """
        if self._backlog_pos >= len(self._backlog):
            if self.sent_upto >= table.lsn or (hold and not self._must_send(table)):
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
            self.sent_upto = self._held_checked = self._backlog_lsn
        lines = []
        for location in chunk:
            # Not back to where it came from; not if superseded since (the newer goes out later).
            if location.via is not self and table.get(location.at.client) is location:
                lines.append(update_line(location))
        return lines

    def _must_send(self, table: LocationTable) -> bool:
        """Whether a change not sent yet is one the neighbour is not promised from elsewhere.
        Only the changes since the last look are checked (newest first)."""
        neighbour = self.neighbour
        for location in reversed(table.changed_since(self._held_checked)):
            if location.via is not self and neighbour not in location.covered:
                return True
        self._held_checked = table.lsn
        return False

    def holding(self, table: LocationTable) -> bool:
        """Whether changes were held back (``outgoing(hold=True)`` sent none of them)."""
        return self.sent_upto < table.lsn and not self.has_outgoing

    @property
    def has_outgoing(self) -> bool:
        return self._backlog_pos < len(self._backlog)


def _same(current: Location, received_ns: int, fields: list[str]) -> bool:
    """Whether an UPDATE's fields are exactly the location ``current``."""
    at = current.at
    return (
        current.received_ns == received_ns
        and at.time_text == fields[7]
        and at.location == fields[6]
        and at.server == fields[3]
        and at.diff == fields[4]
    )
