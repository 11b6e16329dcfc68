"""One herd server: the state (table, links, waiters) and what each event does to it.

The asyncio protocols (herd.clients, herd.links) only move bytes and call in
here; the decisions are in the sans-IO modules (herd.messages, herd.locations,
herd.peering). One event loop, no threads for requests: the only work handed to
threads is what would block the loop (catalog HTTP and DNS, in herd.discovery).

Per loop turn, one callback (``_end_of_turn``) does what the turn's events left
to do: at most one commit (every location the turn accepted, one fsync), then
at most one write to each neighbour (its ACK and the UPDATE lines it has not
been sent), then the turn's log lines, stamped once (herd.traffic writes them
within its flush interval), however many updates the turn saw.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from herd.config import HerdConfig
from herd.durable import DurableLocations
from herd.locations import Location, LocationTable, TableFull
from herd.messages import (
    At,
    IAmAt,
    Invalid,
    format_diff,
    invalid_reply,
    parse_client_line,
    whatsat_reply,
)
from herd.options import Options
from herd.peering import Hello, Link, ProtocolError, fanout
from herd.replies import AckWaiters, ExpectedLink, PendingReply
from herd.traffic import TrafficLog
from netkit.room import IdleOrder

PlaceSearch = Callable[[float, float, float, int], "dict[str, Any] | Awaitable[dict[str, Any]]"]


class HerdServer:
    def __init__(
        self,
        name: str,
        config: HerdConfig,
        options: Options,
        places: PlaceSearch,
        durable: DurableLocations | None = None,
        peer_address: Callable[[str], Awaitable[tuple[str, int] | None]] | None = None,
        io_log: TrafficLog | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.options = options
        self.places = places
        self.durable = durable
        self.neighbours = set(config.neighbours(name))
        self.herd_names = frozenset(config.servers)
        self.epoch = secrets.token_hex(8)
        self.table = LocationTable(options.max_locations)
        self.cursors: dict[str, tuple[str, int]] = {}  # neighbour -> (their epoch, their lsn)
        self.links: dict[str, Any] = {}  # neighbour -> PeerConnection, once up
        self.wakes: dict[str, asyncio.Event] = {}  # neighbour we dial -> set at its knock
        self.expected: dict[str, ExpectedLink] = {}  # links on their way at start
        self.waiters = AckWaiters()
        self.clients: IdleOrder[Any] = IdleOrder()  # netkit.room: who makes room at the limit
        self.pending_peers = 0
        self.log = logging.getLogger(f"herd.{name}")
        self.io_log = io_log if io_log is not None else TrafficLog(None)  # None: no log
        self.io_log.bind(
            on_first_line=self.schedule_turn,
            flush_interval=options.log_flush_interval,
            call_later=lambda delay, callback: self._loop.call_later(delay, callback),
        )
        self._peer_address = peer_address
        self._commit_waiters: list[PendingReply] = []
        self._turn_scheduled = False
        self._fanouts: dict[tuple[frozenset[str], str | None], frozenset[str]] = {}
        self._ack_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.failed: BaseException | None = None  # storage failure: the server must stop
        if durable is not None:
            for location in durable.recovered():
                self.table.offer(location)
            self.log.info("recovered %d locations", len(self.table))

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # ---- clients ------------------------------------------------------------------

    def client_opened(self, client: Any) -> bool:
        now = time.monotonic()
        if len(self.clients) >= self.options.max_clients:
            room = self.clients.idlest(now, lambda other: other.idle())
            if room is None:
                self.io_log.info(
                    "client %s refused: %d connections", client.peer, len(self.clients)
                )
                return False
            self.clients.remove(room)
            room.close_to_make_room(now)
        self.clients.add(client, now)
        self.io_log.info("client %s connected", client.peer)
        return True

    def client_heard(self, client: Any, now: float) -> None:
        self.clients.heard(client, now)

    def client_closed(self, client: Any) -> None:
        if client in self.clients:
            self.clients.remove(client)
            self.io_log.info("client %s closed", client.peer)

    def handle_client_line(
        self, line: bytes, peer: str, received_ns: int | None = None
    ) -> bytes | PendingReply:
        """The reply to one line (that arrived at ``received_ns``, ``time.time_ns()``;
        None: now): bytes now, or a reply that leaves later."""
        self.io_log.info("in  client %s: %s", peer, line.decode(errors="backslashreplace"))
        try:
            command = parse_client_line(line)
            if isinstance(command, IAmAt):
                return self._iamat(command, peer, received_ns or time.time_ns())
            return self._whatsat(command.client, command.radius_km, command.max_items, peer)
        except Invalid as error:
            reply = invalid_reply(line)
            self._log_reply(peer, reply, str(error))
            return reply

    def overlong_line(self, peer: str) -> bytes:
        limit = self.options.max_line
        self.io_log.info("in  client %s: (a line longer than %d bytes, not kept)", peer, limit)
        reply = f"? (line longer than {limit} bytes)\n".encode()
        self._log_reply(peer, reply, "line too long; connection closed")
        return reply

    def _log_reply(self, peer: str, reply: bytes, note: str = "") -> None:
        """The reply as sent; ``note``, why, on a line of its own before it."""
        if note:
            self.io_log.info("why client %s: %s", peer, note)
        text = reply.decode(errors="backslashreplace").rstrip("\n")
        self.io_log.info("out client %s: %s", peer, text)

    def _iamat(self, command: IAmAt, peer: str, received_ns: int) -> bytes | PendingReply:
        at = At(
            self.name,
            format_diff(received_ns, command.time),
            command.client,
            command.location,
            command.time_text,
            command.time,
            command.latitude,
            command.longitude,
        )
        reply = (at.line + "\n").encode()
        location = Location(at, received_ns)
        try:
            changed = self.table.offer(location)
        except TableFull as error:
            raise Invalid(str(error)) from None
        if not changed:  # an older or repeated report: nothing to store or flood
            self._log_reply(peer, reply)
            return reply
        self.changed(location)
        # Logged when it leaves, after the acknowledgements that release it.
        pending = PendingReply(
            reply, 2 if self.durable is not None else 1, lambda sent: self._log_reply(peer, sent)
        )
        if self.durable is not None:
            self._commit_waiters.append(pending)
        deadline = self._loop.time() + self.options.ack_timeout
        self.waiters.add(location.lsn, pending, self.live_links(), deadline)
        if pending.done():  # no neighbour to wait for, nothing to commit (logged as it left)
            return reply
        if self._ack_timer is None:
            self._arm_ack_timer()
        return pending

    def _whatsat(
        self, client: str, radius_km: float, limit: int, peer: str
    ) -> bytes | PendingReply:
        location = self.table.get(client)
        if location is None:
            raise Invalid(f"no location known for {client[:80]!r}")
        at = location.at
        answer = self.places(at.latitude, at.longitude, radius_km, limit)
        if not isinstance(answer, dict):
            pending = PendingReply(b"", 1, lambda sent: self._log_reply(peer, sent))
            task = asyncio.ensure_future(answer)
            task.add_done_callback(lambda done: self._places_ready(done, pending, at.line))
            return pending
        reply = whatsat_reply(at.line, orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
        self._log_reply(peer, reply)
        return reply

    def _places_ready(self, done: asyncio.Future[dict], pending: PendingReply, line: str) -> None:
        error = "cancelled" if done.cancelled() else done.exception()
        if error is not None:
            self.log.warning("place search failed: %r", error)
            answer = {"html_attributions": [], "results": [], "status": "UNKNOWN_ERROR"}
        else:
            answer = done.result()
        pending.reply = whatsat_reply(
            line, orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode()
        )
        pending.set_result(None)

    # ---- changes: storing and flooding --------------------------------------------

    def changed(self, location: Location) -> None:
        """A location was accepted into the table: store it and flood it, this turn."""
        # Every change from one neighbour with one fanout field has the same fanout, until
        # a link comes or goes: computed once for each.
        via = location.via
        key = (location.covered, via.neighbour if via is not None else None)
        names = self._fanouts.get(key)
        if names is None:
            names = self._fanouts[key] = fanout(location, list(self.links), self.herd_names)
        location.fanout = names
        if self.durable is not None:
            self.durable.record(location)
        self.schedule_turn()

    def schedule_turn(self) -> None:
        if not self._turn_scheduled and self._loop is not None:
            self._turn_scheduled = True
            self._loop.call_soon(self._end_of_turn)

    def _end_of_turn(self) -> None:
        """What this turn's events left to do, in this order: the commit (a reply or
        an ACK promises only stored locations), one write per link (links whose
        neighbour waits for our ACK first), the traffic log's lines (herd.traffic)."""
        self._turn_scheduled = False
        if self.durable is not None and self.durable.needs_commit:
            self._commit()
        lsn, later = self.table.lsn, []
        for connection in list(self.links.values()):
            link = connection.link
            if link.ack_urgent:
                connection.flush()
            elif link.ack_due or link.sent_upto < lsn:
                later.append(connection)
        for connection in later:
            connection.flush()
        self.io_log.end_turn()

    def commit_now(self) -> None:
        """Commits what is buffered now: a neighbour's ACK must promise stored locations."""
        if self.durable is not None and self.durable.needs_commit:
            self._commit()

    def _commit(self) -> None:
        if self.failed is not None:
            return
        try:
            self.durable.commit()
        except Exception as error:  # storage failed: acknowledging more would be a lie
            self.log.critical("storage failed, stopping: %s", error)
            self.failed = error
            return
        waiters, self._commit_waiters = self._commit_waiters, []
        for waiter in waiters:
            waiter.set_result(None)

    def _arm_ack_timer(self) -> None:
        deadline = self.waiters.next_deadline()
        if deadline is not None:
            self._ack_timer = self._loop.call_at(deadline, self._ack_timer_fired)

    def _ack_timer_fired(self) -> None:
        """One timer for all waiting replies, set for the oldest one's deadline."""
        self._ack_timer = None
        self.waiters.expire_due(self._loop.time(), self.live_links(), self.table.lsn)
        self._arm_ack_timer()

    def acks_changed(self) -> None:
        if len(self.waiters):
            self.waiters.release(self.live_links())

    def live_links(self) -> list[Link | ExpectedLink]:
        links: list[Link | ExpectedLink] = [c.link for c in self.links.values()]
        return links + list(self.expected.values()) if self.expected else links

    def expect_links(self) -> None:
        """At start: every neighbour's link is on its way (herd.replies.ExpectedLink),
        until it is up or its first attempt failed, for two handshake times at most."""
        self.expected = {name: ExpectedLink(name) for name in self.neighbours}
        self._loop.call_later(2 * self.options.handshake_timeout, self._expect_no_more)

    def _expect_no_more(self) -> None:
        if self.expected:
            self.expected.clear()
            self.waiters.release(self.live_links())

    def link_failed(self, neighbour: str) -> None:
        """A first attempt at the link failed (it is down): not waited for."""
        if self.expected.pop(neighbour, None) is not None:
            self.waiters.release(self.live_links())

    # ---- peers ----------------------------------------------------------------------

    def peer_opened(self, connection: Any) -> bool:
        """An accepted peer-port connection, before its handshake."""
        if self.pending_peers >= self.options.max_pending_peers:
            self.log.warning("peer connection from %s refused: too many", connection.address)
            return False
        self.pending_peers += 1
        connection.counted = True
        return True

    def hello_for(self, neighbour: str) -> Hello:
        epoch, lsn = self.cursors.get(neighbour, ("-", 0))
        return Hello(self.config.herd, self.name, neighbour, self.epoch, epoch, lsn)

    def check_hello(self, hello: Hello, connection: Any) -> bool:
        """Raises ProtocolError for a HERD line that is not a neighbour's; True for a
        knock (herd.links.knock): a neighbour we dial, saying it is up."""
        if hello.herd != self.config.herd or hello.receiver != self.name:
            raise ProtocolError(f"HERD line for {hello.herd}/{hello.receiver}, not for us")
        if connection.dialed:
            if hello.sender != connection.neighbour:
                raise ProtocolError(f"dialed {connection.neighbour}, answered by {hello.sender}")
        elif hello.sender not in self.neighbours:
            raise ProtocolError(f"{hello.sender} is not a neighbour of {self.name}")
        return not connection.dialed and hello.sender > self.name

    def link_up(self, connection: Any, hello: Hello) -> Link:
        expected = self.expected.pop(hello.sender, None) is not None
        if getattr(connection, "counted", False):
            connection.counted = False
            self.pending_peers -= 1
        old = self.links.get(hello.sender)
        if old is not None:  # it redialled before we noticed the old link die
            self.cursors[hello.sender] = (old.link.their_epoch, old.link.received_upto)
            old.drop("replaced by a new connection")
        epoch, lsn = self.cursors.get(hello.sender, (None, 0))
        if epoch != hello.epoch:
            self.cursors[hello.sender] = (hello.epoch, 0)
        resume = hello.cursor_lsn if hello.cursor_epoch == self.epoch else 0
        link = Link(hello.sender, hello.epoch, resume, self.table.lsn)
        if expected:  # replies wait for it (within --ack-timeout), as they did meanwhile
            link.lagging_until = None
        if epoch == hello.epoch:
            link.received_upto = lsn
        self.links[hello.sender] = connection
        self._fanouts.clear()
        self.log.info(
            "link to %s up (%s, %s), sending changes after %d of %d",
            hello.sender,
            "dialed" if connection.dialed else "accepted",
            connection.address,
            resume,
            self.table.lsn,
        )
        return link

    def peer_closed(self, connection: Any, why: str) -> None:
        if getattr(connection, "counted", False):
            connection.counted = False
            self.pending_peers -= 1
        link = connection.link
        if link is None:
            self.log.info(
                "peer connection %s %s closed before its handshake: %s",
                connection.neighbour or "from",
                connection.address,
                why,
            )
            return
        if self.links.get(link.neighbour) is not connection:
            # Its cursor went to the connection that replaced it (link_up).
            self.log.info("an older connection to %s closed: %s", link.neighbour, why)
            return
        self.cursors[link.neighbour] = (link.their_epoch, link.received_upto)
        del self.links[link.neighbour]
        self._fanouts.clear()
        self.waiters.release(self.live_links())
        self.log.info("link to %s dropped: %s", link.neighbour, why)

    async def peer_address(self, neighbour: str) -> tuple[str, int] | None:
        if self._peer_address is not None:
            return await self._peer_address(neighbour)
        entry = self.config.servers[neighbour]
        if entry.host is None or entry.peer_port is None:
            return None
        return entry.host, entry.peer_port

    def status(self) -> dict[str, Any]:
        """Figures for the catalog record and the log."""
        return {
            "locations": len(self.table),
            "lsn": self.table.lsn,
            "links": sorted(self.links),
            "clients": len(self.clients),
        }
