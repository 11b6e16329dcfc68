"""TSs in the catalog: the record a TS announces, and the LS's watch for them.

A TS started with ``--project P`` announces ``{"type": "dns-ts", "project": P,
"port": PORT, ...}`` (``catalog.client.Announcer``), signed with the project's
secret. An LS started with ``--project P`` asks the catalog every ``interval``
seconds for the records of that type and project, keeps those its secret
signed (anyone can write to a catalog), and connects to each one's address and
port; the TLS handshake then proves that whoever listens there holds the
secret (a signature cannot cover the address, which the catalog adds).

The catalog query is blocking HTTP, so it runs on a thread of its own; the
result is handed to the event loop through a socket pair that the loop watches,
so a slow or dead catalog never delays a query. When no catalog answers, the LS
keeps the TSs it has rather than dropping them all.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import threading
from collections.abc import Callable

from catalog import client as catalog_client

log = logging.getLogger("lb.discovery")

TS_TYPE = "dns-ts"
# A record outlives this many missed announcements (catalogs that honour a
# record's own ``lifetime``, like ours, then forget a dead TS quickly).
LIFETIME_ANNOUNCEMENTS = 3

Endpoint = tuple[str, int]
Trusted = Callable[[catalog_client.Record], bool]
# How many ignored records a warning names.
SHOWN_IGNORED = 5


def ts_record(port: int, project: str, entries: int, interval: float) -> catalog_client.Record:
    """What a TS announces about itself."""
    return {
        "type": TS_TYPE,
        "project": project,
        "port": port,
        "owner": catalog_client.owner_name(),
        "entries": entries,
        "lifetime": max(1, math.ceil(LIFETIME_ANNOUNCEMENTS * interval)),
    }


def listed_endpoints(
    records: list[catalog_client.Record], project: str, trusted: Trusted | None = None
) -> tuple[set[Endpoint], set[Endpoint]]:
    """The addresses of the project's TSs among catalog ``records``: those whose
    record is ``trusted`` (all, without a test), and those ignored for not being."""
    endpoints, ignored = set(), set()
    for record in catalog_client.matching(records, TS_TYPE, project):
        try:
            endpoint = catalog_client.record_endpoint(record)
        except ValueError as exc:
            log.debug("ignoring record: %s", exc)
            continue
        if trusted is None or trusted(record):
            endpoints.add(endpoint)
        else:
            ignored.add(endpoint)
    return endpoints, ignored - endpoints


class CatalogWatcher:
    """Polls the catalog off the event loop; the loop selects on ``wakeup``
    and then calls ``take()`` for the newest list. With ``trusted`` (the
    secret's ``record_signed_by_us``), only the records it accepts are listed,
    and the others are named in a warning whenever they change."""

    def __init__(
        self,
        project: str,
        interval: float,
        catalogs: list[catalog_client.Catalog] | None = None,
        timeout: float = 2.0,
        trusted: Trusted | None = None,
    ) -> None:
        self.project = project
        self.trusted = trusted
        self._ignored: set[Endpoint] = set()
        self.interval = interval
        self.catalogs = catalogs if catalogs is not None else catalog_client.catalog_addresses()
        self.timeout = timeout
        self._latest: set[Endpoint] | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._failing = False
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="catalog-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        # No join: the thread may be inside a catalog query; it is a daemon, and
        # its wake-up on a closed socket fails harmlessly.
        self._stopped.set()
        self._wake_read.close()
        self._wake_write.close()

    @property
    def wakeup(self) -> socket.socket:
        """The socket the loop selects on for reading."""
        return self._wake_read

    def take(self) -> set[Endpoint] | None:
        """The newest list the catalog gave since the last call, or None."""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._wake_read.recv(4096):
                pass
        with self._lock:
            latest, self._latest = self._latest, None
        return latest

    def _run(self) -> None:
        while not self._stopped.is_set():
            endpoints = self.poll()
            if endpoints is not None:
                with self._lock:
                    self._latest = endpoints
                # Full buffer: a wake-up is already pending, which is all we need.
                with contextlib.suppress(BlockingIOError, OSError):
                    self._wake_write.send(b"!")
            self._stopped.wait(self.interval)

    def poll(self) -> set[Endpoint] | None:
        """One catalog query: the listed TSs, or None if no catalog answered."""
        try:
            records = catalog_client.query(catalogs=self.catalogs, timeout=self.timeout)
        except catalog_client.CatalogUnavailable as exc:
            # Said once per outage, not at every refresh.
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "catalog query failed; keeping the current TSs: %s", exc)
            self._failing = True
            return None
        if self._failing:
            log.warning("the catalog answers again")
            self._failing = False
        endpoints, ignored = listed_endpoints(records, self.project, self.trusted)
        if ignored - self._ignored:
            shown = ", ".join(f"{host}:{port}" for host, port in sorted(ignored)[:SHOWN_IGNORED])
            more = len(ignored) - SHOWN_IGNORED
            log.warning(
                "ignoring %d TS records of project %r that our secret did not sign (impostors, "
                "or TSs with another secret file): %s%s",
                len(ignored),
                self.project,
                shown,
                f" and {more} more" if more > 0 else "",
            )
        self._ignored = ignored
        return endpoints
