"""The LS's links to its TSs, as a set: the TSs wanted (the pairs given and
those the catalog lists), each link's socket watched as it connects, runs its
handshake and is up, and the queries the balancer sends them. One link's own
states and backoff are ``lb.tslink``'s."""

from __future__ import annotations

import logging
import ssl
from functools import partial

from lb.balancer import Balancer
from lb.discovery import Endpoint
from lb.tslink import CONNECTING, DOWN, HANDSHAKING, RESOLVING, UP, TsLink
from netkit.connection import Closed
from netkit.framing import LineTooLong
from netkit.logs import EventSummary
from netkit.loop import READ, WRITE, EventLoop, Watch

log = logging.getLogger("lb.ls")


class TsLinks:
    """``static``: the TSs given as pairs, in plain text; those the catalog lists
    go over TLS (``tls``, a client context, and ``server_name``, the project's,
    for SNI). Failed handshakes are noted in ``refusals``."""

    def __init__(
        self,
        loop: EventLoop,
        balancer: Balancer,
        refusals: EventSummary,
        connect_timeout: float,
        static: set[Endpoint],
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.loop = loop
        self.balancer = balancer
        self.refusals = refusals
        self.timeout = connect_timeout
        self.static = set(static)
        self.wanted = set(self.static)  # the static TSs and those the catalog lists
        self.tls = tls
        self.server_name = server_name
        self.by_endpoint: dict[Endpoint, TsLink] = {}
        self._watches: dict[TsLink, Watch] = {}

    def start(self) -> None:
        for endpoint in sorted(self.static):
            self.add(endpoint, secure=False)  # the assignment's plain text

    def close(self) -> None:
        for endpoint in list(self.by_endpoint):
            self.remove(endpoint)

    def deadlines(self) -> list[float]:
        """When links not up are next due (a connection attempt, or giving up on one)."""
        return [link.due for link in self.by_endpoint.values() if link.state != UP]

    def add(self, endpoint: Endpoint, secure: bool) -> None:
        tls = self.tls if secure else None
        self.by_endpoint[endpoint] = TsLink(
            *endpoint, connect_timeout=self.timeout, tls=tls, server_name=self.server_name
        )
        self.tend(self.loop.time())

    def remove(self, endpoint: Endpoint) -> None:
        link = self.by_endpoint.pop(endpoint)
        self._forget_socket(link)
        self.balancer.close_server(link)
        link.close()

    def _forget_socket(self, link: TsLink) -> None:
        watch = self._watches.pop(link, None)
        if watch is not None:
            watch.close()

    def listed(self, listed: set[Endpoint]) -> None:
        """The catalog lists these TSs now: links to the new ones, none to the gone."""
        self.wanted = self.static | listed
        for endpoint in sorted(self.wanted - self.by_endpoint.keys()):
            log.info("TS %s:%d is listed in the catalog; adding it", *endpoint)
            self.add(endpoint, secure=True)
        for endpoint in sorted(self.by_endpoint.keys() - self.wanted):
            if self.by_endpoint[endpoint].state == UP:
                # A catalog restarted without its records lists no TS until each
                # announces again (a minute, by default); a TS still connected goes
                # on answering until then, and is dropped when its connection breaks.
                continue
            log.info("TS %s:%d is no longer listed in the catalog; dropping it", *endpoint)
            self.remove(endpoint)

    def _ready(self, link: TsLink, mask: int) -> None:
        now = self.loop.time()
        if link.state == DOWN:
            return  # dropped earlier in this turn (the catalog no longer lists it)
        if link.state == CONNECTING:
            reason = link.finish_connect(now)
            if reason:
                self._down(link, now, reason)
                return
            if link.state == UP:
                self.balancer.open_server(link)
            self._sync(link)
            return
        assert link.conn is not None
        handshaking = link.state == HANDSHAKING
        try:
            if mask & WRITE:
                link.conn.flush()
            if mask & READ:
                lines = link.read_lines(now)
                if handshaking and link.state == UP:
                    self.balancer.open_server(link)
                if self.balancer.server_lines(link, lines, now):
                    link.answered()
        except (Closed, LineTooLong) as exc:
            if handshaking:
                self._handshake_failed(link, now, str(exc))
            else:
                self._down(link, now, str(exc))
            return
        self._sync(link)

    def _handshake_failed(self, link: TsLink, now: float, reason: str) -> None:
        """A TS that does not prove our secret: an impostor (its record copied), a
        TS with another secret file, or one not speaking TLS. Reported once (and
        all of them rate-limited), then retried with backoff like a TS that is down."""
        reason = f"TLS handshake failed: {reason}"
        if not link.refused:
            self.refusals.note(
                "TSs skipped: they did not prove our secret", f"{link}: {reason}", now
            )
            link.refused = True
        self._down(link, now, reason, quietly=True)

    def _down(self, link: TsLink, now: float, reason: str, quietly: bool = False) -> None:
        endpoint = (link.host, link.port)
        if endpoint not in self.wanted:
            log.info(
                "TS %s is no longer listed in the catalog and its connection is gone (%s); "
                "dropping it",
                link,
                reason,
            )
            self.remove(endpoint)
            return
        self._forget_socket(link)
        self.balancer.close_server(link)
        link.fail(now, reason, quietly)

    def tend(self, now: float) -> None:
        """Starts due connection attempts and gives up on those taking too long."""
        for link in self.by_endpoint.values():
            if link.state == UP or link.due > now:
                continue
            if link.state == CONNECTING:
                self._down(link, now, "connect timed out")
            elif link.state == HANDSHAKING:
                self._handshake_failed(link, now, "no answer in time")
            elif link.state in (DOWN, RESOLVING):
                link.connect(now)
                if link.state == CONNECTING:
                    self._sync(link)

    def _sync(self, link: TsLink) -> None:
        assert link.sock is not None
        if link.state == CONNECTING:
            events = WRITE
        else:  # handshaking or up
            assert link.conn is not None
            events = READ | (WRITE if link.conn.wants_write else 0)
        watch = self._watches.get(link)
        if watch is None or watch.fileobj is not link.sock:
            if watch is not None:
                watch.close()
            watch = self._watches[link] = self.loop.watch(link.sock, partial(self._ready, link), 0)
        watch.set(events)

    def send(self, link: TsLink, data: bytes, now: float) -> None:
        conn = link.conn
        if link.state != UP or conn is None:
            return
        if conn.backlogged:
            if not link.dropping:
                log.warning("TS %s is not reading its queries; skipping it until it does", link)
                link.dropping = True
            return
        link.dropping = False
        try:
            conn.send(data)
        except Closed as exc:
            self._down(link, now, str(exc))
            return
        self._sync(link)
