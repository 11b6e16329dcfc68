"""The hash table server's event loop: one thread, one ``selectors`` loop, many clients.

Each turn of the loop reads what the ready clients sent, executes their requests
one at a time (the request stream is serialized, so the table needs no locks),
makes the turn's writes durable with ONE ``commit`` (group commit), and only
then sends the turn's replies: nobody is ever told about a write that a crash
could lose.

What one client can cost is bounded (see ``Limits`` and docs/protocol.md):
request line length, queued output (past the high-water mark the server stops
reading from that client), time (a slice per turn, so a client pipelining slow
requests cannot hold the others back for long; a scan or query runs over a
snapshot a slice per turn, with the other clients served between its slices; a
partial request or unread output that makes no progress is dropped after a
timeout), and connections in total.

Protocol rules live in ``hashtable.protocol`` and the table in the database;
this module only moves bytes, executes and schedules.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import resource
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from catalog.client import Announcer, Catalog
from hashtable.protocol import encode_reply, parse_request
from hashtable.request import MUTATIONS, WHOLE_TABLE_READS, Outcome, Request
from hashtable.table import ReadJob
from netkit.accepting import Acceptor
from netkit.connection import DEFAULT_HIGH_WATER, Closed, Connection
from netkit.framing import DEFAULT_MAX_LINE, LineTooLong

log = logging.getLogger("hashtable.server")

VERSION = "1.0"
# File descriptors kept free for the database, the catalog announcements and logging.
RESERVED_FDS = 64
# A client gets this much execution time per turn while others wait.
TURN_SLICE = 0.010
ACCEPT_BATCH = 64
# After an over-long line the server answers, then lingers this long so the client
# can read the answer before the connection is closed.
LINGER = 2.0
SWEEP_INTERVAL = 1.0
REFUSAL_LOG_INTERVAL = 10.0
SUMMARY_TOP = 8

_SERVER_ERROR = Outcome.failed("ServerError", "internal error while reading; see the server log")


class Database(Protocol):
    """What the loop needs of ``hashtable.database.Database``."""

    needs_commit: bool

    def start(self, request: Request) -> Outcome | ReadJob: ...
    def commit(self) -> None: ...
    def maintain(self) -> None: ...
    def seconds_until_maintenance(self) -> float | None: ...
    def stats(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Limits:
    """What one client may cost. Documented in docs/protocol.md."""

    max_line: int = DEFAULT_MAX_LINE  # bytes in one request line
    high_water: int = DEFAULT_HIGH_WATER  # queued reply bytes before the server stops reading
    max_connections: int = 10_000
    request_timeout: float = 60.0  # a partial request or unread replies making no progress
    idle_timeout: float | None = 3600.0  # a connection with nothing going on
    # Scans and queries under way at once; each may hold a snapshot of the table
    # (jobs started between two writes share one). More wait for one to end.
    max_read_jobs: int = 8


class _Peer:
    """One client connection and the loop's bookkeeping for it."""

    __slots__ = (
        "closing",
        "conn",
        "eof",
        "job",
        "lines",
        "linger_until",
        "mask",
        "name",
        "next",
        "out_seen",
        "out_since",
        "parked",
        "replies",
        "served",
        "shut",
    )

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.name = conn.name
        self.lines: list[bytes] = []  # request lines read and not yet executed
        self.next = 0  # index of the next line to execute
        self.job: ReadJob | None = None  # a scan or query under way; later lines wait for it
        self.parked = False  # its next line is a scan or query waiting for a free job slot
        self.replies = bytearray()  # this turn's replies, sent after the commit
        self.mask = 0  # selector events registered
        self.served = 0
        self.closing = False  # answered a protocol violation; closes once that is sent
        self.shut = False  # our side of the connection is shut down
        self.eof = False  # the client has sent all it will send; answer it, then close
        self.linger_until = 0.0
        self.out_seen = 0
        self.out_since = 0.0

    @property
    def has_work(self) -> bool:
        return self.job is not None or self.next < len(self.lines)

    @property
    def runnable(self) -> bool:
        return self.has_work and not self.parked


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
        limits: Limits = Limits(),
        announce: dict[str, Any] | None = None,
        catalogs: list[Catalog] | None = None,
        announce_interval: float = 60.0,
        summary_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = database
        self.listener = listener
        self.limits = limits
        self._max_jobs = limits.max_read_jobs
        self.port: int = listener.getsockname()[1]
        self.clock = clock
        self.started = clock()
        # Wall-clock start, to a millisecond: tells apart two servers of a project
        # heard from in the same second (catalog.client.matching).
        self.start_time = round(time.time(), 3)
        self.requests = 0
        self._peers: set[_Peer] = set()
        self._busy: dict[_Peer, None] = {}  # peers with lines to execute, in arrival order
        self._jobs = 0  # scans and queries under way
        self._parked: deque[_Peer] = deque()  # waiting for one of them to end, oldest first
        self._turn_replies: list[_Peer] = []
        self._recent: dict[str, int] = {}  # requests per client since the last summary
        self._refused = 0
        self._refusal_logged = 0.0
        self._stopping = False
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._base_record = announce
        self._announcer = (
            None
            if announce is None
            else Announcer(self._record, interval=announce_interval, catalogs=catalogs, clock=clock)
        )
        self._summary_interval = summary_interval
        self._compactions_seen = 0
        self._summary_due = self.started + summary_interval
        self._sweep_due = self.started + SWEEP_INTERVAL
        self._housekeeping_due = self.started  # the first turn announces and so on

        self.selector = selectors.DefaultSelector()
        self._acceptor = Acceptor(self.selector, listener, None, clock=clock)
        # stop() may be called from a signal handler while select() sleeps: a byte
        # on this socket pair wakes the loop.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._wake_r)

    # ------------------------------------------------------------ running

    def serve(self) -> None:
        """Runs turns until ``stop()``. Exceptions from the database (a storage
        failure, a failed mutation) end it: crash-only, the log is the truth."""
        try:
            while not self._stopping:
                self.turn(self._timeout())
        finally:
            self.close()

    def stop(self) -> None:
        """Ends ``serve()`` after the current turn; safe to call from a signal handler."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def close(self) -> None:
        for peer in list(self._peers):
            self._drop(peer, None)
        self.selector.close()
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()

    def turn(self, timeout: float | None) -> None:
        """One turn: I/O events, execution, one commit, then the replies."""
        for key, events in self.selector.select(timeout):
            peer = key.data
            if peer is None:
                self._accept()
            elif peer is self._wake_r:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
            else:
                if events & selectors.EVENT_WRITE:
                    self._flush(peer)
                if events & selectors.EVENT_READ and peer in self._peers:
                    self._read(peer)
        for peer in list(self._busy):
            self._work(peer)
        committed = self.db.needs_commit
        if committed:
            self.db.commit()
        self._send_replies()
        # Housekeeping only when something is due, or a commit may have made a
        # compaction due: a turn of reads costs no more than its I/O.
        if committed or self.clock() >= self._housekeeping_due:
            self._housekeeping()

    def _timeout(self) -> float | None:
        if self._busy:
            return 0.0
        return max(0.0, self._housekeeping_due - self.clock())

    def _next_housekeeping(self, now: float) -> float:
        due = min(self._summary_due, self._sweep_due)
        resume = self._acceptor.seconds_until_resume()
        if resume is not None:
            due = min(due, now + resume)
        if self._announcer is not None:
            due = min(due, now + self._announcer.seconds_until_due())
        maintenance = self.db.seconds_until_maintenance()
        if maintenance is not None:
            due = min(due, now + maintenance)
        return due

    # ------------------------------------------------------------ connections

    def _accept(self) -> None:
        for sock, address in self._acceptor.accept(ACCEPT_BATCH):
            if len(self._peers) >= self.limits.max_connections:
                sock.close()
                self._note_refusal()
                continue
            try:
                conn = Connection(
                    sock, format_address(address), self.limits.max_line, self.limits.high_water
                )
            except OSError:  # reset before we got to it
                sock.close()
                continue
            peer = _Peer(conn)
            self._peers.add(peer)
            self._set_interest(peer, selectors.EVENT_READ)
            log.info("client %s connected (%d connected)", peer.name, len(self._peers))
        resume = self._acceptor.seconds_until_resume()
        if resume is not None:  # out of descriptors: housekeeping resumes accepting
            self._housekeeping_due = min(self._housekeeping_due, self.clock() + resume)

    def _note_refusal(self) -> None:
        self._refused += 1
        now = self.clock()
        if now - self._refusal_logged >= REFUSAL_LOG_INTERVAL:
            self._refusal_logged = now
            log.warning(
                "at the limit of %d connections; %d connection(s) refused since the last such message",
                self.limits.max_connections,
                self._refused,
            )
            self._refused = 0

    def _read(self, peer: _Peer) -> None:
        conn = peer.conn
        if peer.closing:
            self._discard_input(peer)
            return
        try:
            lines = conn.read_lines()
        except Closed as exc:
            if exc.__cause__ is not None:  # a failure (reset, ...): nobody to answer
                self._drop(peer, str(exc))
                return
            # A clean end of input (e.g. `nc -N` after a file of requests): the
            # requests already read still get executed and answered.
            peer.eof = True
            self._update_interest(peer)
            return
        except LineTooLong as exc:
            self._refuse_line(peer, exc)
            return
        if lines:
            peer.lines = lines
            peer.next = 0
            self._busy[peer] = None

    def _refuse_line(self, peer: _Peer, exc: LineTooLong) -> None:
        """Answers an over-long line, then closes: the rest of the stream cannot be framed."""
        log.info("client %s sent a %s; closing its connection", peer.name, exc)
        self._queue(peer, encode_reply(Outcome.invalid(f"request {exc}; closing the connection")))
        peer.closing = True
        peer.linger_until = self.clock() + LINGER
        peer.lines, peer.next = [], 0
        self._busy.pop(peer, None)

    def _discard_input(self, peer: _Peer) -> None:
        # Lingering: unread input makes the kernel reset the connection, which can
        # destroy the answer before the client reads it; so read and drop it.
        try:
            if not peer.conn.sock.recv(256 * 1024):
                self._drop(peer, "closed after an over-long line")
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._drop(peer, f"closed after an over-long line ({exc.strerror})")

    def _flush(self, peer: _Peer) -> None:
        try:
            peer.conn.flush()
        except Closed as exc:
            self._drop(peer, str(exc))
            return
        self._update_interest(peer)

    def _drop(self, peer: _Peer, reason: str | None) -> None:
        if peer not in self._peers:
            return
        self._peers.discard(peer)
        self._busy.pop(peer, None)
        if peer.job is not None:
            peer.job = None
            self._job_ended()
        if peer.mask:
            self.selector.unregister(peer.conn.sock)
        peer.conn.close()
        if reason is not None:
            log.info(
                "client %s left after %d requests: %s (%d connected)",
                peer.name,
                peer.served,
                reason,
                len(self._peers),
            )

    def _set_interest(self, peer: _Peer, mask: int) -> None:
        if mask == peer.mask:
            return
        sock = peer.conn.sock
        if not peer.mask:
            self.selector.register(sock, mask, peer)
        elif not mask:
            self.selector.unregister(sock)
        else:
            self.selector.modify(sock, mask, peer)
        peer.mask = mask

    def _update_interest(self, peer: _Peer) -> None:
        """Sets what to wait for on ``peer``, and whether it may execute, after
        its output changed."""
        conn = peer.conn
        if peer.runnable and not conn.backlogged:
            self._busy[peer] = None
        else:
            self._busy.pop(peer, None)
        mask = 0
        if conn.wants_write:
            mask = selectors.EVENT_WRITE
        elif peer.eof and not peer.has_work:
            self._drop(peer, "peer closed the connection")
            return
        elif peer.closing and not peer.shut:
            peer.shut = True  # the answer is out: tell the client we are done
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
        # Backpressure: no reading while replies pile up or requests wait.
        if peer.closing or not (conn.backlogged or peer.has_work or peer.eof):
            mask |= selectors.EVENT_READ
        self._set_interest(peer, mask)

    # ------------------------------------------------------------ execution

    def _work(self, peer: _Peer) -> None:
        """Executes ``peer``'s waiting lines until done, its slice is used, or its
        replies reach the high-water mark. A scan or query that outlasts the
        slice goes on in the next turn, before the peer's next line."""
        lines, i, end = peer.lines, peer.next, len(peer.lines)
        start, replies = self.db.start, peer.replies
        parked = False
        if not replies:
            # Listed even if a job yields no reply yet: sending updates its interest,
            # which stops reading its next lines while the job runs.
            self._turn_replies.append(peer)
        room = self.limits.high_water - peer.conn.buffered
        clock = time.monotonic
        deadline = clock() + TURN_SLICE
        done = 0
        job = peer.job
        line = b"(resumed)"
        while True:
            if job is None:
                if i == end:
                    break
                line = lines[i]
                request = parse_request(line)
                if type(request) is Request:
                    if request.method in WHOLE_TABLE_READS and self._jobs >= self._max_jobs:
                        parked = True  # this line waits (unread) for a job to end
                        break
                    i += 1
                    try:
                        outcome = start(request)
                    except Exception:
                        if request.method in MUTATIONS:
                            raise  # the table may be half-changed: crash, recover from the log
                        log.exception("executing %r from %s failed", request, peer.name)
                        outcome = _SERVER_ERROR
                    if type(outcome) is ReadJob:
                        job = outcome
                        self._jobs += 1
                else:
                    i += 1
                    outcome = request
            if job is not None:
                outcome = self._step(peer, job, deadline)
                if outcome is None:
                    break  # its slice is used; the job goes on next turn
                job = None
                self._job_ended()
            reply = encode_reply(outcome)
            if self._debug:
                log.debug("%s: %.200r -> %.200r", peer.name, line, reply)
            replies += reply
            done += 1
            room -= len(reply)
            if room <= 0 or clock() > deadline:
                break
        peer.job = job
        peer.served += done
        self.requests += done
        self._recent[peer.name] = self._recent.get(peer.name, 0) + done
        if parked:
            peer.next = i
            peer.parked = True
            self._parked.append(peer)
            del self._busy[peer]
        elif i < end:
            peer.next = i  # the rest waits for the next turn (or for the output to drain)
        else:
            peer.lines, peer.next = [], 0
            if job is None:
                del self._busy[peer]

    def _job_ended(self) -> None:
        """A scan or query ended: the longest-waiting parked peer may start its own."""
        self._jobs -= 1
        while self._parked:
            peer = self._parked.popleft()
            if peer in self._peers and peer.parked:
                peer.parked = False
                self._update_interest(peer)
                return

    def _step(self, peer: _Peer, job: ReadJob, deadline: float) -> Outcome | None:
        try:
            return job.step(deadline)
        except Exception:
            log.exception("a scan or query from %s failed", peer.name)
            return _SERVER_ERROR

    def _queue(self, peer: _Peer, reply: bytes) -> None:
        if not peer.replies:
            self._turn_replies.append(peer)
        peer.replies += reply

    def _send_replies(self) -> None:
        turn, self._turn_replies = self._turn_replies, []
        for peer in turn:
            replies = peer.replies
            peer.replies = bytearray()
            if peer not in self._peers:
                continue
            try:
                peer.conn.send(replies)
            except Closed as exc:
                self._drop(peer, str(exc))
                continue
            self._update_interest(peer)

    # ------------------------------------------------------------ housekeeping

    def _housekeeping(self) -> None:
        self.db.maintain()
        if self._announcer is not None:
            self._announcer.poll()
        self._acceptor.poll()
        now = self.clock()
        if now >= self._sweep_due:
            self._sweep_due = now + SWEEP_INTERVAL
            self._sweep(now)
        if now >= self._summary_due:
            self._summary_due = now + self._summary_interval
            self._summarize()
        self._housekeeping_due = self._next_housekeeping(self.clock())

    def _sweep(self, now: float) -> None:
        """Drops the connections that overstayed a time bound."""
        limits = self.limits
        for peer in list(self._peers):
            conn = peer.conn
            if conn.wants_write:
                if conn.buffered != peer.out_seen:
                    peer.out_seen, peer.out_since = conn.buffered, now
            else:
                peer.out_seen, peer.out_since = 0, now
            silent = now - conn.last_active
            if peer.closing:
                if now >= peer.linger_until:
                    self._drop(peer, "closed after an over-long line")
            elif now - peer.out_since > limits.request_timeout:
                self._drop(peer, f"did not read its replies for {limits.request_timeout:g} s")
            elif conn.framer.pending and silent > limits.request_timeout:
                self._drop(
                    peer, f"sent part of a request, then nothing for {limits.request_timeout:g} s"
                )
            elif (
                limits.idle_timeout is not None
                and silent > limits.idle_timeout
                and not (peer.has_work or conn.wants_write)
            ):
                self._drop(peer, f"idle for {limits.idle_timeout:g} s")

    def _summarize(self) -> None:
        """One line showing who was served (the interleaving) and what storage did."""
        recent, self._recent = self._recent, {}
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
            "requests": self.requests,
            "connections": len(self._peers),
            "uptime": int(self.clock() - self.started),
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


def format_address(address: Any) -> str:
    """``host:port`` (``[v6]:port``) for a socket address, for people."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0]).removeprefix("::ffff:")
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


def _owner() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (containers)
        return str(os.getuid())


def open_listener(host: str | None, port: int, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket. ``host`` None or "" means every interface, IPv4 and
    IPv6 when the system can. Raises ``OSError`` (e.g. address in use)."""
    if not host and socket.has_dualstack_ipv6():
        return socket.create_server(
            ("::", port), family=socket.AF_INET6, backlog=backlog, dualstack_ipv6=True
        )
    return socket.create_server((host or "0.0.0.0", port), backlog=backlog)


def raise_open_file_limit() -> int:
    """Raises the soft limit on open files to the hard limit; returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open file limit from %d: %s", soft, exc)
    return soft


def connection_capacity(requested: int | None, open_file_limit: int) -> int:
    """The connection cap: what was asked for, at most what the file limit allows."""
    allowed = max(1, open_file_limit - RESERVED_FDS)
    if requested is None:
        return min(Limits.max_connections, allowed)
    if requested > allowed:
        log.warning(
            "--max-connections %d is more than the open file limit allows; using %d",
            requested,
            allowed,
        )
        return allowed
    return requested
