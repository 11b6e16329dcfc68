"""The hash table server's I/O: sockets in, bytes moved, nothing decided here.

It runs on the event-loop core (``netkit.loop``): one thread, one loop, many
clients. What each client's bytes mean is ``hashtable.protocol``'s business,
and who runs what, when, is ``hashtable.scheduler``'s; this module reads the
ready clients' lines into the scheduler and, once per turn (a turn hook),
lets it execute them, makes the turn's writes durable with ONE ``commit``
(group commit), and only then sends the turn's replies: nobody is ever told
about a write that a crash could lose.

What one client can cost is bounded (``Limits``, docs/protocol.md): request line
length, queued output, time, and connections in total.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import time
from functools import partial
from typing import Any, Protocol

from catalog.client import ANNOUNCE_INTERVAL, Announcer, Catalog
from hashtable.request import Outcome, Request
from hashtable.scheduler import Client, Limits, Phase, Scheduler
from hashtable.table import ReadJob
from netkit.accepting import Acceptor
from netkit.connection import Closed, Connection, EndOfInput
from netkit.framing import LineTooLong
from netkit.listeners import format_address, shut_down_writing
from netkit.loop import READ, WRITE, EventLoop, Watch

log = logging.getLogger("hashtable.server")

VERSION = "1.0"
DEFAULT_SUMMARY_INTERVAL = 10.0
SWEEP_INTERVAL = 1.0
REFUSAL_LOG_INTERVAL = 10.0
SUMMARY_TOP = 8
# Bytes a lingering connection may read and drop per turn.
_DISCARD = 256 * 1024

__all__ = ["VERSION", "Limits", "Server"]


class Database(Protocol):
    """What the server needs of ``hashtable.database.Database``."""

    needs_commit: bool

    def start_parsed(self, request: Request) -> Outcome | ReadJob: ...
    def commit(self) -> None: ...
    def maintain(self) -> None: ...
    def seconds_until_maintenance(self) -> float | None: ...
    def stats(self) -> dict[str, Any]: ...


class Peer(Client):
    """A client's scheduling state (``Client``) and its connection."""

    __slots__ = ("conn", "watch")

    def __init__(self, conn: Connection, watch: Watch) -> None:
        super().__init__(conn.name)
        self.conn = conn
        self.watch = watch


class Server:
    """Serves the table over TCP until ``stop()``.

    ``announce``: when given, the server announces itself to ``catalogs`` at start
    and every ``announce_interval`` seconds with these fields plus its own
    (type, owner, port, keys, requests, connections, uptime, version).
    """

    def __init__(
        self,
        database: Database,
        listener: socket.socket,
        *,
        limits: Limits | None = None,
        announce: dict[str, Any] | None = None,
        catalogs: list[Catalog] | None = None,
        announce_interval: float = ANNOUNCE_INTERVAL,
        summary_interval: float = DEFAULT_SUMMARY_INTERVAL,
        loop: EventLoop | None = None,
    ) -> None:
        self.db = database
        self.listener = listener
        self.limits = limits = limits or Limits()
        self.loop = loop or EventLoop()
        self.scheduler = Scheduler(database.start_parsed, limits, clock=self.loop.time)
        self.port: int = listener.getsockname()[1]
        self.started = self.loop.time()
        # Wall-clock start, to a millisecond: tells apart two servers of a project
        # heard from in the same second (catalog.client.matching).
        self.start_time = round(time.time(), 3)
        self._peers: set[Peer] = set()
        self._refused = 0
        self._refusal_logged = -REFUSAL_LOG_INTERVAL
        self._base_record = announce
        self._announcer = (
            None
            if announce is None
            else Announcer(self._record, interval=announce_interval, catalogs=catalogs)
        )
        self._summary_interval = summary_interval
        self._compactions_seen = 0
        self.acceptor = Acceptor(self.loop, listener, self._accept)
        self._maintenance = self.loop.alarm(self._maintain)
        self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        self.loop.call_later(summary_interval, self._summarize)
        self.loop.add_turn_hook(self._after_turn)
        self._maintain()

    # ------------------------------------------------------------ running

    def serve(self) -> None:
        """Runs the loop until ``stop()``. Exceptions from the database (a storage
        failure, a failed mutation) end it: crash-only, the log is the truth."""
        if self._announcer is not None:
            self._announcer.start(self.loop)
        try:
            self.loop.run()
        finally:
            self.close()

    def stop(self) -> None:
        """Ends ``serve()`` after the current turn; safe to call from a signal handler."""
        self.loop.stop()

    def close(self) -> None:
        if self._announcer is not None:
            self._announcer.close()
        for peer in list(self._peers):
            self._drop(peer, None)
        self.acceptor.close()
        self.listener.close()
        self.loop.close()

    def _after_turn(self) -> bool:
        """The turn's work after its input: execute, commit once, then reply."""
        replied = self.scheduler.run()
        committed = self.db.needs_commit
        if committed:
            self.db.commit()
        for peer in replied:
            self._send_replies(peer)  # type: ignore[arg-type]  # the scheduler's clients are Peers
        if committed:
            self._maintain()  # the commit may have made a compaction or a sync due
        return bool(self.scheduler.busy)

    def _maintain(self) -> None:
        self.db.maintain()
        wait = self.db.seconds_until_maintenance()
        self._maintenance.set(None if wait is None else self.loop.time() + wait)

    # ------------------------------------------------------------ connections

    def _accept(self, sock: socket.socket, address: Any) -> None:
        if len(self._peers) >= self.limits.max_connections:
            sock.close()
            self._note_refusal()
            return
        try:
            conn = Connection(
                sock, format_address(address), self.limits.max_request_bytes, self.limits.high_water
            )
        except OSError:  # reset before we got to it
            sock.close()
            return
        peer = Peer(conn, self.loop.watch(sock, lambda _: None, 0))
        peer.watch.handler = partial(self._ready, peer)
        self._peers.add(peer)
        peer.watch.set(READ)
        log.info("client %s connected (%d connected)", peer.name, len(self._peers))

    def _note_refusal(self) -> None:
        self._refused += 1
        now = self.loop.time()
        if now - self._refusal_logged >= REFUSAL_LOG_INTERVAL:
            self._refusal_logged = now
            log.warning(
                "at the limit of %d connections; %d connection(s) refused since the last such message",
                self.limits.max_connections,
                self._refused,
            )
            self._refused = 0

    def _ready(self, peer: Peer, events: int) -> None:
        if events & WRITE:
            try:
                peer.conn.flush()
            except Closed as exc:
                self._drop(peer, str(exc))
                return
            self._update(peer)
        if events & READ and peer in self._peers:
            self._read(peer)

    def _read(self, peer: Peer) -> None:
        if peer.phase in (Phase.REFUSING, Phase.LINGERING):
            self._discard_input(peer)
            return
        try:
            lines = peer.conn.read_lines()
        except EndOfInput:
            # A clean end of input (e.g. `nc -N` after a file of requests): the
            # requests already read still get executed and answered. A last line
            # without its newline is not a request (docs/protocol.md).
            self.scheduler.end_of_input(peer)
            self._update(peer)
            return
        except Closed as exc:  # a failure (reset, ...): nobody to answer
            self._drop(peer, str(exc))
            return
        except LineTooLong as exc:
            self.scheduler.refuse_line(peer, exc.lines, str(exc))
            return
        self.scheduler.received(peer, lines)

    def _discard_input(self, peer: Peer) -> None:
        # Lingering: unread input makes the kernel reset the connection, which can
        # destroy the answer before the client reads it; so read and drop it.
        try:
            if not peer.conn.sock.recv(_DISCARD):
                self._drop(peer, "closed after an over-long line")
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._drop(peer, f"closed after an over-long line ({exc.strerror})")

    def _send_replies(self, peer: Peer) -> None:
        replies = peer.replies
        peer.replies = bytearray()
        if peer not in self._peers:
            return
        try:
            peer.conn.send(replies)
        except Closed as exc:
            self._drop(peer, str(exc))
            return
        self._update(peer)

    def _update(self, peer: Peer) -> None:
        """Applies the scheduler's view of what to wait for, after output changed."""
        conn = peer.conn
        peer.queued = conn.buffered
        interest = self.scheduler.interest(peer, conn.wants_write, conn.backlogged)
        if interest.close is not None:
            self._drop(peer, interest.close)
            return
        if interest.shut_down:
            shut_down_writing(conn.sock)
        peer.watch.set(interest.events)

    def _drop(self, peer: Peer, reason: str | None) -> None:
        if peer not in self._peers:
            return
        self._peers.discard(peer)
        self.scheduler.left(peer)
        peer.watch.close()
        peer.conn.close()
        if reason is not None:
            log.info(
                "client %s left after %d requests: %s (%d connected)",
                peer.name,
                peer.served,
                reason,
                len(self._peers),
            )

    # ------------------------------------------------------------ housekeeping

    def _sweep(self) -> None:
        """Drops the connections that overstayed a time bound."""
        self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        now = self.loop.time()
        overstayed = self.scheduler.overstayed
        for peer in list(self._peers):
            conn = peer.conn
            reason = overstayed(
                peer, now, conn.buffered, conn.framer.pending, now - conn.last_active
            )
            if reason is not None:
                self._drop(peer, reason)

    def _summarize(self) -> None:
        """One line showing who was served (the interleaving) and what storage did."""
        self.loop.call_later(self._summary_interval, self._summarize)
        recent = self.scheduler.take_recent()
        total = sum(recent.values())
        if not total:
            return
        busiest = sorted(recent.items(), key=lambda item: item[1], reverse=True)
        shown = " ".join(f"{name}={count}" for name, count in busiest[:SUMMARY_TOP])
        if len(busiest) > SUMMARY_TOP:
            shown += f" and {len(busiest) - SUMMARY_TOP} more"
        stats = self.db.stats()
        storage = f"{stats.get('keys')} keys, {len(self._peers)} connected"
        compactions = stats.get("compactions", 0)
        if compactions != self._compactions_seen:
            storage += (
                f"; {compactions - self._compactions_seen} compactions, the last took "
                f"{stats.get('last_compaction_ms') or 0:.0f} ms and paused the loop "
                f"{stats.get('last_pause_ms') or 0:.1f} ms"
            )
            self._compactions_seen = compactions
        log.info(
            "served %d requests in the last %g s from %d clients: %s (%s)",
            total,
            self._summary_interval,
            len(busiest),
            shown,
            storage,
        )

    def status(self) -> dict[str, Any]:
        """Figures for the catalog record and for people."""
        return {
            "keys": self.db.stats().get("keys"),
            "requests": self.scheduler.requests,
            "connections": len(self._peers),
            "uptime": int(self.loop.time() - self.started),
        }

    def _record(self) -> dict[str, Any]:
        return {
            "type": "hashtable",
            "owner": _owner(),
            "port": self.port,
            "version": VERSION,
            "starttime": self.start_time,
            **(self._base_record or {}),
            **self.status(),
        }


def _owner() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (containers)
        return str(os.getuid())
