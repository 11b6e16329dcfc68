"""Which connection gives way when a server is full (sans-IO).

Connections cost a descriptor each, and anyone who can reach the port can open
thousands. So past its limit a server makes room for a new connection by
closing another, chosen so that a flood cannot push out the connections doing
real work:

- first the oldest **silent** one: connected, and no complete line from it yet,
  for ``MIN_SILENT`` at least (an honest client sends its request at once), so
  that a flood of connections that send nothing (or dribble a partial line) only
  ever displaces itself, as the hash table's admission does for unauthenticated
  connections. While silent ones are there but younger, the newcomer (one more
  of them, likely) is refused: the connections that spoke are never the flood's;
- else, with none silent, the one idle longest among those that have spoken, if
  it has been idle ``MIN_IDLE`` (as nginx reuses idle keep-alive connections);
- each only if the server allows it (``may_close``: one waiting for answers, or
  that proved the secret, keeps its place). When none may go, the newcomer is
  refused.

At most ``SCAN_LIMIT`` connections are looked at for one newcomer, so that a
server full of connections that may not go costs little per refusal.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from itertools import chain, islice
from typing import Generic, TypeVar

# At the limit, a connection that spoke and then went quiet this long may make room,
# and one that has sent no line yet, this long after connecting.
MIN_IDLE = 1.0
MIN_SILENT = 0.25
SCAN_LIMIT = 64

C = TypeVar("C", bound=Hashable)


class IdleOrder(Generic[C]):
    """A server's connections, silent (oldest first) and spoken (idlest first): its
    one collection of them. ``heard`` is O(1), so it is called for every complete
    line a connection sends, and every answer it gets (which makes it busy, not
    idle)."""

    def __init__(self) -> None:
        self._silent: OrderedDict[C, float] = OrderedDict()
        self._heard: OrderedDict[C, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._silent) + len(self._heard)

    def __contains__(self, connection: object) -> bool:
        return connection in self._silent or connection in self._heard

    def __iter__(self) -> Iterator[C]:
        return chain(self._silent, self._heard)

    def add(self, connection: C, now: float) -> None:
        self._silent[connection] = now

    def heard(self, connection: C, now: float) -> None:
        """It sent a complete line, or was answered, at ``now``."""
        if connection in self._heard:
            self._heard.move_to_end(connection)
        elif self._silent.pop(connection, None) is None:
            return  # not ours (closed already)
        self._heard[connection] = now

    def remove(self, connection: C) -> None:
        """Forgets it (idempotent)."""
        if self._silent.pop(connection, None) is None:
            self._heard.pop(connection, None)

    def idlest(
        self,
        now: float,
        may_close: Callable[[C], bool] = lambda _: True,
        min_idle: float = MIN_IDLE,
    ) -> C | None:
        """The connection to close for a newcomer (see the module), or None."""
        silent = False
        for connection, connected in islice(self._silent.items(), SCAN_LIMIT):
            if may_close(connection):
                if now - connected >= MIN_SILENT:
                    return connection
                silent = True
                break  # the rest connected later still
        if silent:
            return None
        for connection, heard in islice(self._heard.items(), SCAN_LIMIT):
            if now - heard < min_idle:
                return None  # the rest were heard from more recently still
            if may_close(connection):
                return connection
        return None
