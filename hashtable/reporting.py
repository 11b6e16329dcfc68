"""What the hash table server says about itself: the summary line and the catalog record.

Sans-IO: figures in, a log line and a record out. The summary line, every
``--summary-interval`` seconds, shows which clients were served and how many
requests each (the interleaving the course asks to see) and what storage did;
the record is what the server announces to the catalog, signed when the server
authenticates (``netkit.security.Secret.sign_record``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from catalog.client import owner_name
from netkit.security import SIGNED_FIELDS

VERSION = "1.0"
# Signed besides the usual: the data directory's absolute path, which tells a
# restart of this server from a second server of its project (hashtable.rivals).
SIGNED_RECORD_FIELDS = (*SIGNED_FIELDS, "datadir")
SUMMARY_TOP = 8  # clients named in a summary line; the rest are counted


class Figures(Protocol):
    def stats(self) -> dict[str, Any]: ...


class Reporter:
    """``db``: the database (its ``stats()``); ``base``: the record's fields from the
    command line (project, sync, origin, datadir); ``sign``: ``Secret.sign_record``,
    None for a --no-auth server."""

    def __init__(
        self,
        db: Figures,
        *,
        port: int,
        start_time: float,
        base: dict[str, Any] | None = None,
        sign: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        self.db = db
        self.port = port
        self.start_time = start_time  # wall clock, to the millisecond
        self.base = base or {}
        self.sign = sign
        self._compactions_seen = 0

    def summary(self, served: dict[str, int], interval: float, connected: int) -> str | None:
        """The summary line for ``served`` (requests per client), None if nobody was."""
        total = sum(served.values())
        if not total:
            return None
        busiest = sorted(served.items(), key=lambda item: item[1], reverse=True)
        shown = " ".join(f"{name}={count}" for name, count in busiest[:SUMMARY_TOP])
        if len(busiest) > SUMMARY_TOP:
            shown += f" and {len(busiest) - SUMMARY_TOP} more"
        stats = self.db.stats()
        storage = f"{stats.get('keys')} keys, {connected} connected"
        compactions = stats.get("compactions", 0)
        if compactions != self._compactions_seen:
            storage += (
                f"; {compactions - self._compactions_seen} compactions, the last took "
                f"{stats.get('last_compaction_ms') or 0:.0f} ms and paused the loop "
                f"{stats.get('last_pause_ms') or 0:.1f} ms"
            )
            self._compactions_seen = compactions
        return (
            f"served {total} requests in the last {interval:g} s from {len(busiest)} clients: "
            f"{shown} ({storage})"
        )

    def record(self, status: dict[str, Any]) -> dict[str, Any]:
        """The catalog record, with ``status`` (keys, requests, connections, uptime)."""
        record = {
            "type": "hashtable",
            "owner": owner_name(),
            "port": self.port,
            "version": VERSION,
            "starttime": self.start_time,
            **self.base,
            **status,
        }
        if self.sign is None:
            return {**record, "auth": "none"}
        return self.sign(record, SIGNED_RECORD_FIELDS)
