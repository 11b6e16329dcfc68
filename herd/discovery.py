"""Catalog discovery (``--catalog``): announce this server, look neighbours up.

The record is ``{"type": "herd", "project": HERD, "server": NAME, "port": ...,
"peer_port": ...}`` plus figures, sent at start and every ``interval`` seconds
through catalog.client.announce, signed with the herd's secret. A neighbour's
peer address is the freshest record for its name (catalog.client.matching)
that the secret signed: the address the catalog saw it send from, and the peer
port it announced (the link's handshake then proves it holds the secret). Both
calls block (UDP send after a name lookup, an HTTP query), so they run in a
thread, never in the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from catalog.client import Catalog, CatalogUnavailable, announce, matching, owner_name, query
from netkit.security import Secret

log = logging.getLogger("herd.discovery")

VERSION = "1"
QUERY_TIMEOUT = 3.0
# What a herd record's signature covers: who the server is and where its peers dial.
SIGNED = ("type", "project", "server", "owner", "port", "peer_port", "starttime", "version")


class Discovery:
    def __init__(
        self,
        herd: str,
        name: str,
        catalogs: list[Catalog],
        status: Callable[[], dict[str, Any]],
        interval: float = 60.0,
        secret: Secret | None = None,
    ) -> None:
        self.herd, self.name, self.catalogs = herd, name, catalogs
        self.status, self.interval = status, interval
        self.secret = secret
        self.port = self.peer_port = 0
        self.starttime = int(time.time())

    def record(self) -> dict[str, Any]:
        record = {
            "type": "herd",
            "project": self.herd,
            "server": self.name,
            "port": self.port,
            "peer_port": self.peer_port,
            "owner": owner_name(),
            "version": VERSION,
            "starttime": self.starttime,
            **self.status(),
        }
        if self.secret is None:
            return {**record, "auth": "none"}
        return self.secret.sign_record(record, SIGNED)

    async def keep_announcing(self) -> None:
        while True:
            await asyncio.to_thread(announce, self.record(), self.catalogs)
            await asyncio.sleep(self.interval)

    async def peer_address(self, neighbour: str) -> tuple[str, int] | None:
        """The neighbour's peer address as the catalog lists it, or None."""
        try:
            records = await asyncio.to_thread(query, None, self.catalogs, QUERY_TIMEOUT)
        except CatalogUnavailable as error:
            log.warning("cannot look %s up: %s", neighbour, error)
            return None
        for record in matching(records, "herd", self.herd):
            if self.secret is not None and not self.secret.record_signed_by_us(record, SIGNED):
                continue  # an impostor's (or another secret's): never dialled
            port, host = record.get("peer_port"), record.get("address")
            if (
                record.get("server") == neighbour
                and type(port) is int
                and 0 < port < 65536
                and isinstance(host, str)
            ):
                return host, port
        return None
