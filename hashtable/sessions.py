"""Exactly-once bookkeeping: the outcomes of clients' recent mutations.

A client names itself (``client``) and numbers its mutations 1, 2, 3, ...
(``seq``); ``ack`` says it holds the replies of all its mutations up to that
number. For each client this keeps the outcomes of mutations above ``ack``, so
that a retried mutation is answered with its first outcome instead of being
applied again.

Only ``record`` changes the state, and the database calls it exactly when it
logs a mutation (live and in replay alike), so replaying the log rebuilds the
same sessions, eviction order included. Answering a retry changes nothing.

Memory is bounded (``SessionLimits``); what is evicted can no longer be
answered, and such a retry is refused rather than applied twice:
- outcomes at or below a client's ``ack`` are dropped;
- beyond ``max_outcomes_per_client`` unacknowledged outcomes, the oldest go;
- beyond ``max_clients`` clients or ``max_outcomes`` outcomes in all, the least
  recently active client loses its outcomes but not its number: the highest seq
  it had applied is kept (``max_forgotten`` of them, least recently active out
  first, each about 100 bytes). Its next mutation is applied as usual and its
  session comes back; a retry of one it had applied is refused with
  ``OutcomeForgotten`` (applied once, its reply no longer held).
- A client the server knows nothing of (never seen, or forgotten twice over) may
  only start with seq 1; a later seq is refused with ``SessionUnknown``, not
  applied, and the client starts a new session (a new id, seq 1) and sends it
  again. The one gap: a retry of a mutation already applied, after the client
  was forgotten twice over between the two (``max_clients + max_forgotten``
  other clients active meanwhile), is applied again.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hashtable.protocol import decode_outcome, encode_outcome
from hashtable.request import Outcome


@dataclass(frozen=True)
class SessionLimits:
    max_clients: int = 100_000
    max_outcomes_per_client: int = 10_000
    max_outcomes: int = 1_000_000
    max_forgotten: int = 1_000_000  # clients whose highest applied seq is kept, without outcomes

    def __post_init__(self) -> None:
        if not 1 <= self.max_outcomes_per_client <= self.max_outcomes or self.max_clients < 1:
            raise ValueError("session limits need 1 <= per client <= total, and clients >= 1")


def _hash(client: str) -> int:
    """64 bits of a client id: what is kept of a forgotten client (a collision needs
    ~2**32 of them; the ids are random)."""
    return int.from_bytes(hashlib.blake2b(client.encode(), digest_size=8).digest(), "big")


class _Session:
    __slots__ = ("floor", "outcomes")

    def __init__(self, floor: int = 0) -> None:
        self.floor = floor  # retries at or below it are forgotten: acknowledged or evicted
        self.outcomes: OrderedDict[int, Outcome] = OrderedDict()  # seq -> outcome, oldest first


class Sessions:
    """The clients' sessions, least recently active first."""

    def __init__(self, limits: SessionLimits | None = None) -> None:
        self.limits = limits or SessionLimits()
        self._clients: OrderedDict[str, _Session] = OrderedDict()
        self._outcomes = 0
        # Forgotten clients: a hash of the id -> the highest seq it had applied, oldest first.
        self._forgotten: OrderedDict[int, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    @property
    def outcomes(self) -> int:
        return self._outcomes

    @property
    def forgotten(self) -> int:
        return len(self._forgotten)

    def earlier(self, client: str, seq: int) -> Outcome | None:
        """The answer to a mutation already seen (its first outcome, or a refusal), else None."""
        session = self._clients.get(client)
        if session is None:
            highest = self._forgotten.get(_hash(client))
            if highest is not None:
                if seq > highest:
                    return None  # a new mutation: applied, and the session comes back
                return Outcome.failed(
                    "OutcomeForgotten",
                    f"seq {seq} was applied once, but its outcome is no longer held; "
                    "not applied again",
                )
            if seq == 1:
                return None
            return Outcome.failed(
                "SessionUnknown",
                f"unknown session {client!r}: seq {seq} was not applied; start a new session "
                "(a new client id, numbering from 1) and send it again",
            )
        outcome = session.outcomes.get(seq)
        if outcome is not None:
            return outcome
        if seq <= session.floor:
            return Outcome.invalid(
                f"seq {seq} is acknowledged or too old: the server no longer holds its "
                "outcome; not applied again"
            )
        return None

    def record(self, client: str, seq: int, ack: int, outcome: Outcome) -> None:
        """Remembers the outcome of a new mutation; drops what ``ack`` releases and what is over bounds."""
        clients = self._clients
        session = clients.get(client)
        if session is None:
            floor = self._forgotten.pop(_hash(client), 0) if self._forgotten else 0
            session = clients[client] = _Session(floor)
        else:
            clients.move_to_end(client)
        outcomes = session.outcomes
        if ack > session.floor:
            session.floor = ack
            while outcomes and next(iter(outcomes)) <= ack:
                outcomes.popitem(last=False)
                self._outcomes -= 1
        if seq not in outcomes:
            self._outcomes += 1
        outcomes[seq] = outcome
        if len(outcomes) > self.limits.max_outcomes_per_client:
            oldest, _ = outcomes.popitem(last=False)
            session.floor = max(session.floor, oldest)
            self._outcomes -= 1
        while len(clients) > self.limits.max_clients or self._outcomes > self.limits.max_outcomes:
            forgotten_id, forgotten = clients.popitem(last=False)
            self._outcomes -= len(forgotten.outcomes)
            self._forget(_hash(forgotten_id), max(forgotten.floor, *forgotten.outcomes, 0))

    def _forget(self, key: int, highest: int) -> None:
        self._forgotten[key] = highest
        while len(self._forgotten) > self.limits.max_forgotten:
            self._forgotten.popitem(last=False)

    def rows(self) -> Iterator[dict[str, Any]]:
        """One JSON-ready row per client, least recently active first (for checkpoints):
        the forgotten ones (by hash), then those with sessions."""
        for key, highest in self._forgotten.items():
            yield {"client": f"#{key:016x}", "floor": highest, "outcomes": [], "forgotten": True}
        for client, session in self._clients.items():
            yield {
                "client": client,
                "floor": session.floor,
                "outcomes": [[seq, encode_outcome(o)] for seq, o in session.outcomes.items()],
            }

    def restore(self, row: Any) -> None:
        """Appends a row made by ``rows()`` as the most recently active; ValueError when malformed."""
        if not isinstance(row, dict):
            raise ValueError("a session row must be an object")
        client, floor, outcomes = row.get("client"), row.get("floor"), row.get("outcomes")
        if not isinstance(client, str) or type(floor) is not int or not isinstance(outcomes, list):
            raise ValueError("a session row needs 'client', 'floor' and 'outcomes'")
        if row.get("forgotten") is True:
            try:
                key = int(client.removeprefix("#"), 16)
            except ValueError:
                raise ValueError("a forgotten client's row needs its hash as '#hex'") from None
            self._forget(key, floor)
            return
        if client in self._clients:
            raise ValueError(f"session {client!r} appears twice")
        session = _Session(floor)
        for item in outcomes:
            if not isinstance(item, list) or len(item) != 2 or type(item[0]) is not int:
                raise ValueError("a session outcome must be [seq, outcome]")
            session.outcomes[item[0]] = decode_outcome(item[1])
        self._clients[client] = session
        self._outcomes += len(session.outcomes)
