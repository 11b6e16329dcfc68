"""Requests to several servers at once, on the caller's thread: the cluster's I/O.

A ``Call`` is one request line for one ``Member`` (a server of the cluster:
its ``Transport`` and exactly-once ``Numbering``). ``run`` sends every call's
line without waiting (``Transport.push``), then waits on all their sockets at
once (one ``poll``) and takes each reply as it comes (``Transport.pull``): K
writes cost about one round trip, not K. No threads: a thread per replica
would cost a hand-off per request and contend for the GIL (docs/cluster.md has
the figures).

When a server fails (refused, reset, no reply within the time-out), its member
is *down* until the time its transport's backoff gives (1 s, 2 s, 4 s, ...):
reads do not wait on it meanwhile. With ``keep_trying`` the call is sent
again, the same line (so a mutation keeps its number and is applied once), as
soon as that time comes; without, it ends unanswered and the caller fails over.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable

from hashtable.errors import ServiceUnavailable
from hashtable.numbering import Numbering
from hashtable.protocol import ProtocolError, decode_reply
from hashtable.request import Outcome, Request
from hashtable.transport import RETRYABLE, Transport, describe_failure

_POLLIN, _POLLOUT = select.POLLIN, select.POLLOUT
_monotonic = time.monotonic


class Member:
    """One server of the cluster, as this client sees it."""

    __slots__ = ("index", "numbering", "retry_at", "transport")

    def __init__(self, index: int, transport: Transport, numbering: Numbering) -> None:
        self.index = index
        self.transport = transport
        self.numbering = numbering
        self.retry_at = 0.0  # time.monotonic() before which it is remembered as down

    def down(self, exc: Exception, now: float) -> None:
        """It failed: drops the connection, logs, and remembers it as down for
        its transport's next backoff delay."""
        _, delay = self.transport.retry_after(exc, None)
        self.retry_at = now + delay

    def up(self) -> None:
        if self.retry_at:
            self.retry_at = 0.0
            self.transport.backoff.reset()


class Call:
    """One request line for one member; ``outcome`` once answered."""

    __slots__ = ("deadline", "events", "failure", "line", "member", "out", "outcome", "request")

    def __init__(self, member: Member, line: bytes, request: Request | None = None) -> None:
        self.member = member
        self.line = line
        self.request = request  # a numbered mutation: ``Numbering.answered`` once replied
        self.outcome: Outcome | None = None
        self.failure: Exception | None = None  # the last failure
        self.out: bytearray | None = None  # while sent: what the socket has not taken yet
        self.deadline: float | None = None  # while sent: when it times out
        self.events = _POLLIN  # while sent: what to poll its socket for


class Patience:
    """How long one operation may go on failing (``give_up_after``; None: for ever).
    Made for every operation, so it costs nothing until a failure."""

    __slots__ = ("cluster", "give_up_after", "method", "since")

    def __init__(self, give_up_after: float | None, cluster: str, method: str) -> None:
        self.give_up_after = give_up_after
        self.cluster = cluster
        self.method = method
        self.since: float | None = None

    def failed(self, exc: Exception, now: float) -> None:
        """A failure; raises ``ServiceUnavailable`` once they have lasted too long."""
        if self.since is None:
            self.since = now
        if self.give_up_after is not None and now - self.since >= self.give_up_after:
            raise ServiceUnavailable(
                f"cluster {self.cluster!r}: {self.method} unreachable for "
                f"{self.give_up_after:g} s: {describe_failure(exc)}"
            ) from exc

    def next_try(self, member: Member, now: float) -> float:
        """When this operation tries ``member`` next: once its backoff is over,
        or when it is time to give up. That last try, as ``Transport.retry_after``
        makes it, is what ends the operation: members are shared by every
        operation, so their backoff may run past any one operation's time.
        Waiting on a member remembered as down counts as failing."""
        if member.retry_at <= now:
            return member.retry_at
        if self.since is None:
            self.since = now
        if self.give_up_after is None:
            return member.retry_at
        return min(member.retry_at, self.since + self.give_up_after)

    def due(self, member: Member, now: float) -> bool:
        return self.next_try(member, now) <= now

    @staticmethod
    def sleep_until(when: float) -> None:
        delay = when - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def run(calls: list[Call], patience: Patience, *, keep_trying: bool) -> None:
    """Sends every call and waits for the replies; see the module. Returns when
    every call has an outcome, or (without ``keep_trying``) has failed once. One
    call per member. Long because it is the one loop over all the sockets; it
    keeps one ``poll`` registration per call in flight, across its turns, since
    this is every cluster operation's hot path."""
    poller = select.poll()
    flying: dict[int, Call] = {}  # fd -> a call sent and awaiting its reply
    # Once failures have lasted too long, the calls not tried yet (their server
    # remembered as down) still get their one try, and those in flight their
    # reply, before the operation gives up: a write is then on every replica up.
    given_up: list[ServiceUnavailable] = []

    def failed(call: Call, exc: Exception, now: float) -> None:
        try:
            _failed(call, exc, patience, now)
        except ServiceUnavailable as unavailable:
            given_up.append(unavailable)

    try:
        now = _monotonic()
        while True:
            retry_at = None  # the earliest time a call not in flight may be sent
            for call in calls:
                if call.deadline is not None or call.outcome is not None:
                    continue
                if call.failure is not None and (not keep_trying or given_up):
                    continue
                next_try = patience.next_try(call.member, now)
                if next_try <= now:
                    _send(call, failed)
                    if call.deadline is not None:
                        fd = call.member.transport.sock.fileno()  # type: ignore[union-attr]
                        flying[fd] = call
                        poller.register(fd, call.events)
                        continue
                    if not keep_trying:
                        continue
                    next_try = patience.next_try(call.member, now)  # it failed: later
                if retry_at is None or next_try < retry_at:
                    retry_at = next_try
            if not flying:
                if retry_at is None:
                    if given_up and any(call.outcome is None for call in calls):
                        raise given_up[0]
                    return
                patience.sleep_until(retry_at)
                now = _monotonic()
                continue
            until = min(call.deadline for call in flying.values())  # type: ignore[type-var]
            if retry_at is not None and retry_at < until:
                until = retry_at
            for fd, _ in poller.poll(max(0.0, until - now) * 1000):  # type: ignore[operator]
                call = flying[fd]
                events = call.events
                try:
                    _receive(call)
                except RETRYABLE as exc:
                    failed(call, exc, _monotonic())
                if call.deadline is None:  # answered, failed, or to be sent again
                    del flying[fd]
                    poller.unregister(fd)
                elif call.events != events:
                    poller.modify(fd, call.events)
            now = _monotonic()
            if now >= until:
                for fd, call in list(flying.items()):
                    if now >= call.deadline:  # type: ignore[operator]
                        del flying[fd]
                        poller.unregister(fd)
                        timeout = call.member.transport.timeout
                        failure = TimeoutError(f"no reply within {timeout:g} s")
                        failed(call, failure, now)
            if not flying and all(call.outcome is not None for call in calls):
                return
    except BaseException:
        # Interrupted, or given up: replies may still come on these connections,
        # and must not be taken for the next requests'.
        for call in calls:
            if call.deadline is not None:
                call.member.transport.disconnect()
        raise


def _send(call: Call, failed: Callable[[Call, Exception, float], None]) -> None:
    transport = call.member.transport
    call.failure = None
    try:
        transport.connected()  # blocking: finding the server, connecting, TLS
        call.out = out = bytearray(call.line)
        transport.push(out)
    except RETRYABLE as exc:
        failed(call, exc, _monotonic())
        return
    # Read after the connect, which may have blocked: the reply gets its whole time-out.
    call.deadline = _monotonic() + transport.timeout
    call.events = _POLLIN | _POLLOUT if out or transport.sending else _POLLIN


def _receive(call: Call) -> None:
    transport = call.member.transport
    if call.events & _POLLOUT:
        transport.push(call.out)  # type: ignore[arg-type]
        if not (call.out or transport.sending):
            call.events = _POLLIN
    transport.pull()
    lines = transport.lines
    if not lines:
        return
    if len(lines) > 1:
        raise ProtocolError("the server sent a reply to no request")
    outcome = decode_reply(lines.popleft())
    call.deadline = call.out = None
    call.member.up()
    if call.request is not None:
        outcome = call.member.numbering.answered(call.request, outcome)
        if outcome is None:  # the server forgot this session: sent again under a new one
            call.line = call.member.numbering.encode(call.request)
            return
    call.outcome = outcome


def _failed(call: Call, exc: Exception, patience: Patience, now: float) -> None:
    call.failure = exc
    call.deadline = call.out = None
    call.member.down(exc, now)
    patience.failed(exc, now)
