"""From received update bytes to stored records, sans-IO (the resolver is injected).

An update whose sender's host name is not known yet waits, briefly, for the
resolver: its key contains the name, so storing it under the bare address
first would leave a duplicate record behind once the name is known. It waits
at most ``NAME_WAIT`` seconds (then the address stands in for the name), and
at most ``MAX_WAITING`` updates, ``MAX_WAITING_BYTES`` of them, wait at once
(beyond that, likewise). A waiting update is held as the bytes it came as, and
decoded again once its name is known: parsed, a 326-byte datagram of
``[{},{},...]`` was 6 MB of Python objects, and 200 of them waiting 1.2 GiB.

When the catalog serves the network, a sender on the catalog's own machine that
reaches it through loopback (seen as 127.0.0.1 or ::1, an address no other
machine can use) is listed under ``local``: the catalog's own network address and
this host's name, so that clients elsewhere can connect to what it announced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from catalog.records import RecordRejected, RecordStore
from catalog.updates import UpdateError, decode_update, stamp

log = logging.getLogger("catalog.ingest")

NAME_WAIT = 2.0
MAX_WAITING = 10_000
MAX_WAITING_BYTES = 32 * 1024 * 1024  # of updates as they arrived (a UDP one: 64 KiB at most)


class Names(Protocol):
    def name_of(self, address: str) -> str | None: ...
    def give_up(self, address: str) -> None: ...
    def collect(self) -> list[str]: ...


@dataclass
class Stats:
    """What happened since the last report; the server logs it periodically."""

    updates: int = 0
    new: int = 0
    rejected: int = 0
    last_rejection: str = ""

    def report(self, live: int, displaced: int) -> str:
        """The minute's summary line: ``live`` records now, ``displaced`` of them made
        room for new ones meanwhile (said only when some did: only then was the
        catalog full)."""
        room = (
            f", {displaced} of them in the place of others: the catalog is full"
            if displaced
            else ""
        )
        rejected = f" (last {self.last_rejection})" if self.rejected else ""
        return (
            f"{live} records live; in the last minute {self.updates} updates "
            f"({self.new} new records{room}), {self.rejected} rejected{rejected}"
        )


class Ingest:
    def __init__(
        self,
        store: RecordStore,
        names: Names,
        clock: Callable[[], float] = time.time,
        local: tuple[str, str] | None = None,
        journaling: bool = False,
    ) -> None:
        self.store = store
        self.names = names
        self.clock = clock
        self.local = local  # (address, name) for loopback senders; None: as they are
        self.stats = Stats()
        # address -> (when the first one arrived, [(update bytes, heard), ...]); oldest first
        self._waiting: dict[str, tuple[float, list[tuple[bytes, float]]]] = {}
        self._waiting_count = 0
        self.waiting_bytes = 0
        # The records stored since the server last took them, as their JSON, for the
        # journal (catalog.journal); None when nothing journals them, so none is kept.
        self.accepted: list[bytes] | None = [] if journaling else None

    def take_accepted(self) -> list[bytes]:
        """The records stored since the last call (their JSON, oldest first)."""
        accepted = self.accepted
        if not accepted:
            return []
        self.accepted = []
        return accepted

    def receive(self, data: bytes, address: str) -> None:
        """One update as it arrived from ``address``, over UDP or TCP."""
        heard = self.clock()
        try:
            record = decode_update(data)
        except UpdateError as exc:
            self._reject(address, str(exc))
            return
        if self.local is not None and (address.startswith("127.") or address == "::1"):
            self._keep(record, *self.local, heard)
            return
        name = self.names.name_of(address)
        if name is not None:
            self._keep(record, address, name, heard)
        elif (
            self._waiting_count < MAX_WAITING
            and self.waiting_bytes + len(data) <= MAX_WAITING_BYTES
        ):
            # Decoded now so that a bad update is refused at once; the bytes are kept,
            # not the parsed record.
            self._waiting.setdefault(address, (heard, []))[1].append((data, heard))
            self._waiting_count += 1
            self.waiting_bytes += len(data)
        else:
            self._keep(record, address, address, heard)

    def names_arrived(self) -> None:
        """Stores the updates whose senders' names the resolver has found."""
        for address in self.names.collect():
            self._release(address, self.names.name_of(address) or address)

    def stop_waiting(self, force: bool = False) -> None:
        """Stores, under their address, the updates that waited ``NAME_WAIT`` for a
        name (all of them if ``force``, at shutdown)."""
        deadline = self.clock() - NAME_WAIT
        while self._waiting:
            address, (since, _) = next(iter(self._waiting.items()))
            if since > deadline and not force:
                break
            self.names.give_up(address)
            self._release(address, address)

    def next_deadline(self) -> float | None:
        """When ``stop_waiting`` next has work (on this ingest's clock), or None."""
        if not self._waiting:
            return None
        since, _ = next(iter(self._waiting.values()))
        return since + NAME_WAIT

    @property
    def waiting(self) -> int:
        return self._waiting_count

    def _release(self, address: str, name: str) -> None:
        _, updates = self._waiting.pop(address, (0.0, []))
        self._waiting_count -= len(updates)
        for data, heard in updates:
            self.waiting_bytes -= len(data)
            self._keep(decode_update(data), address, name, heard)  # it decoded before

    def _keep(self, record: dict[str, Any], address: str, name: str, heard: float) -> None:
        version = self.store.version
        try:
            key, new = self.store.put(stamp(record, address, name, heard), heard)
        except RecordRejected as exc:
            self._reject(address, str(exc))
            return
        self.stats.updates += 1
        if self.accepted is not None and self.store.version != version:
            # Journaled only when it changed the records: the same record again
            # within its second is on disk already, and rewriting it whole on
            # every refresh made a flood of one big record a flood of disk writes.
            self.accepted.append(self.store.live[key].data)
        if new:
            self.stats.new += 1
            log.debug("new record %s", key)

    def _reject(self, address: str, reason: str) -> None:
        log.debug("update from %s rejected: %s", address, reason)
        self.stats.rejected += 1
        self.stats.last_rejection = f"from {address}: {reason}"
