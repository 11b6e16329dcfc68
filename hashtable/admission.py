"""Who gets a connection slot, sans-IO: room is kept for those who hold the secret.

A connection that has not completed its TLS handshake costs the server a
descriptor and nothing else, and anyone can open thousands. So unauthenticated
connections live in a bounded pool of their own (``max_unauthenticated``, and
``max_unauthenticated_per_source`` from one address), oldest first: a new one
that finds the pool full takes the place of the oldest (its source's oldest,
when that source is at its share), instead of being refused. An honest client
completes its handshake in milliseconds, long before a flood can push it out,
and then counts against ``max_connections`` with the other authenticated ones;
an idle flood only ever holds the pool. A newcomer is refused only when every
slot is held by an authenticated client.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Any

Connection = Hashable


class Admission:
    def __init__(
        self, max_connections: int, max_unauthenticated: int, max_unauthenticated_per_source: int
    ) -> None:
        self.max_connections = max_connections
        self.max_unauthenticated = max(1, min(max_unauthenticated, max_connections))
        self.per_source = max(1, min(max_unauthenticated_per_source, self.max_unauthenticated))
        self._pending: OrderedDict[Connection, str] = OrderedDict()  # oldest first
        self._by_source: dict[str, deque[Connection]] = {}
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
        return len(self._pending)

    def arriving(self, source: str) -> tuple[bool, list[Connection]]:
        """A connection from ``source`` is waiting to be accepted: whether it may be,
        and which unauthenticated connections must be closed to make room for it."""
        evicted: list[Connection] = []
        mine = self._by_source.get(source)
        if mine is not None and len(mine) >= self.per_source:
            evicted.append(self._evict(mine[0]))  # its own oldest
        elif len(self._pending) >= self.max_unauthenticated:
            evicted.append(self._evict(next(iter(self._pending))))
        if self.authenticated + len(self._pending) >= self.max_connections:
            if not self._pending:
                return False, evicted
            evicted.append(self._evict(next(iter(self._pending))))
        return True, evicted

    def joined(self, connection: Connection, source: str, authenticated: bool) -> None:
        """An accepted connection (authenticated at once: a server without TLS)."""
        if authenticated:
            self._authenticated.add(connection)
            return
        self._pending[connection] = source
        self._by_source.setdefault(source, deque()).append(connection)

    def authenticate(self, connection: Connection) -> None:
        """Its handshake is complete: it moves out of the pool."""
        if connection in self._pending:
            self._forget(connection)
            self._authenticated.add(connection)

    def left(self, connection: Connection) -> None:
        """Closed, for whatever reason (idempotent for a connection already evicted)."""
        if connection in self._pending:
            self._forget(connection)
        else:
            self._authenticated.discard(connection)

    def _evict(self, connection: Connection) -> Connection:
        self._forget(connection)
        return connection

    def _forget(self, connection: Connection) -> None:
        source = self._pending.pop(connection)
        queue = self._by_source[source]
        queue.remove(connection)  # at or near the front: the oldest go first
        if not queue:
            del self._by_source[source]
