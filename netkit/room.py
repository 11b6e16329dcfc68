"""Which connection gives way when a server is full (sans-IO).

Connections that send nothing cost a descriptor each, and anyone who can reach
the port can open thousands. So past its limit a server makes room for a new
connection by closing the one idle longest, if that one has been idle at least a
moment (as nginx reuses idle keep-alive connections): idle connections cannot
lock the working ones out, and a flood of them only ever displaces itself. When
none is idle long enough the newcomer is refused.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

# At the limit, a connection silent this long may be closed to make room.
MIN_IDLE = 1.0

C = TypeVar("C", bound=Hashable)


class IdleOrder(Generic[C]):
    """Connections in the order they were last heard from, the idlest first;
    ``heard`` is O(1), so it is called for every read."""

    def __init__(self) -> None:
        self._heard: OrderedDict[C, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._heard)

    def __contains__(self, connection: object) -> bool:
        return connection in self._heard

    def add(self, connection: C, now: float) -> None:
        self._heard[connection] = now

    def heard(self, connection: C, now: float) -> None:
        """It sent something at ``now``."""
        if connection in self._heard:
            self._heard[connection] = now
            self._heard.move_to_end(connection)

    def remove(self, connection: C) -> None:
        """Forgets it (idempotent)."""
        self._heard.pop(connection, None)

    def idlest(
        self,
        now: float,
        may_close: Callable[[C], bool] = lambda _: True,
        min_idle: float = MIN_IDLE,
    ) -> C | None:
        """The connection idle longest (at least ``min_idle`` seconds) that
        ``may_close`` allows closing, or None."""
        for connection, heard in self._heard.items():
            if now - heard < min_idle:
                return None  # the rest were heard from more recently still
            if may_close(connection):
                return connection
        return None
