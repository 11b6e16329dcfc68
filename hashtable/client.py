"""The hash table client library: the table's operations as method calls.

    with HashTableClient("alice-a4") as table:      # found through the catalog
        table.insert("zebra", {"weight": 100})
        table.lookup("zebra")                        # {'weight': 100}
        table.remove("zebra")                        # returns the removed value
        table.lookup("zebra")                        # raises KeyError

When the network, the catalog or the server fails, a call does not fail: it logs
one warning line, waits (1 s, 2 s, 4 s, ... up to a cap, reset after a success),
looks the project up again (the server may have moved), reconnects and sends the
request again (``hashtable.transport``). Mutations carry this client's random id
and a sequence number, so a request sent twice is applied once and answered the
same both times. ``KeyError`` and ``InvalidRequestError`` are answers, not
failures: never retried.

A client is for one thread at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hashtable.errors import (
    AuthenticationError,
    HashTableError,
    InvalidRequestError,
    ServerError,
    ServiceUnavailable,
    result_of,
)
from hashtable.numbering import Numbering
from hashtable.pipeline import Pipeline, Reply
from hashtable.protocol import encode_request
from hashtable.request import Request
from hashtable.transport import DEFAULT_TIMEOUT, Transport
from netkit.security import Secret, SecretError, load_secret

__all__ = [
    "DEFAULT_TIMEOUT",
    "AuthenticationError",
    "HashTableClient",
    "HashTableError",
    "InvalidRequestError",
    "Pipeline",
    "Reply",
    "ServerError",
    "ServiceUnavailable",
]


class HashTableClient:
    """A connection to the hash table service of one project.

    ``project``: found through the catalog (``catalog``, a ``host[:port],...``
    list, else ``CATALOG_HOST``, else localhost:9097); the server heard from most
    recently wins, among those whose records our secret signed.
    ``HashTableClient.at(host, port)`` talks to one server and never asks a catalog.

    ``secret_file``: the shared secret (default ``$DHT_SECRET_FILE``, else
    ``~/.config/dht/secret``, created if missing): the client and the server
    prove to each other that they hold it, and the session is TLS.
    ``auth=False`` talks plain text, to a server started with ``--no-auth``; a
    client never falls back to plain text by itself. A wrong or missing secret
    raises ``AuthenticationError`` at once.

    ``timeout``: seconds to wait for a reply (or a connection) before trying
    again. ``give_up_after``: seconds of failed retries after which a call raises
    ``ServiceUnavailable``; by default it never gives up.
    """

    def __init__(
        self,
        project: str | None = None,
        *,
        catalog: str | None = None,
        address: tuple[str, int] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        backoff_initial: float = 1.0,
        backoff_cap: float = 30.0,
        give_up_after: float | None = None,
        secret_file: str | Path | None = None,
        auth: bool = True,
    ) -> None:
        if (project is None) == (address is None):
            raise ValueError("give a project name or an address (HashTableClient.at)")
        secret = client_secret(secret_file, auth)
        self.project = project
        self.address = address
        self._transport = Transport(
            project,
            address=address,
            catalog=catalog,
            timeout=timeout,
            backoff_initial=backoff_initial,
            backoff_cap=backoff_cap,
            give_up_after=give_up_after,
            secret=secret,
        )
        self._numbering = Numbering()

    @classmethod
    def at(cls, host: str, port: int, **options: Any) -> HashTableClient:
        """A client for the server at ``host:port``, without a catalog."""
        return cls(address=(host, port), **options)

    @property
    def client_id(self) -> str:
        """The random id this client's mutations carry (exactly-once)."""
        return self._numbering.client_id

    @property
    def timeout(self) -> float:
        """Seconds to wait for a connection or a reply before trying again."""
        return self._transport.timeout

    # ------------------------------------------------------------ operations

    def insert(self, key: str, value: Any) -> None:
        """Sets ``key`` to ``value`` (any JSON value)."""
        self._mutate(Request("insert", key, value))

    def lookup(self, key: str) -> Any:
        """The value of ``key``; ``KeyError`` if there is none."""
        return result_of(self._transport.call(encode_request(Request("lookup", key))), key)

    def remove(self, key: str) -> Any:
        """Removes ``key`` and returns its value; ``KeyError`` if there is none."""
        return self._mutate(Request("remove", key))

    def scan(self, regex: str) -> list[tuple[str, Any]]:
        """The ``(key, value)`` pairs whose key ``regex`` matches (``re.search``)."""
        return _pairs(self._read(Request("scan", regex=regex)))

    def size(self) -> int:
        """The number of keys."""
        return self._read(Request("size"))

    def query(self, subkey: str, subvalue: Any) -> list[tuple[str, Any]]:
        """The ``(key, value)`` pairs whose value is an object with ``subkey == subvalue``."""
        return _pairs(self._read(Request("query", subkey=subkey, subvalue=subvalue)))

    def pipeline(self) -> Pipeline:
        """Requests sent together without waiting for each reply; see ``Pipeline``."""
        return Pipeline(self._transport, self._numbering)

    def close(self) -> None:
        """Closes the connection; the next call opens a new one."""
        self._transport.disconnect()

    def __enter__(self) -> HashTableClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<HashTableClient {self._transport.target()}>"

    # ------------------------------------------------------------ requests

    def _read(self, request: Request) -> Any:
        return result_of(self._transport.call(encode_request(request)))

    def _mutate(self, request: Request) -> Any:
        while True:
            outcome = self._numbering.answered(
                request, self._transport.call(self._numbering.encode(request))
            )
            if outcome is not None:  # None: sent again under a new session
                return result_of(outcome, request.key)


def client_secret(secret_file: str | Path | None, auth: bool) -> Secret | None:
    """The secret a client proves itself with (None with ``auth=False``); raises
    ``AuthenticationError`` when it cannot be loaded (never worth retrying)."""
    if not auth and secret_file is not None:
        raise ValueError("auth=False and a secret_file contradict each other")
    try:
        return load_secret(secret_file) if auth else None
    except SecretError as exc:
        raise AuthenticationError(str(exc)) from None


def _pairs(items: list[list[Any]]) -> list[tuple[str, Any]]:
    return [(key, value) for key, value in items]
