"""Who gets a connection slot, sans-IO: room is kept for those who hold the secret.

A connection that has not completed its TLS handshake costs the server a
descriptor and nothing else, and anyone can open thousands. So unauthenticated
connections live in a bounded pool of their own (``max_unauthenticated``, and
``max_unauthenticated_per_source`` from one address): a new one that finds the
pool full takes the place of another instead of being refused. The one that
gives way is the oldest **silent** one (connected, nothing sent): an honest
client sends its hello at once, so a flood of idle connections only ever
displaces itself. Only when none is silent does the oldest one mid-handshake
give way (a half-open handshake also ends at the server's handshake deadline).
When the newcomer's source is at its share, it displaces that source's own.
Once authenticated, a connection counts against ``max_connections`` with the
other authenticated ones, and nobody can push it out; a newcomer is refused only
when every slot is held by an authenticated client.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

Connection = Hashable


class _Pool:
    """Unauthenticated connections, each ``silent`` or ``heard``, oldest first, in
    all and per source."""

    def __init__(self) -> None:
        self.source: dict[Connection, str] = {}
        self.silent: OrderedDict[Connection, None] = OrderedDict()
        self.heard: OrderedDict[Connection, None] = OrderedDict()
        self.by_source: dict[str, OrderedDict[Connection, None]] = {}

    def __len__(self) -> int:
        return len(self.source)

    def __contains__(self, connection: Connection) -> bool:
        return connection in self.source

    def add(self, connection: Connection, source: str) -> None:
        self.source[connection] = source
        self.silent[connection] = None
        self.by_source.setdefault(source, OrderedDict())[connection] = None

    def hear(self, connection: Connection) -> None:
        if connection in self.silent:
            del self.silent[connection]
            self.heard[connection] = None

    def remove(self, connection: Connection) -> None:
        source = self.source.pop(connection)
        self.silent.pop(connection, None)
        self.heard.pop(connection, None)
        mine = self.by_source[source]
        del mine[connection]
        if not mine:
            del self.by_source[source]

    def victim(self, source: str | None = None) -> Connection:
        """The one to give way: the oldest silent (of ``source``, if given), else the
        oldest mid-handshake."""
        if source is None:
            return next(iter(self.silent or self.heard))
        mine = self.by_source[source]
        return next((c for c in mine if c in self.silent), next(iter(mine)))


class Admission:
    def __init__(
        self, max_connections: int, max_unauthenticated: int, max_unauthenticated_per_source: int
    ) -> None:
        self.max_connections = max_connections
        self.max_unauthenticated = max(1, min(max_unauthenticated, max_connections))
        self.per_source = max(1, min(max_unauthenticated_per_source, self.max_unauthenticated))
        self._pool = _Pool()
        self._authenticated: set[Connection] = set()

    @classmethod
    def for_limits(cls, limits: Any) -> Admission:
        """From the server's ``Limits``."""
        return cls(
            limits.max_connections,
            limits.max_unauthenticated,
            limits.max_unauthenticated_per_source,
        )

    @property
    def authenticated(self) -> int:
        return len(self._authenticated)

    @property
    def unauthenticated(self) -> int:
        return len(self._pool)

    def arriving(self, source: str) -> tuple[bool, list[Connection]]:
        """A connection from ``source`` is waiting to be accepted: whether it may be,
        and which unauthenticated connections must be closed to make room for it."""
        pool = self._pool
        evicted: list[Connection] = []
        mine = pool.by_source.get(source)
        if mine is not None and len(mine) >= self.per_source:
            evicted.append(self._evict(pool.victim(source)))  # one of its own
        elif len(pool) >= self.max_unauthenticated:
            evicted.append(self._evict(pool.victim()))
        if self.authenticated + len(pool) >= self.max_connections:
            if not len(pool):
                return False, evicted
            evicted.append(self._evict(pool.victim()))
        return True, evicted

    def joined(self, connection: Connection, source: str, authenticated: bool) -> None:
        """An accepted connection (authenticated at once: a server without TLS)."""
        if authenticated:
            self._authenticated.add(connection)
        else:
            self._pool.add(connection, source)

    def heard(self, connection: Connection) -> None:
        """It sent its first bytes (a hello, presumably): it gives way after the silent ones."""
        if connection in self._pool:
            self._pool.hear(connection)

    def authenticate(self, connection: Connection) -> None:
        """Its handshake is complete: it moves out of the pool."""
        if connection in self._pool:
            self._pool.remove(connection)
            self._authenticated.add(connection)

    def left(self, connection: Connection) -> None:
        """Closed, for whatever reason (idempotent for a connection already evicted)."""
        if connection in self._pool:
            self._pool.remove(connection)
        else:
            self._authenticated.discard(connection)

    def _evict(self, connection: Connection) -> Connection:
        self._pool.remove(connection)
        return connection
