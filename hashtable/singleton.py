"""One server per project: the hash table server's checks for another server of its
project (docs/protocol.md, "One server per project").

Before it announces itself, a server looks its project up in its catalogs. If a
trusted record (``hashtable.rivals``) describes a server of the same project and
owner with another table (another origin, or another data directory) and that
server answers (a handshake and a ``size`` request, within ``CHECK_TIMEOUT``),
the server refuses to start: exit status 2, naming the other one. A record that
does not answer is one a stopped or killed server left behind; a record of
this very data directory is one of its own earlier runs.

The catalog is soft state, not a start-up dependency: when no catalog answers,
the server starts with a warning, and makes the same check at its first
announcement that finds a catalog answering (it then stops with status 2 if
another server was there first).

``--takeover`` starts beside the other server on purpose. Then at every
announcement each server checks again: one that finds a newer server of its
project answering (started later, so the one clients pick) has been replaced,
and stops (status 0) rather than go on serving the clients it has, which would
keep writing where no new client looks. Its record is withdrawn on the way out
(a last update with a one-second ``lifetime``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from catalog.client import Catalog, CatalogUnavailable, announce, owner_name, query
from hashtable.errors import AuthenticationError
from hashtable.protocol import ProtocolError, decode_reply, encode_request
from hashtable.request import Request, Status
from hashtable.rivals import (
    SERVER_TYPE,
    Listed,
    listed_servers,
    other_servers,
    refusal,
    replaced,
)
from hashtable.transport import Transport
from netkit.security import Secret

log = logging.getLogger("hashtable.server")

CHECK_TIMEOUT = 2.0  # seconds for the catalog's answer, and for each other server's
# Other servers asked per check: each record a secret holder announced from an
# address it no longer has costs one failed connection.
MAX_ASKED = 4
EXIT_REFUSED = 2  # as for every other reason not to start
EXIT_REPLACED = 0  # a stop asked for, as by a signal: nothing to restart


class ProjectGuard:
    """The checks of one server: ``check_at_start`` before it announces, and
    ``before_announce`` (on the announcer's thread) before each announcement.

    ``data_dir`` and ``origin`` say which table this server holds; ``secret``:
    the records to trust are those it signed, and the other servers are asked
    over TLS with it (None: plain records and connections, ``--no-auth``).
    ``stop_server`` is called, from the announcer's thread, when the server must
    stop; ``exit_status`` then says with which status.
    """

    def __init__(
        self,
        project: str,
        data_dir: Path | str,
        origin: str,
        catalogs: list[Catalog],
        secret: Secret | None,
        *,
        takeover: bool = False,
        timeout: float = CHECK_TIMEOUT,
    ) -> None:
        self.project = project
        self.data_dir = str(Path(data_dir).resolve())
        self.origin = origin
        self.owner = owner_name()
        self.catalogs = catalogs
        self.secret = secret
        self.takeover = takeover
        self.timeout = timeout
        self.checked = False  # whether a catalog has answered a check yet
        self.stop_server: Callable[[], None] | None = None
        self.exit_status: int | None = None

    def record_fields(self) -> dict[str, Any]:
        """What the server's catalog record must carry for other servers' checks."""
        return {"datadir": self.data_dir}

    # ------------------------------------------------------------ the checks

    def check_at_start(self) -> str | None:
        """None when the server may start; else why not, in one message."""
        try:
            others = self._others()
        except CatalogUnavailable as exc:
            log.warning(
                "cannot check that no other server serves project %s (%s): starting anyway, "
                "and checking again at each announcement",
                self.project,
                exc,
            )
            return None
        self.checked = True
        running = self._answering(others)
        if not running:
            return None
        if not self.takeover:
            return refusal(self.project, running[0], self.data_dir)
        for other in running:
            log.warning(
                "--takeover: replacing the server of project %s at %s; it stops at its next "
                "announcement (a server of a version without this check does not: stop it)",
                self.project,
                other.describe(),
            )
        return None

    def before_announce(self, record: dict[str, Any]) -> bool:
        """Whether to send ``record``, this server's announcement; False when the
        server must stop (it has been told to: ``stop_server``)."""
        try:
            others = self._others()
        except CatalogUnavailable:
            return True  # soft state: announce all the same, check next time
        first = not self.checked  # no catalog answered at the start: the check not made then
        self.checked = True
        started = record.get("starttime", 0)
        running = self._answering(others if first else [s for s in others if s.starttime > started])
        if first and running and not self.takeover:
            reason = refusal(self.project, running[0], self.data_dir)
            late = f"{reason} (found only now: no catalog answered at the start)"
            self._stop(EXIT_REFUSED, late, record)
            return False
        newer = [s for s in running if s.starttime > started]
        if newer:
            self._stop(EXIT_REPLACED, replaced(self.project, newer[0], self.data_dir), record)
            return False
        return True

    # ------------------------------------------------------------ the parts

    def _others(self) -> list[Listed]:
        """The other servers of this project and owner the catalog lists, freshest
        first. Raises ``CatalogUnavailable``."""
        # Only the project's records: a catalog may list thousands of others.
        expression = f"type == {_string(SERVER_TYPE)} && project == {_string(self.project)}"
        records = query(expression, catalogs=self.catalogs, timeout=self.timeout)
        listed = listed_servers(records, self.project, self.secret)
        return other_servers(listed, owner=self.owner, origin=self.origin, datadir=self.data_dir)

    def _answering(self, servers: list[Listed]) -> list[Listed]:
        """Those of ``servers`` that answer (the first ``MAX_ASKED`` are asked)."""
        running = []
        for server in servers[:MAX_ASKED]:
            if self._answers(server):
                running.append(server)
            else:
                log.debug("%s does not answer: a record left behind", server.describe())
        return running

    def _answers(self, server: Listed) -> bool:
        """Whether a server of this project is up at ``server``'s address: it
        completes the handshake (proving it holds the secret and serves this
        project) and answers a request, within the time-out. A paused or hung
        process accepts connections (the kernel does) but never answers."""
        transport = Transport(
            self.project,
            address=(server.host, server.port),
            secret=self.secret,
            timeout=self.timeout,
        )
        try:
            transport.send_all(encode_request(Request("size")))
            outcome = decode_reply(transport.read_line())
        except (OSError, ProtocolError, AuthenticationError):
            return False
        finally:
            transport.disconnect()
        return outcome.status is Status.OK

    def _stop(self, status: int, reason: str, record: dict[str, Any]) -> None:
        """Logs why, withdraws the record, then stops the server (whose process
        may end at once: the withdrawal goes first)."""
        log.critical("%s", reason)
        self.exit_status = status
        # A record's own ``lifetime`` may shorten the catalog's: the record is gone
        # in a second, and clients neither try it nor warn of two servers. A catalog
        # that ignores the field keeps it until its own lifetime ends.
        announce({**record, "lifetime": 1}, self.catalogs)
        if self.stop_server is not None:
            self.stop_server()


def _string(text: str) -> str:
    """``text`` as a JX string (JX strings are JSON's)."""
    return orjson.dumps(text).decode()
