"""Who runs what, when: the hash table server's per-client scheduling, sans-IO.

The server (``hashtable.server``) moves bytes; this module decides everything
else, and is tested without sockets (tests/test_scheduler.py):

- each client's request lines wait here until it is that client's turn;
- a turn runs each client with work for one slice (``TURN_SLICE``) or until its
  replies would pass the high-water mark, so that a client pipelining slow
  requests cannot hold the others back for long;
- a scan, query or census is a job over a snapshot, run a slice per turn, before that
  client's next line; at most ``max_scans`` run at once and the client whose
  next line is one more waits, parked, first come first served;
- each client's connection goes through explicit phases (``Phase``): open;
  draining after its end of input (answer everything, then close); refusing
  after a line too long to frame (answer it, half-close, then linger reading
  and dropping input so that the answer is not destroyed by a reset);
- what to wait for on each connection (``Interest``), and when a connection
  has overstayed a time bound (``overstayed``).

The replies of a turn are collected per client and handed back; the server
sends them only after the turn's group commit.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from hashtable.protocol import MAX_REQUEST_VALUES, encode_reply, is_http_request, parse_request
from hashtable.request import MUTATIONS, WHOLE_TABLE_READS, Outcome, Request
from hashtable.table import ReadJob
from netkit.connection import DEFAULT_HIGH_WATER
from netkit.framing import DEFAULT_MAX_LINE

log = logging.getLogger("hashtable.server")

READ, WRITE = 1, 2  # the same values as selectors.EVENT_READ / EVENT_WRITE
# A client gets this much execution time per turn while others wait.
TURN_SLICE = 0.010
# After refusing a line, how long the server waits for the client to close first.
LINGER = 2.0

_SERVER_ERROR = Outcome.failed("ServerError", "internal error while reading; see the server log")

Start = Callable[[Request], "Outcome | ReadJob"]


@dataclass(frozen=True)
class Limits:
    """What one client may cost. Documented in docs/protocol.md; each field is
    the server option of the same name (``--max-request-bytes``, ...)."""

    max_request_bytes: int = DEFAULT_MAX_LINE  # bytes in one request line
    max_request_values: int = MAX_REQUEST_VALUES  # JSON values in one (hashtable.protocol)
    high_water: int = DEFAULT_HIGH_WATER  # queued reply bytes before the server stops reading
    max_connections: int = 10_000
    # Connections not yet authenticated, in all and from one address; past these the
    # oldest give way to newcomers (hashtable.admission), the authenticated keep theirs.
    max_unauthenticated: int = 1024
    max_unauthenticated_per_source: int = 256
    request_timeout: float = 60.0  # a partial request or unread replies making no progress
    idle_timeout: float | None = 300.0  # an authenticated connection with nothing going on
    # Scans and queries under way at once; each may hold a snapshot of the table
    # (jobs started between two writes share one). More wait for one to end.
    max_scans: int = 8
    handshake_timeout: float = 5.0  # a TLS handshake not complete by then is dropped


class Phase(Enum):
    HANDSHAKING = "handshaking"  # TLS: proving the secret; no request can come yet
    OPEN = "open"  # reading requests and answering them
    DRAINING = "draining"  # the client's input ended: answer what it sent, then close
    REFUSING = "refusing"  # a line could not be framed: its answer goes out, then a half-close
    LINGERING = "lingering"  # half-closed after refusing: read and drop until the client closes


# The phases as plain names: looking a member up through its Enum class costs
# about 140 ns on CPython 3.11, and the hot path does it several times a request.
HANDSHAKING, OPEN, DRAINING = Phase.HANDSHAKING, Phase.OPEN, Phase.DRAINING
REFUSING, LINGERING = Phase.REFUSING, Phase.LINGERING


class Interest(NamedTuple):
    """What the server should do with a connection now."""

    events: int  # READ and/or WRITE to wait for
    shut_down: bool = False  # half-close our side (once)
    close: str | None = None  # close the connection, for this reason


_READ_ONLY = Interest(READ)


class Client:
    """One client's scheduling state. The server's peer objects subclass it."""

    __slots__ = (
        "heard",
        "job",
        "lines",
        "linger_until",
        "name",
        "next",
        "out_seen",
        "out_since",
        "parked",
        "phase",
        "queued",
        "refusal",
        "replies",
        "served",
        "since",
    )

    def __init__(self, name: str, phase: Phase = OPEN, since: float = 0.0) -> None:
        self.name = name
        self.phase = phase
        self.since = since  # when it connected
        self.heard = False  # any request line received yet
        self.lines: list[bytes] = []  # request lines read and not yet executed
        self.next = 0  # index of the next line to execute
        self.job: ReadJob | None = (
            None  # a scan, query or census under way; later lines wait for it
        )
        self.parked = False  # its next line is a scan, query or census waiting for a job slot
        self.replies = bytearray()  # this turn's replies, sent after the commit
        self.refusal: bytes | None = None  # the last reply, once the lines before it are done
        self.queued = 0  # reply bytes the server has not got out yet (set by the server)
        self.served = 0
        self.linger_until = 0.0
        self.out_seen = 0  # output progress, for the request timeout
        self.out_since = 0.0

    @property
    def has_work(self) -> bool:
        return self.job is not None or self.next < len(self.lines)

    @property
    def runnable(self) -> bool:
        return self.has_work and not self.parked


class Scheduler:
    """Runs the clients' requests through ``start`` (the database's), in turns."""

    def __init__(self, start: Start, limits: Limits = Limits(), clock=time.monotonic) -> None:
        self.start = start
        self.limits = limits
        self.clock = clock
        self.busy: dict[Client, None] = {}  # clients with lines to execute, in arrival order
        self.jobs = 0  # scans, queries and censuses under way
        self.parked: deque[Client] = deque()  # waiting for one of them to end, oldest first
        self.requests = 0
        self.recent: dict[str, int] = {}  # requests per client since the last summary
        self._replied: list[Client] = []
        self._debug = log.isEnabledFor(logging.DEBUG)

    # ------------------------------------------------------------ input

    def received(self, client: Client, lines: list[bytes]) -> str | None:
        """Request lines from ``client``; they run in its next turns. Returns why
        the connection must be closed instead, or None: a connection whose first
        line is an HTTP request (a web page making a browser send one) gets
        nothing executed at all, as Redis does."""
        if client.phase is not OPEN or not lines:
            return None
        if not client.heard:
            client.heard = True
            if is_http_request(lines[0]):
                return "sent an HTTP request"
        if client.next < len(client.lines):
            client.lines = client.lines[client.next :] + lines
        else:
            client.lines = lines
        client.next = 0
        if not client.parked:
            self.busy[client] = None
        return None

    def authenticated(self, client: Client) -> None:
        """The client's TLS handshake is complete: its requests may come."""
        if client.phase is HANDSHAKING:
            client.phase = OPEN

    def turn_away(self, client: Client) -> None:
        """The server answered an unusable connection with a last line of its own
        (written directly): half-close, then linger as after a refusal."""
        client.phase = LINGERING
        client.linger_until = self.clock() + LINGER
        client.lines, client.next = [], 0
        self.busy.pop(client, None)

    def end_of_input(self, client: Client) -> None:
        """The client will send nothing more: answer what it sent, then close."""
        if client.phase is OPEN:
            client.phase = DRAINING

    def refuse_line(self, client: Client, lines: list[bytes], problem: str) -> None:
        """The client sent a line too long to frame: ``lines`` (the complete ones
        before it) are still answered, then the refusal, and the connection
        closes once that is out (nothing after it can be framed)."""
        log.info("client %s sent a %s; closing its connection", client.name, problem)
        self.received(client, lines)
        refusal = encode_reply(Outcome.invalid(f"request {problem}; closing the connection"))
        client.phase = REFUSING
        client.linger_until = self.clock() + LINGER
        if client.has_work:
            client.refusal = refusal  # after the lines before it
        else:
            self._queue(client, refusal)

    def left(self, client: Client) -> None:
        """The client is gone: it holds no job slot and no place in line."""
        self.busy.pop(client, None)
        if client.job is not None:
            client.job = None
            self._job_ended()
        client.parked = False  # skipped when its turn in the parking queue comes

    # ------------------------------------------------------------ execution

    def run(self) -> list[Client]:
        """One turn: runs every busy client once; returns the clients with replies
        (``client.replies``), which must wait for the turn's commit."""
        for client in list(self.busy):
            self._run(client)
        replied, self._replied = self._replied, []
        return replied

    def _run(self, client: Client) -> None:
        """Executes ``client``'s waiting lines until done, its slice is used, or its
        replies reach the high-water mark. A scan or query that outlasts the
        slice goes on in the next turn, before the client's next line.

        Long because it is the server's hot path: one loop, locals only."""
        lines, i, end = client.lines, client.next, len(client.lines)
        start, replies = self.start, client.replies
        parked = False
        if not replies:
            # Listed even if a job yields no reply yet: its interest must be updated,
            # which stops reading its next lines while the job runs.
            self._replied.append(client)
        room = self.limits.high_water - client.queued
        clock = time.monotonic
        deadline = clock() + TURN_SLICE
        done = 0
        job = client.job
        line = b"(resumed)"
        while True:
            if job is None:
                if i == end:
                    break
                line = lines[i]
                request = parse_request(line, self.limits.max_request_values)
                if type(request) is Request:
                    if (
                        request.method in WHOLE_TABLE_READS or request.servers is not None
                    ) and self.jobs >= self.limits.max_scans:
                        parked = True  # this line waits (unread) for a job to end
                        break
                    i += 1
                    try:
                        outcome = start(request)
                    except Exception:
                        if request.method in MUTATIONS:
                            raise  # the table may be half-changed: crash, recover from the log
                        log.exception("executing %r from %s failed", request, client.name)
                        outcome = _SERVER_ERROR
                    if type(outcome) is ReadJob:
                        job = outcome
                        self.jobs += 1
                else:
                    i += 1
                    outcome = request
            if job is not None:
                outcome = _step(client, job, deadline)
                if outcome is None:
                    break  # its slice is used; the job goes on next turn
                job = None
                self._job_ended()
            reply = encode_reply(outcome)
            if self._debug:
                log.debug("%s: %.200r -> %.200r", client.name, line, reply)
            replies += reply
            done += 1
            room -= len(reply)
            if room <= 0 or clock() > deadline:
                break
        client.job = job
        client.served += done
        self.requests += done
        self.recent[client.name] = self.recent.get(client.name, 0) + done
        if parked:
            client.next = i
            client.parked = True
            self.parked.append(client)
            del self.busy[client]
        elif i < end:
            client.next = i  # the rest waits for the next turn (or for the output to drain)
        else:
            client.lines, client.next = [], 0
            if job is None:
                del self.busy[client]
                if client.refusal is not None:  # its last reply
                    replies += client.refusal
                    client.refusal = None

    def _job_ended(self) -> None:
        """A scan, query or census ended: the longest-waiting parked client may start its own."""
        self.jobs -= 1
        while self.parked:
            client = self.parked.popleft()
            if client.parked:
                client.parked = False
                self.busy[client] = None
                return

    def _queue(self, client: Client, reply: bytes) -> None:
        if not client.replies:
            self._replied.append(client)
        client.replies += reply

    # ------------------------------------------------------------ connections

    def interest(self, client: Client, wants_write: bool, backlogged: bool) -> Interest:
        """What to wait for on ``client``'s connection now that its output changed
        (``wants_write``: output is queued; ``backlogged``: past the high-water
        mark), and whether it may execute."""
        if (
            client.phase is OPEN
            and not wants_write
            and client.job is None
            and client.next >= len(client.lines)
        ):
            # The usual case after a reply went out whole: nothing to run, read on.
            self.busy.pop(client, None)
            return _READ_ONLY
        if client.runnable and not backlogged:
            self.busy[client] = None
        else:
            self.busy.pop(client, None)
        phase = client.phase
        events = 0
        shut_down = False
        if wants_write:
            events = WRITE
        elif phase is DRAINING and not client.has_work:
            return Interest(0, close="peer closed the connection")
        elif phase is REFUSING and not client.has_work:
            client.phase = phase = LINGERING  # the answer is out: tell the client we are done
            shut_down = True
        # Backpressure: no reading while replies pile up or requests wait. A
        # refusing connection reads (and drops) input until the client closes.
        if phase in (REFUSING, LINGERING) or not (
            backlogged or client.has_work or phase is DRAINING
        ):
            events |= READ
        return Interest(events, shut_down)

    def overstayed(
        self, client: Client, now: float, queued: int, partial: int, silent: float
    ) -> str | None:
        """Why ``client``'s connection should be dropped now, or None.

        ``queued``: reply bytes not yet taken by the socket; ``partial``: bytes of
        a request line begun and not finished; ``silent``: seconds since it last
        sent anything.
        """
        limits = self.limits
        if queued:
            if queued != client.out_seen:
                client.out_seen, client.out_since = queued, now
        else:
            client.out_seen, client.out_since = 0, now
        if client.phase in (REFUSING, LINGERING):
            return "closed after its last answer" if now >= client.linger_until else None
        if client.phase is HANDSHAKING:
            if now - client.since > limits.handshake_timeout:
                return f"did not complete the TLS handshake in {limits.handshake_timeout:g} s"
            return None
        if now - client.out_since > limits.request_timeout:
            return f"did not read its replies for {limits.request_timeout:g} s"
        if partial and silent > limits.request_timeout:
            return f"sent part of a request, then nothing for {limits.request_timeout:g} s"
        if (
            limits.idle_timeout is not None
            and silent > limits.idle_timeout
            and not (client.has_work or queued)
        ):
            return f"idle for {limits.idle_timeout:g} s"
        return None

    def take_recent(self) -> dict[str, int]:
        """Requests per client since the last call (for the summary line)."""
        recent, self.recent = self.recent, {}
        return recent


def _step(client: Client, job: ReadJob, deadline: float) -> Outcome | None:
    try:
        return job.step(deadline)
    except Exception:
        log.exception("a scan, query or census from %s failed", client.name)
        return _SERVER_ERROR
