"""Durable locations: the hash table's storage engine keeps the herd's table (``--data-dir``).

Each location is one key (the client ID) whose value is ``[AT line, received_ns]``,
inserted through ``hashtable.database.Database``: its log, checkpoints,
compaction and recovery, nothing written twice. The server commits once per
loop turn (one fsync for every location the turn accepted, group commit) and
sends an IAMAT's reply only after its location is committed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hashtable.database import Database
from hashtable.request import Request, Status
from herd.locations import Location
from herd.messages import Invalid, parse_at_fields

log = logging.getLogger("herd.durable")


class DurableLocations:
    """The locations of one server in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.db = Database(directory, sync="always")

    def recovered(self) -> list[Location]:
        """The locations the directory held at start (a stored value that does not parse
        is reported and skipped: the rest still count)."""
        locations = []
        for client, value in self.db.table.data.items():
            try:
                line, received_ns = value
                fields = line.split(" ")  # as written: a client ID may hold U+00A0
                if fields[0] != "AT" or type(received_ns) is not int:
                    raise Invalid("not an AT line and a time")
                at = parse_at_fields(fields[1:])
                if at.client != client:
                    raise Invalid("client ID differs from the key")
            except (Invalid, ValueError, TypeError, AttributeError, IndexError) as error:
                log.warning("skipping stored location of %r: %s", client[:80], error)
                continue
            locations.append(Location(at, received_ns))
        return locations

    def record(self, location: Location) -> None:
        """Buffers the location; durable after ``commit()``."""
        outcome = self.db.execute(
            Request(
                "insert", key=location.at.client, value=[location.at.line, location.received_ns]
            )
        )
        if outcome.status is not Status.OK:
            raise RuntimeError(f"storage refused a location: {outcome.message}")

    @property
    def needs_commit(self) -> bool:
        return self.db.needs_commit

    def commit(self) -> None:
        self.db.commit()

    def maintain(self) -> float | None:
        """Housekeeping (compaction); returns the seconds until it is due again."""
        self.db.maintain()
        return self.db.seconds_until_maintenance()

    def close(self) -> None:
        self.db.close()
