"""The LS's logic, sans-IO: queries in, forwarded queries and answers out.

The event loop (``lb.lserver``) owns the sockets and tells a ``Balancer`` what
happened: a client's lines, a TS's lines, a TS connecting or going away, time
passing. The balancer queues the bytes to send, per peer, which the loop
collects with ``take_output()``. Peers are whatever hashable objects the loop
uses for its clients and TSs (their ``str`` appears in the logs).

Each query gets an id, unique in this LS, that goes to every connected TS with
the name. The first answer carrying that id is the answer; later ones, and any
after the time-out, are dropped. A client's answers leave in the order of its
queries: an answered query waits for the earlier ones of the same client, which
all have earlier deadlines, so the wait is at most one time-out.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from lb.protocol import (
    answer_name,
    decode_ts_answer,
    encode_ts_query,
    fold,
    invalid_answer,
    name_problem,
    query_name,
    timed_out_answer,
)

log = logging.getLogger("lb.balancer")

Peer = Hashable


@dataclass(slots=True, eq=False)
class Query:
    id: int
    client: Peer
    name: bytes
    started: float
    answer: bytes | None = None


@dataclass(slots=True)
class Stats:
    answered: int = 0
    timed_out: int = 0
    invalid: int = 0
    ignored: int = 0  # answers that came late, or after another TS's


class Balancer:
    """Matches the answers of the TSs to the queries of the clients."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.stats = Stats()
        self._ids = itertools.count(1)
        # Queries not answered yet, by id, in the order they came.
        self._pending: dict[int, Query] = {}
        # (deadline, id); entries of answered queries stay until they come up.
        self._deadlines: list[tuple[float, int]] = []
        # Per client, its queries not yet sent back, oldest first.
        self._clients: dict[Peer, deque[Query]] = {}
        self._servers: dict[Peer, None] = {}
        self._out: dict[Peer, list[bytes]] = {}

    # Clients

    def open_client(self, client: Peer) -> None:
        self._clients[client] = deque()

    def close_client(self, client: Peer) -> None:
        """Forgets a client that went away, and its queries."""
        for query in self._clients.pop(client, ()):
            self._pending.pop(query.id, None)
        self._out.pop(client, None)

    def client_lines(self, client: Peer, lines: Iterable[bytes], now: float) -> None:
        """Takes a client's query lines: each goes to every TS, or is answered at
        once if it is not a host name. Blank lines are not queries."""
        queue = self._clients[client]
        forwards = []
        for line in lines:
            name = query_name(line)
            if name is None:
                continue
            query = Query(next(self._ids), client, name, now)
            queue.append(query)
            problem = name_problem(name)
            if problem:
                log.warning("query %d from %s is not a host name (%s)", query.id, client, problem)
                self.stats.invalid += 1
                query.answer = invalid_answer(name, problem)
                continue
            self._pending[query.id] = query
            heapq.heappush(self._deadlines, (now + self.timeout, query.id))
            forwards.append(encode_ts_query(query.id, name))
        if forwards:
            for server in self._servers:
                self._out.setdefault(server, []).extend(forwards)
        self._release(client)

    def client_error(self, client: Peer, answer: bytes) -> None:
        """Queues an error line for a client after its pending answers, e.g. when it
        sent a line too long to read on from."""
        self._clients[client].append(Query(0, client, b"", 0.0, answer))
        self._release(client)

    def unanswered(self, client: Peer) -> int:
        """How many of a client's queries have not been sent back yet."""
        return len(self._clients.get(client, ()))

    # TSs

    def open_server(self, server: Peer) -> None:
        """A TS is connected: it gets every query still waiting, so that one that
        comes up (or back) during a query's time-out can still answer it."""
        self._servers[server] = None
        if self._pending:
            self._out.setdefault(server, []).extend(
                encode_ts_query(query.id, query.name) for query in self._pending.values()
            )

    def close_server(self, server: Peer) -> None:
        self._servers.pop(server, None)
        self._out.pop(server, None)

    def server_lines(self, server: Peer, lines: Iterable[bytes], now: float) -> int:
        """Takes a TS's answer lines; returns how many answered a waiting query."""
        answered_before = self.stats.answered
        touched = set()
        for line in lines:
            decoded = decode_ts_answer(line)
            if decoded is None:
                log.warning("TS %s sent a line that is not an answer: %.100r", server, line)
                continue
            query_id, answer = decoded
            query = self._pending.get(query_id)
            if query is None:
                self.stats.ignored += 1
                log.info(
                    "answer from TS %s to query %d ignored: answered or timed out already",
                    server,
                    query_id,
                )
                continue
            if fold(answer_name(answer)) != fold(query.name):
                log.warning(
                    "TS %s answered query %d (%s) about another name: %.100r",
                    server,
                    query_id,
                    _text(query.name),
                    answer,
                )
                continue
            del self._pending[query_id]
            query.answer = answer
            self.stats.answered += 1
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "query %d %s from %s answered by TS %s in %.1f ms",
                    query_id,
                    _text(query.name),
                    query.client,
                    server,
                    (now - query.started) * 1000,
                )
            touched.add(query.client)
        for client in touched:
            self._release(client)
        return self.stats.answered - answered_before

    # Time

    def expire(self, now: float) -> None:
        """Answers ``NAME - TIMED OUT`` to the queries whose time is up."""
        deadlines = self._deadlines
        touched = set()
        while deadlines and deadlines[0][0] <= now:
            _, query_id = heapq.heappop(deadlines)
            query = self._pending.pop(query_id, None)
            if query is None:
                continue  # answered already, or its client left
            query.answer = timed_out_answer(query.name)
            self.stats.timed_out += 1
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "query %d %s from %s: no TS answered in %g s",
                    query_id,
                    _text(query.name),
                    query.client,
                    self.timeout,
                )
            touched.add(query.client)
        for client in touched:
            self._release(client)

    def next_deadline(self) -> float | None:
        """When ``expire`` next has work, or None if no query is waiting."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][1] not in self._pending:
            heapq.heappop(deadlines)
        return deadlines[0][0] if deadlines else None

    # Output

    def take_output(self) -> dict[Peer, bytes]:
        """The bytes to send, per peer, since the last call."""
        out, self._out = self._out, {}
        return {peer: b"".join(chunks) for peer, chunks in out.items() if chunks}

    def _release(self, client: Peer) -> None:
        """Queues the client's answers that are next in its order."""
        queue = self._clients.get(client)
        if not queue:
            return
        ready = []
        while queue and queue[0].answer is not None:
            ready.append(queue.popleft().answer + b"\n")
        if ready:
            self._out.setdefault(client, []).extend(ready)


def _text(name: bytes) -> str:
    return name.decode(errors="backslashreplace")
