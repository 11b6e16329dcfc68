"""Where a project's server may be, from the catalog's records (sans-IO, but for logging).

Anyone who can send the catalog a datagram can list a record, so with a secret
only the records it signed count, and what to do when there are none depends
on why: impostors' records after our server took our secret (wait for its next
announcement), records signed with another secret from the start (the wrong
secret file: not worth retrying), or only unauthenticated servers. Two servers
of the project holding different tables are warned of once per process
(``hashtable.rivals``). ``hashtable.transport`` connects to what this returns.
"""

from __future__ import annotations

import logging
import threading

from catalog.client import Record, record_endpoint
from hashtable.errors import AuthenticationError
from hashtable.rivals import listed_servers, rival_warning, rivals
from netkit.security import AUTH_SCHEME, Secret

log = logging.getLogger("hashtable.client")

# Servers tried per connection attempt: impostors replaying a signed record from
# their own addresses cost one failed handshake each, at most this many.
MAX_CANDIDATES = 8

# The pairs of tables (origins) this process has warned of: once each, not at every
# look-up, whichever client of the process looked.
_WARNED: set[frozenset[str]] = set()
_WARNED_LOCK = threading.Lock()


class NotListed(ConnectionError):
    """The catalog answered but lists no usable server for the project."""

    def __init__(self, message: str, *, foreign: bool = False) -> None:
        super().__init__(message)
        self.foreign = foreign  # only records signed with another secret than the server took


def candidates(
    found: list[Record],
    project: str,
    secret: Secret | None,
    *,
    secret_proven: bool,
    catalogs: list[tuple[str, int]],
) -> list[tuple[str, int]]:
    """The endpoints of the project's servers among ``found`` (its records, freshest
    first), each once: with a secret, only those whose records it signed.
    ``secret_proven``: a server of the project has taken the secret before. Raises
    ``NotListed`` (worth waiting for) or ``AuthenticationError`` (not)."""
    warn_of_rivals(found, project, secret)
    if secret is not None:
        ours = [record for record in found if secret.record_signed_by_us(record)]
        signed = any(record.get("auth") == AUTH_SCHEME for record in found)
        if not ours and signed and secret_proven:
            # Forged records (ours withdrawn), or the server's secret was rotated
            # (docs/security.md): wait for the server's next announcement, as if unlisted.
            raise NotListed(
                f"the catalog lists servers for project {project!r} only with "
                "records signed with another secret than the one the server took: "
                "impostors, or the server's secret was rotated; waiting for a record of ours",
                foreign=True,
            )
        if not ours and signed:
            raise AuthenticationError(
                f"the catalog lists servers for project {project!r}, but none signed "
                f"with our secret {secret.fingerprint} ({secret.path}): the server "
                "holds another secret file (or these are impostors)"
            )
        if not ours and found:
            raise NotListed(
                f"the catalog lists only servers of project {project!r} that do not "
                "authenticate (--no-auth, or impostors); this client requires authentication"
            )
        found = ours
    else:
        found = [record for record in found if record.get("auth") != AUTH_SCHEME] or found
    endpoints: dict[tuple[str, int], None] = {}
    for record in found:
        try:
            endpoints[record_endpoint(record)] = None
        except ValueError as exc:
            log.debug("ignoring a catalog record: %s", exc)
    if not endpoints:
        asked = ", ".join(f"{host}:{port}" for host, port in catalogs)
        raise NotListed(f"the catalog ({asked}) lists no hashtable server for project {project!r}")
    return list(endpoints)[:MAX_CANDIDATES]


def warn_of_rivals(records: list[Record], project: str, secret: Secret | None) -> None:
    """One warning per pair of servers of the project holding different tables
    (a split brain: hashtable.rivals); the freshest is used all the same."""
    for chosen, other in rivals(listed_servers(records, project, secret)):
        pair = frozenset((chosen.origin, other.origin))
        with _WARNED_LOCK:
            if pair in _WARNED:
                continue
            _WARNED.add(pair)
        log.warning("%s", rival_warning(project, chosen, other))
