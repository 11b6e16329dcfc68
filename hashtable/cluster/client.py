"""The cluster client: one table spread over N servers, K copies of each key.

    with ClusterClient("alice", 3, 2) as table:     # servers alice-0, alice-1, alice-2
        table.insert("zebra", {"weight": 100})       # on 2 of them, written at once
        table.lookup("zebra")                        # from one of the 2
        table.size()                                 # every key once

The servers are ordinary hash table servers (``HashTableServer.py NAME-i``)
that know nothing of each other, each found through the catalog. Where a key
lives is ``hashtable.placement``; how replicas stay identical is the
versioned writes (``hashtable.cluster.clock``, docs/cluster.md).
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

from hashtable.client import client_secret
from hashtable.errors import (
    InvalidRequestError,
    ServerError,
    ServiceUnavailable,
    result_of,
)
from hashtable.names import project_problem
from hashtable.numbering import Numbering
from hashtable.placement import covered, key_hash, replicas
from hashtable.protocol import encode_request
from hashtable.request import MAX_SERVERS, Outcome, Request, Status, argument_problem
from hashtable.transport import DEFAULT_TIMEOUT, Transport
from netkit.backoff import Backoff

from .answers import census_size, merged_pairs
from .clock import HybridClock
from .fanout import Call, Member, Patience, run
from .pipeline import ClusterPipeline
from .writes import (
    behind,
    needs_new_version,
    newest,
    out_of_memory,
    refusals,
    repair,
    write_result,
)

MAX_REISSUES = 8  # times a write that lost to newer versions on every replica is sent again
# Times a write refused as older than a server's horizon is sent again with a new
# version: once is the usual case (it was in flight for longer than the servers'
# version window); more means this client's clock is that far behind the server's.
MAX_RESTAMPS = 3
# How often a write taken by some replicas is sent again to one out of memory.
ROOM_BACKOFF = (0.05, 2.0)

log = logging.getLogger("hashtable.client")


class ClusterClient:
    """A table kept by the servers ``NAME-0`` ... ``NAME-(N-1)``, ``K`` copies
    of each key (``1 <= K <= N``).

    The options are ``HashTableClient``'s, for every server: ``catalog``,
    ``secret_file``/``auth``, ``timeout`` (seconds to wait for one server),
    ``backoff_initial``/``backoff_cap`` (how long a failed server is left alone
    before it is tried again: 1 s, 2 s, 4 s, ... up to the cap) and
    ``give_up_after`` (seconds an operation may go on failing before it raises
    ``ServiceUnavailable``; by default it waits for ever). ``addresses``: the
    N servers' ``(host, port)``, in order, instead of the catalog.

    Reads ask one replica (in turn, so they spread over the K) and fail over to
    the next at once; writes go to all K at the same time and return when all K
    hold them. A client is for one thread at a time.
    """

    def __init__(
        self,
        name: str,
        servers: int | None = None,
        copies: int | None = None,
        *,
        catalog: str | None = None,
        addresses: list[tuple[str, int]] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        backoff_initial: float = 1.0,
        backoff_cap: float = 30.0,
        give_up_after: float | None = None,
        secret_file: str | Path | None = None,
        auth: bool = True,
    ) -> None:
        if type(name) is not str or not name:
            raise ValueError("the cluster's name must be a non-empty string")
        if servers is None and addresses is not None:
            servers = len(addresses)
        if servers is None or copies is None:
            raise ValueError(
                "a cluster needs N (servers) and K (copies of each key): ClusterClient(NAME, N, K)"
            )
        check_shape(servers, copies)
        last = f"{name}-{servers - 1}"  # the longest of its servers' project names
        if addresses is None and (problem := project_problem(last)):
            raise ValueError(f"cluster {name!r}: its server {problem}")
        if addresses is not None and len(addresses) != servers:
            raise ValueError(f"{len(addresses)} addresses for {servers} servers")
        secret = client_secret(secret_file, auth)
        self.name = name
        self.servers: int = servers  # type: ignore[assignment]
        self.copies = copies
        self.give_up_after = give_up_after
        self._clock = HybridClock()
        self._turn = 0  # which replica the next read asks first
        # The writer id in every version: one on every server (each server's session
        # has an id of its own, ``Numbering``'s, which a server that forgot it renews).
        self._id = uuid.uuid4().hex
        self._members = [
            Member(
                index,
                Transport(
                    None if addresses else f"{name}-{index}",
                    address=addresses[index] if addresses else None,
                    catalog=catalog,
                    timeout=timeout,
                    backoff_initial=backoff_initial,
                    backoff_cap=backoff_cap,
                    secret=secret,
                ),
                Numbering(),
            )
            for index in range(servers)  # type: ignore[arg-type]
        ]
        # primary -> its K members, in order: a key's replicas are one look-up away.
        self._replica_sets = [
            [self._members[(first + n) % servers] for n in range(copies)]
            for first in range(servers)  # type: ignore[arg-type]
        ]

    @property
    def client_id(self) -> str:
        """The random id in this client's write versions, on every server."""
        return self._id

    @property
    def timeout(self) -> float:
        return self._members[0].transport.timeout

    def where(self, key: str) -> list[int]:
        """The servers (0 .. N-1) holding ``key``, its primary first."""
        return replicas(key, self.servers, self.copies)

    # ------------------------------------------------------------ operations

    def insert(self, key: str, value: Any) -> None:
        """Sets ``key`` to ``value`` on its K servers; returns when all K hold it."""
        self._write(Request("insert", key, value))

    def lookup(self, key: str) -> Any:
        """The value of ``key`` from one of its servers; ``KeyError`` if there is none."""
        return self._read_key(Request("lookup", key))

    def remove(self, key: str) -> Any:
        """Removes ``key`` from its K servers and returns its value; ``KeyError``
        if there is none."""
        return self._write(Request("remove", key))

    def scan(self, regex: str) -> list[tuple[str, Any]]:
        """The ``(key, value)`` pairs whose key ``regex`` matches (``re.search``)."""
        return self._execute(Request("scan", regex=regex))

    def query(self, subkey: str, subvalue: Any) -> list[tuple[str, Any]]:
        """The ``(key, value)`` pairs whose value is an object with ``subkey == subvalue``."""
        return self._execute(Request("query", subkey=subkey, subvalue=subvalue))

    def size(self) -> int:
        """The number of distinct keys: from every server's census when all answer
        and each key's replicas agree (docs/cluster.md); otherwise the keys are
        listed and counted, each once."""
        try:
            censuses = self._read_all(Request("size", servers=self.servers), need_all=True)
        except InvalidRequestError:  # a server without censuses (another implementation)
            censuses = None
        counted = census_size(censuses, *self._shape) if censuses is not None else None
        if counted is not None:
            return counted
        listed = self._read_all(Request("scan", regex=""), for_method="size")
        return len(merged_pairs(listed, *self._shape))

    def pipeline(self) -> ClusterPipeline:
        """Requests queued and run together (``HashTableClient.pipeline``'s interface)."""
        return ClusterPipeline(self)

    def close(self) -> None:
        """Closes every connection; the next call opens new ones."""
        for member in self._members:
            member.transport.disconnect()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ClusterClient {self.name!r} N={self.servers} K={self.copies}>"

    # ------------------------------------------------------------ requests

    @property
    def _shape(self) -> tuple[int, int]:
        return self.servers, self.copies

    def _execute(self, request: Request) -> Any:
        """Any request, by its method (what a pipeline queued)."""
        method = request.method
        if method in ("insert", "remove"):
            return self._write(request)
        if method == "lookup":
            return self._read_key(request)
        if method == "size":
            return self.size()
        return merged_pairs(self._read_all(request), *self._shape)

    def _replicas_of(self, request: Request) -> list[Member]:
        if type(request.key) is not str:  # no placement: the servers' own answer
            # But first TypeError, as from HashTableClient, for what JSON cannot carry.
            encode_request(request)
            raise InvalidRequestError(argument_problem(request))
        return self._replica_sets[key_hash(request.key) % self.servers]

    def _write(self, request: Request) -> Any:
        """A versioned write to all the key's replicas at once (docs/cluster.md;
        what the replies lead to: ``hashtable.cluster.writes``)."""
        targets = self._replicas_of(request)
        patience = Patience(self.give_up_after, self.name, request.method)
        own: list[list[Any]] = []  # the versions it was sent with
        earlier: list[Outcome] = []  # what it did in rounds sent again
        reissued = restamped = 0
        while True:
            version = [self._clock.next(), self._id]
            own.append(version)
            calls = [self._call(member, request, version) for member in targets]
            run(calls, patience, keep_trying=True)
            # Refused by every replica for want of memory, it took effect nowhere,
            # unless a round before this one (sent again as stale) was taken.
            self._until_room(request, version, calls, patience, all_must=bool(earlier))
            outcomes: list[Outcome] = [call.outcome for call in calls]  # type: ignore[misc]
            if needs_new_version(outcomes) and restamped < MAX_RESTAMPS:
                restamped += 1
                earlier += [o for o in outcomes if o.status is Status.OK]
                continue  # (past MAX_RESTAMPS, write_result raises the servers' refusal)
            refused = refusals(outcomes, version, self._clock)
            if refused and len(refused) == len(outcomes):
                # Newer everywhere: another writer's clock is ahead of ours. Sent again
                # after it, so that a write that returns has taken effect; bounded, for
                # writers racing on one key.
                if reissued == MAX_REISSUES:
                    raise ServerError(
                        f"{request.method} of {request.key!r}: newer writes of the key took "
                        f"its place {MAX_REISSUES + 1} times in a row (writers racing on it)"
                    )
                reissued += 1
                continue
            if refused:  # applied on some: those are brought to the newer write
                self._repair(request, targets, outcomes, newest(refused), patience)
            return write_result(request.method, request.key, earlier + outcomes, own, self._clock)

    def _call(self, member: Member, request: Request, version: list[Any]) -> Call:
        numbered = Request(request.method, request.key, request.value, version=version)
        return Call(member, member.numbering.encode(numbered), numbered)

    def _repair(
        self,
        request: Request,
        targets: list[Member],
        outcomes: list[Outcome],
        newer: dict,
        patience: Patience,
    ) -> None:
        """The newer write ``newer`` names, to the replicas that may hold less."""
        fix = repair(request.key, newer)  # type: ignore[arg-type]
        calls = [
            self._call(member, fix, fix.version)  # type: ignore[arg-type]
            for member, outcome in zip(targets, outcomes, strict=True)
            if behind(request.method, outcome, newer)
        ]
        if calls:
            run(calls, patience, keep_trying=True)
            self._until_room(fix, fix.version, calls, patience, all_must=True)  # type: ignore[arg-type]

    def _until_room(
        self,
        request: Request,
        version: list[Any],
        calls: list[Call],
        patience: Patience,
        *,
        all_must: bool,
    ) -> None:
        """The calls refused for want of memory (a replica at its --max-memory) are
        sent again, with the same version so that each applies once, until they are
        taken or the write gives up (``give_up_after``): a full replica is waited for
        like one that is down. Unless every replica refused and not ``all_must``:
        then the write took effect nowhere, and the refusal is its answer."""
        backoff = Backoff(*ROOM_BACKOFF)
        while True:
            full = [n for n, call in enumerate(calls) if out_of_memory(call.outcome)]
            if not full or (len(full) == len(calls) and not all_must):
                return
            refusal = calls[full[0]].outcome.message  # type: ignore[union-attr]
            if backoff.attempts == 0:
                servers = ", ".join(f"{self.name}-{calls[n].member.index}" for n in full)
                log.warning("cluster %r: %s: %s; waiting for room", self.name, servers, refusal)
            patience.failed(ServerError(refusal), time.monotonic())
            time.sleep(backoff.next_delay())
            for n in full:
                calls[n] = self._call(calls[n].member, request, version)
            run([calls[n] for n in full], patience, keep_trying=True)

    def _read_key(self, request: Request) -> Any:
        """One replica's answer, trying them in turn from this read's first."""
        targets = self._replicas_of(request)
        first = self._turn % len(targets)
        self._turn += 1
        order = targets[first:] + targets[:first]
        line = encode_request(request)
        patience = Patience(self.give_up_after, self.name, request.method)
        while True:
            now = time.monotonic()
            member = next((m for m in order if patience.due(m, now)), None)
            if member is None:  # all remembered as down: wait for the first to be due
                patience.sleep_until(min(patience.next_try(m, now) for m in order))
                continue
            call = Call(member, line)
            try:
                run([call], patience, keep_trying=False)
            except ServiceUnavailable:
                # Given up; but a replica skipped as down (its backoff from an earlier
                # operation) may be due by now: each such one gets a last try.
                now = time.monotonic()
                order = [m for m in order if m is not member and m.retry_at <= now]
                if not order:
                    raise
                continue
            if call.outcome is not None:
                return result_of(call.outcome, request.key)

    def _read_all(
        self, request: Request, need_all: bool = False, for_method: str | None = None
    ) -> dict[int, Any] | None:
        """Every server's result, asked at once; servers that fail are left out
        once the others hold a copy of every key (``placement.covered``), and
        waited for otherwise. ``need_all``: None as soon as one fails instead
        (the caller has another way). ``for_method``: the operation a failure names."""
        line = encode_request(request)
        patience = Patience(self.give_up_after, self.name, for_method or request.method)
        results: dict[int, Any] = {}
        while True:
            now = time.monotonic()
            calls = [
                Call(member, line)
                for member in self._members
                if member.index not in results and patience.due(member, now)
            ]
            run(calls, patience, keep_trying=False)
            for call in calls:
                if call.outcome is not None:
                    results[call.member.index] = result_of(call.outcome)
            if len(results) == self.servers:
                return results
            if need_all:
                return None
            if covered(set(results), *self._shape):
                return results
            now = time.monotonic()
            left = [patience.next_try(m, now) for m in self._members if m.index not in results]
            patience.sleep_until(min(left))


def check_shape(servers: Any, copies: Any) -> None:
    """N and K as the course states them: ``1 <= K <= N``; N at most ``MAX_SERVERS``
    (a connection and a census entry per server)."""
    if type(servers) is not int or not 1 <= servers <= MAX_SERVERS:
        raise ValueError(
            f"N (the number of servers) must be a whole number from 1 to {MAX_SERVERS}, "
            f"not {servers!r}"
        )
    if type(copies) is not int or not 1 <= copies <= servers:
        raise ValueError(
            f"K (the copies of each key) must be a whole number with 1 <= K <= N = {servers}, "
            f"not {copies!r}"
        )
