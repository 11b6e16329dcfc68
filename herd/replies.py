"""IAMAT replies waiting for their update to reach the neighbours (sans-IO).

A reply leaves once every live, up-to-date neighbour has acknowledged the
update (``AckWaiters``), or its time-out passes; then a neighbour that had not
is lagging, not waited for, until it catches up. At start the links are not up
yet: each neighbour whose link is on its way (dialled, or knocked on:
herd.links) stands in as an ``ExpectedLink``, so that the first replies wait
for it too, within the same time-out, and a WHATSAT at a neighbour right after
the reply sees the location even then.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class Acking(Protocol):
    """A link as the waiters see it (herd.peering.Link, or an ExpectedLink)."""

    acked: int  # the last lsn it acknowledged
    lagging_until: int | None

    def mark_lagging(self, until: int) -> None: ...


class Waiter(Protocol):
    """What AckWaiters resolves: an asyncio.Future has this shape."""

    def done(self) -> bool: ...
    def set_result(self, result: Any) -> None: ...


class PendingReply:
    """A reply that leaves once ``remaining`` conditions (commit, acks) have each been met:
    then ``on_sent`` (the traffic log) and ``on_ready`` (the client's connection) get it.
    Not an asyncio Future, whose callbacks would wait for the next loop turn: the reply
    is written in the turn its last acknowledgement arrives."""

    __slots__ = ("on_ready", "on_sent", "remaining", "reply")

    def __init__(
        self, reply: bytes, remaining: int, on_sent: Callable[[bytes], None] | None = None
    ) -> None:
        self.reply, self.remaining, self.on_sent = reply, remaining, on_sent
        self.on_ready: Callable[[bytes], None] | None = None

    def done(self) -> bool:
        return self.remaining <= 0

    def set_result(self, _: object) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            if self.on_sent is not None:
                self.on_sent(self.reply)
            if self.on_ready is not None:
                self.on_ready(self.reply)


class ExpectedLink:
    """A neighbour whose link is on its way at start: waited for like a live link
    that has acknowledged nothing, until the link is up (or the attempt failed)."""

    __slots__ = ("acked", "lagging_until", "neighbour")

    def __init__(self, neighbour: str) -> None:
        self.neighbour = neighbour
        self.acked = 0
        self.lagging_until: int | None = None

    def mark_lagging(self, until: int) -> None:
        self.lagging_until = until


class AckWaiters:
    """IAMAT replies waiting until every live, up-to-date neighbour has the update.

    Waiters are queued in lsn order (each IAMAT's change has a higher lsn than the
    last), and acknowledgements only grow, so only the front needs checking. Each
    has a deadline; they are added in deadline order too, so one timer for the
    front's deadline serves them all (``next_deadline``, ``expire_due``).
    """

    def __init__(self) -> None:
        self._waiting: deque[tuple[int, Waiter, float]] = deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def add(
        self, lsn: int, waiter: Waiter, links: Sequence[Acking], deadline: float = math.inf
    ) -> None:
        self._waiting.append((lsn, waiter, deadline))
        self.release(links)

    def release(self, links: Sequence[Acking]) -> None:
        """Resolves every waiter that all live, non-lagging links have acknowledged."""
        waiting = self._waiting
        while waiting:
            lsn, waiter, _ = waiting[0]
            if any(link.acked < lsn and link.lagging_until is None for link in links):
                return
            waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def expire(self, lsn: int, links: Sequence[Acking], table_lsn: int) -> None:
        """The wait for ``lsn`` timed out: links that have not acknowledged it are
        lagging (not waited for) until they catch up; then the waiters move on."""
        for link in links:
            if link.acked < lsn:
                link.mark_lagging(table_lsn)
        self.release(links)

    def next_deadline(self) -> float | None:
        return self._waiting[0][2] if self._waiting else None

    def expire_due(self, now: float, links: Sequence[Acking], table_lsn: int) -> None:
        """Expires every waiter whose deadline is ``now`` or earlier."""
        waiting = self._waiting
        while waiting and waiting[0][2] <= now:
            self.expire(waiting[0][0], links, table_lsn)
