"""The catalog client API: announce a service, query the catalog, resolve a name.

Which catalogs: ``CATALOG_HOST``, a comma-separated list of ``host[:port]``
(port 9097 when omitted), default ``localhost:9097``. Announcements go to every
catalog in the list; queries try them in turn until one answers. This works the
same against our catalog (``python -m catalog``) and a real cctools
``catalog_server``.
"""

from __future__ import annotations

import base64
import getpass
import json
import logging
import os
import socket
import threading
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from netkit import httpget
from netkit.addresses import parse_address_list
from netkit.loop import EventLoop, Timer

log = logging.getLogger("catalog.client")

DEFAULT_PORT = 9097
DEFAULT_CATALOG = f"localhost:{DEFAULT_PORT}"
DEFAULT_TIMEOUT = 5.0
ANNOUNCE_INTERVAL = 60.0
# Above this an update is compressed (0x1A + zlib), as cctools does; past the
# datagram limit it goes over TCP port+1 instead.
COMPRESS_ABOVE = 1200
MAX_DATAGRAM = 65507
COMPRESSED_MARK = b"\x1a"
# The largest query reply read: well above a full listing (our catalog holds at
# most 100,000 records of a few hundred bytes), so that a catalog, or anyone
# answering at its address, cannot make every client that asks it (the LS, the
# hash table client, the herd) hold a reply of any size in memory.
MAX_REPLY_BYTES = 64 << 20
# Of an error reply, only the first line is shown: read no more than this.
MAX_ERROR_BYTES = 4096

Catalog = tuple[str, int]
Record = dict[str, Any]


class CatalogUnavailable(ConnectionError):
    """No catalog in the list answered a query."""


def catalog_addresses(spec: str | None = None) -> list[Catalog]:
    """The catalogs to use: ``spec``, else ``CATALOG_HOST``, else ``localhost:9097``.

    Raises ``netkit.addresses.AddressError`` for a malformed list.
    """
    if spec is None:
        spec = os.environ.get("CATALOG_HOST") or DEFAULT_CATALOG
    return parse_address_list(spec, DEFAULT_PORT)


def encode_update(record: Record) -> bytes:
    """The bytes of one update: JSON, compressed behind 0x1A when large."""
    data = orjson.dumps(record)
    if len(data) > COMPRESS_ABOVE:
        data = COMPRESSED_MARK + zlib.compress(data)
    return data


def announce(record: Record, catalogs: Iterable[Catalog] | None = None) -> None:
    """Sends ``record`` to every catalog. Never raises: a catalog that is down
    only misses this announcement, and the next one reaches it."""
    data = encode_update(record)
    for host, port in catalogs if catalogs is not None else catalog_addresses():
        try:
            if len(data) <= MAX_DATAGRAM:
                _send_datagram(host, port, data)
            else:
                _send_stream(host, port + 1, data)
        except OSError as exc:
            log.warning("could not announce to catalog %s:%d: %s", host, port, exc)


def _send_datagram(host: str, port: int, data: bytes) -> None:
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM):
        with socket.socket(family, kind, proto) as sock:
            sock.sendto(data, address)
        return


def _send_stream(host: str, port: int, data: bytes) -> None:
    with socket.create_connection((host, port), timeout=2.0) as sock:
        sock.sendall(data)


def query(
    expression: str | None = None,
    catalogs: Iterable[Catalog] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Record]:
    """Every live record, or those for which the JX ``expression`` is true.

    Tries each catalog in turn, waiting at most ``timeout`` seconds for each;
    raises ``CatalogUnavailable`` if none gives a valid answer.
    """
    path = "/query.json"
    if expression is not None:
        path = "/query/" + base64.b64encode(expression.encode()).decode()
    failures = []
    for host, port in catalogs if catalogs is not None else catalog_addresses():
        try:
            records = _listing(_fetch(host, port, path, timeout))
        except (OSError, ValueError, _BadReply) as exc:
            failures.append(f"{host}:{port}: {_failure(exc)}")
            continue
        if not isinstance(records, list):
            failures.append(f"{host}:{port}: reply is not a JSON array")
            continue
        return [record for record in records if isinstance(record, dict)]
    raise CatalogUnavailable("no catalog answered: " + "; ".join(failures))


# The fields a catalog stamps on every record. The cctools catalog keeps a sender's own
# values of them as duplicate keys after its stamp, where JSON readers that keep the
# last (orjson, json, JavaScript) would see the sender's lie; cctools' readers take the
# first, and so do we.
_STAMPS = (b'"address"', b'"lastheardfrom"', b'"name"')


def _listing(body: bytes) -> Any:
    """A catalog's listing, each key's first value in each record."""
    records = orjson.loads(body)
    if isinstance(records, list) and any(body.count(stamp) > len(records) for stamp in _STAMPS):
        # Perhaps a duplicate (or only a value that reads "address"): parsed again,
        # slower, keeping the first of each key. orjson has checked the JSON already.
        records = json.loads(body, object_pairs_hook=_first_of_each)
    return records


def _first_of_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for key, value in pairs:
        record.setdefault(key, value)
    return record


class _BadReply(Exception):
    """A catalog's reply that is not a listing (an HTTP error, too large): why."""


def _fetch(host: str, port: int, path: str, timeout: float) -> bytes:
    """The body of the reply to GET ``path``, at most ``MAX_REPLY_BYTES`` of it,
    all within ``timeout`` seconds (``netkit.httpget``: a catalog trickling its
    reply cannot hold the caller longer). Raises ``_BadReply`` for an HTTP error
    (with the first line of a 400's body: our catalog says there what is wrong
    with a query) and for a longer body; what ``httpget.get`` raises when the
    catalog cannot be reached or stops answering."""
    reply = httpget.get(host, port, path, timeout, MAX_REPLY_BYTES, MAX_ERROR_BYTES)
    if reply.status >= 400:
        detail = ""
        if reply.status == 400:
            lines = reply.body.decode(errors="replace").strip().splitlines()
            detail = f": {lines[0][:200]}" if lines else ""
        raise _BadReply(f"HTTP {reply.status} {reply.reason}{detail}")
    if not reply.complete:
        raise _BadReply(f"reply larger than {MAX_REPLY_BYTES >> 20} MiB")
    return reply.body


def _failure(exc: Exception) -> str:
    """Why one catalog gave no answer, in a line a person can read."""
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, httpget.Unreachable):
        return f"cannot connect: {exc}"
    if isinstance(exc, OSError):
        return f"connection lost: {exc.strerror or exc}"
    if isinstance(exc, orjson.JSONDecodeError):
        return f"reply is not JSON: {exc}"
    return str(exc)


def owner_name() -> str:
    """The user running this program, as records' ``owner`` field names it."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (containers)
        return str(os.getuid())


def matching(records: Iterable[Record], type: str, project: str) -> list[Record]:
    """The records of one ``type`` and ``project``, freshest first."""
    found = [r for r in records if r.get("type") == type and r.get("project") == project]
    found.sort(key=_freshness, reverse=True)
    return found


def _freshness(record: Record) -> tuple[float, float]:
    # lastheardfrom counts whole seconds: a server restarted within the second of
    # its dead predecessor's last announcement ties with it. The one that started
    # last is the live one (else clients keep picking the dead one until the next
    # announcement, a minute later).
    return _number(record.get("lastheardfrom")), _number(record.get("starttime"))


def _number(value: Any) -> float:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0


def resolve(
    type: str,
    project: str,
    catalogs: Iterable[Catalog] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Record | None:
    """The freshest record of that ``type`` and ``project``, or None if none is listed.

    A restarted service leaves its old record behind until it expires; the one
    heard from most recently is the one that is up. Raises ``CatalogUnavailable``.
    """
    found = matching(query(catalogs=catalogs, timeout=timeout), type, project)
    return found[0] if found else None


def record_endpoint(record: Record) -> tuple[str, int]:
    """The ``(host, port)`` to connect to for a record; ``ValueError`` if it has none.

    ``address`` is what the catalog saw the service send from; ``name`` is its
    host name as the catalog resolved it.
    """
    port = record.get("port")
    host = record.get("address") or record.get("name")
    if not isinstance(port, int) or not 0 < port < 65536 or not isinstance(host, str):
        raise ValueError(f"catalog record has no usable address and port: {record!r:.200}")
    return host, port


class Announcer:
    """Announces a record at start and every ``interval`` seconds, from an event
    loop, without ever blocking it.

    ``make_record`` runs on the loop for each announcement, so that the record
    carries fresh figures; the sending (a look-up of each catalog's name, then a
    datagram, or a TCP connection for a large record) runs on a daemon thread,
    so that a slow or dead DNS server delays the announcement, never the loop.
    If announcements pile up behind a stuck look-up, only the newest is sent.

    ``before_send(record)``, if given, runs on that thread before each sending
    (it may query the catalog, say): False ends the announcements.
    """

    def __init__(
        self,
        make_record: Callable[[], Record],
        interval: float = ANNOUNCE_INTERVAL,
        catalogs: list[Catalog] | None = None,
        before_send: Callable[[Record], bool] | None = None,
    ) -> None:
        self.make_record = make_record
        self.before_send = before_send
        self.interval = interval
        self.catalogs = catalogs if catalogs is not None else catalog_addresses()
        self.announcements = 0
        self._timer: Timer | None = None
        self._loop: EventLoop | None = None
        self._waiting: Record | None = None
        self._closed = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._send_forever, name="announcer", daemon=True)

    def start(self, loop: EventLoop) -> None:
        """Announces at once, then every ``interval`` seconds on ``loop``'s timers."""
        self._loop = loop
        self._thread.start()
        self._timer = loop.call_later(0.0, self._announce)

    def close(self) -> None:
        """Stops announcing; a send under way finishes on its own (daemon thread)."""
        if self._timer is not None:
            self._timer.cancel()
        with self._ready:
            self._closed = True
            self._ready.notify()

    def _announce(self) -> None:
        assert self._loop is not None
        record = self.make_record()
        with self._ready:
            self._waiting = record
            self._ready.notify()
        self.announcements += 1
        self._timer = self._loop.call_later(self.interval, self._announce)

    def _send_forever(self) -> None:
        while True:
            with self._ready:
                while self._waiting is None and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                record, self._waiting = self._waiting, None
            if not self._may_send(record):
                return
            announce(record, self.catalogs)

    def _may_send(self, record: Record) -> bool:
        if self.before_send is None:
            return True
        try:
            return self.before_send(record)
        except Exception:  # a broken check must not silence the service: announce anyway
            log.exception("the check before an announcement failed")
            return True
