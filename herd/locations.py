"""The table of client locations, sans-IO: the convergence rule and the change order.

Convergence: of two locations for one client, the newer by the client's own
time stamp wins; equal time stamps are ordered by the receiving server's clock
(``received_ns``, carried with the update), then by that server's name, then by
the location text. Every server applies the same total order to the same
updates, so every server that has seen the same updates gives the same answer,
whatever order they arrived in.

Change order: every accepted change gets the next local sequence number
(``lsn``) and moves to the end of the dict, so the dict is always in ``lsn``
order. "What changed after lsn L" (what a neighbour has not been sent yet) is a
walk back from the end that stops at the first entry at or below L: O(changes),
not O(table). A superseded change needs no record of its own: the entry that
replaced it has a higher lsn and goes out instead.
"""

from __future__ import annotations

from decimal import Decimal

from herd.messages import At

_NOBODY: frozenset[str] = frozenset()


class Location:
    """One client's location as received (``at``), when and where it entered the herd."""

    __slots__ = ("at", "covered", "fanout", "lsn", "order", "received_ns", "via")

    def __init__(self, at: At, received_ns: int) -> None:
        self.at = at
        self.received_ns = received_ns
        self.order: tuple[Decimal, int, str, str] = (at.time, received_ns, at.server, at.location)
        self.lsn = 0
        # The peer link this came over: it is not sent back on that same link.
        self.via: object = None
        # herd.peering's fanout: who the sender said gets this promptly; who we say does.
        self.covered: frozenset[str] = _NOBODY
        self.fanout: frozenset[str] = _NOBODY

    @property
    def client(self) -> str:
        return self.at.client


class TableFull(Exception):
    """A new client ID arrived while the table holds ``max_clients`` of them."""


class LocationTable:
    """The newest location of each client, in change order."""

    def __init__(self, max_clients: int = 1_000_000) -> None:
        self.max_clients = max_clients
        self._by_client: dict[str, Location] = {}
        self.lsn = 0  # the lsn of the latest change

    def __len__(self) -> int:
        return len(self._by_client)

    def get(self, client: str) -> Location | None:
        return self._by_client.get(client)

    def offer(self, location: Location, via: object = None) -> bool:
        """Keeps ``location`` if it is newer than the client's current one; True if it did.

        Raises ``TableFull`` for a new client when the table is full.
        """
        by_client = self._by_client
        current = by_client.get(location.at.client)
        if current is not None:
            if current.order >= location.order:
                return False
            del by_client[location.at.client]  # re-inserted at the end: change order
        elif len(by_client) >= self.max_clients:
            raise TableFull(f"the table holds {self.max_clients} clients")
        self.lsn += 1
        location.lsn = self.lsn
        location.via = via
        by_client[location.at.client] = location
        return True

    def changed_since(self, lsn: int) -> list[Location]:
        """Every location whose latest change is after ``lsn``, oldest change first."""
        if lsn >= self.lsn:
            return []
        changed = []
        for location in reversed(self._by_client.values()):
            if location.lsn <= lsn:
                break
            changed.append(location)
        changed.reverse()
        return changed

    def locations(self) -> list[Location]:
        return list(self._by_client.values())
