"""Two servers of one project: which catalog records describe another server, and
what to say about it (docs/protocol.md, "One server per project").

Two hash table servers of one project with different data directories hold two
different tables: clients that find one never see what was written to the
other (a split brain). The server refuses to start beside another one
(``hashtable.singleton``), and the client warns when the catalog lists two
(``hashtable.endpoints``). This module is their common ground, sans-IO: catalog
records in, the servers they describe and the messages out.

Only records that can be trusted count, since anyone may announce anything to a
catalog: with a secret, those it signed over the fields a decision rests on
(``IDENTITY``); without one (``--no-auth``), the plain ones.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from catalog.client import Record, matching, record_endpoint
from netkit.listeners import format_address
from netkit.security import AUTH_SCHEME, Secret

SERVER_TYPE = "hashtable"
# Who runs it, which table it holds, where it listens: covered by the signature of
# every record this project's servers announce (netkit.security.SIGNED_FIELDS).
IDENTITY = ("type", "project", "owner", "port", "origin", "starttime")
# The data directory is signed since it is announced (hashtable.reporting); an
# older server's record has it unsigned, or not at all: then it is unknown.
DATADIR = "datadir"
_SHOWN = 300  # characters of a record's text shown in a message


@dataclass(frozen=True, slots=True)
class Listed:
    """One server of a project, as a trusted catalog record describes it."""

    host: str
    port: int
    owner: str
    origin: str
    datadir: str | None  # absolute; None when the record does not say (or not signed)
    starttime: float  # its wall clock when it started
    keys: int | None

    @property
    def where(self) -> str:
        return format_address((self.host, self.port))

    def is_instance(self, origin: str, datadir: str) -> bool:
        """Whether this is a server of that very data directory: the same origin
        (the id kept in the directory) at the same path. The directory's lock
        lets one process at a time use it, so such a record is that server's
        own, or one its earlier run left behind."""
        return self.origin == origin and self.datadir == datadir

    def describe(self) -> str:
        """Where it is and what it holds, for messages."""
        details = [f"data directory {_shown(self.datadir) if self.datadir else 'not announced'}"]
        if self.keys is not None:
            details.append(f"{self.keys} keys")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.starttime))
        details += [f"started {started}", f"origin {_shown(self.origin)}"]
        return f"{self.where} ({', '.join(details)})"


def listed_servers(records: Iterable[Record], project: str, secret: Secret | None) -> list[Listed]:
    """The project's servers described by ``records`` that can be trusted, freshest
    first: with ``secret``, those whose records it signed (over ``IDENTITY``);
    without, those whose records do not claim to authenticate."""
    found = []
    for record in matching(records, SERVER_TYPE, project):
        if secret is not None:
            if not secret.record_signed_by_us(record, IDENTITY):
                continue
            datadir_trusted = secret.record_signed_by_us(record, (*IDENTITY, DATADIR))
        else:
            if record.get("auth") == AUTH_SCHEME:
                continue
            datadir_trusted = True
        server = _listed(record, datadir_trusted)
        if server is not None:
            found.append(server)
    return found


def _listed(record: Record, datadir_trusted: bool) -> Listed | None:
    try:
        host, port = record_endpoint(record)
    except ValueError:
        return None
    owner, origin, starttime = record.get("owner"), record.get("origin"), record.get("starttime")
    if not isinstance(owner, str) or not isinstance(origin, str):
        return None
    if not isinstance(starttime, int | float) or isinstance(starttime, bool):
        return None
    datadir = record.get(DATADIR) if datadir_trusted else None
    keys = record.get("keys")
    return Listed(
        host,
        port,
        owner,
        origin,
        datadir if isinstance(datadir, str) and datadir else None,
        float(starttime),
        keys if isinstance(keys, int) and not isinstance(keys, bool) else None,
    )


def other_servers(
    servers: Iterable[Listed], *, owner: str, origin: str, datadir: str
) -> list[Listed]:
    """The servers of ``owner`` that are not the one of data directory ``datadir``
    (whose id is ``origin``), in the order given."""
    return [s for s in servers if s.owner == owner and not s.is_instance(origin, datadir)]


def rivals(servers: Iterable[Listed]) -> list[tuple[Listed, Listed]]:
    """``(chosen, other)`` pairs: for each owner, the freshest of its servers (the
    one a client picks) and each listed server of that owner holding another
    table (another origin), once per origin."""
    chosen: dict[str, Listed] = {}
    pairs: dict[tuple[str, str], tuple[Listed, Listed]] = {}
    for server in servers:  # freshest first
        first = chosen.setdefault(server.owner, server)
        if server.origin != first.origin:
            pairs.setdefault((server.owner, server.origin), (first, server))
    return list(pairs.values())


def refusal(project: str, other: Listed, datadir: str) -> str:
    """Why a server does not start: ``other`` serves the project already."""
    return (
        f"project {project} is already served by {other.describe()}; a second server with "
        f"data directory {_shown(datadir)} would split its clients between two tables. "
        "Stop that server and start this one with its data directory, or replace it "
        "deliberately with --takeover (it then stops at its next announcement, and what it "
        "holds stays in its data directory)"
    )


def replaced(project: str, newer: Listed, datadir: str) -> str:
    """Why a server stops: ``newer`` took the project over (``--takeover``)."""
    return (
        f"project {project} has been taken over by {newer.describe()}, a server started "
        "after this one: stopping, so that every client moves to it. This server's table "
        f"stays in {_shown(datadir)}, served by no one"
    )


def rival_warning(project: str, chosen: Listed, other: Listed) -> str:
    """What a client says when the catalog lists two servers of one project."""
    return (
        f"the catalog lists two servers of project {project} (owner {_shown(chosen.owner)}) "
        f"holding different tables: {chosen.describe()} and {other.describe()}. Using the "
        f"newest, {chosen.where}; what was written to the other is not there. If the other "
        "was stopped, its record stays listed until the catalog expires it; if not, stop "
        "one of them (docs/protocol.md, One server per project)"
    )


def _shown(text: str) -> str:
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
