"""The writers' ledgers and the durability checker, sans-IO.

A writer (chaos/writer.py) owns its keys and runs one mutation at a time. Before
sending one it appends a ``send`` line to its ledger; once the reply is in its
hands, an ``ack`` line. So at any instant (a server kill, say) each writer has
acknowledged a prefix of its mutations and has at most one more in flight.

The checker replays each ledger on a model and compares a table's state with it:
every key must hold its last acknowledged value (or be absent after an
acknowledged remove), except that the one mutation in flight may or may not
have been applied. Anything else is an acknowledged write lost (or undone).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

ABSENT: Any = object()  # a key that is not in the table


@dataclass(frozen=True)
class Mutation:
    index: int  # the writer's own count, 0, 1, 2, ...
    method: str  # "insert" or "remove"
    key: str
    value: Any = None  # for an insert

    def apply(self, state: dict[str, Any]) -> None:
        if self.method == "insert":
            state[self.key] = self.value
        else:
            state.pop(self.key, None)


def send_line(mutation: Mutation) -> bytes:
    return _line("send", mutation)


def ack_line(mutation: Mutation) -> bytes:
    """What a writer logs once the mutation's reply arrived: (key, value, index)."""
    return _line("ack", mutation)


def wrong_line(index: int, detail: str) -> bytes:
    """A reply that contradicts the writer's own model (e.g. a remove applied twice)."""
    return orjson.dumps({"wrong": index, "detail": detail}, option=orjson.OPT_APPEND_NEWLINE)


def _line(kind: str, mutation: Mutation) -> bytes:
    record = {kind: mutation.index, "method": mutation.method, "key": mutation.key}
    if mutation.method == "insert":
        record["value"] = mutation.value
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


class LedgerError(ValueError):
    """A ledger that no correct writer could have written."""


@dataclass
class Ledger:
    """One writer's history as read so far, kept up to date by ``feed``: what its
    acknowledged mutations left in the table, and the mutation in flight."""

    name: str
    sent: int = 0  # mutations sent
    acked: int = 0  # ... of which acknowledged (all but the one in flight)
    in_flight: Mutation | None = None
    state: dict[str, Any] = field(default_factory=dict)  # after the acknowledged ones
    keys: set[str] = field(default_factory=set)  # every key it ever wrote
    wrong: list[str] = field(default_factory=list)
    lines: int = 0

    def feed(self, data: bytes) -> int:
        """Reads the complete lines of ``data``; returns how many bytes that was
        (a last line without its newline is being written, and is left)."""
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            self.lines += 1
            try:
                self._record(orjson.loads(line))
            except (orjson.JSONDecodeError, KeyError, TypeError, LedgerError) as exc:
                raise LedgerError(f"{self.name}, line {self.lines}: {exc}") from None
        return end

    def _record(self, record: dict[str, Any]) -> None:
        if "send" in record:
            mutation = _mutation(record, "send")
            if mutation.index != self.sent or self.in_flight is not None:
                raise LedgerError(f"send {mutation.index} out of order")
            self.sent += 1
            self.in_flight = mutation
            self.keys.add(mutation.key)
        elif "ack" in record:
            mutation = _mutation(record, "ack")
            if self.in_flight != mutation:
                raise LedgerError(f"ack {mutation.index} of a mutation not in flight")
            mutation.apply(self.state)
            self.acked += 1
            self.in_flight = None
        elif "wrong" in record:
            self.wrong.append(f"op {record['wrong']}: {record['detail']}")
        else:
            raise LedgerError("unknown record")


def parse_ledger(name: str, data: bytes) -> Ledger:
    """A ledger from its whole text."""
    ledger = Ledger(name)
    ledger.feed(data)
    return ledger


def _mutation(record: dict[str, Any], kind: str) -> Mutation:
    method = record["method"]
    if method not in ("insert", "remove") or not isinstance(record["key"], str):
        raise LedgerError(f"not a mutation: {record}")
    return Mutation(record[kind], method, record["key"], record.get("value"))


@dataclass
class Verdict:
    """What a table's state says about the writes the ledgers describe."""

    acknowledged: int = 0  # acknowledged mutations checked
    in_flight: int = 0  # mutations in flight
    in_flight_applied: int = 0  # ... of which the table shows the effect
    lost: list[str] = field(default_factory=list)  # acknowledged changes missing
    strays: list[str] = field(default_factory=list)  # keys no writer wrote

    @property
    def ok(self) -> bool:
        return not (self.lost or self.strays)


def check(state: Mapping[str, Any], ledgers: Iterable[Ledger], namespace: str = "") -> Verdict:
    """Compares ``state`` (key -> value) with what the ledgers acknowledged.

    Keys starting with ``namespace`` that no ledger mentions are strays: a value
    from nowhere. Lost writes are described key by key.
    """
    verdict = Verdict()
    known: set[str] = set()
    for ledger in ledgers:
        known |= ledger.keys
        expected = ledger.state
        verdict.acknowledged += ledger.acked
        pending = ledger.in_flight
        if pending is not None:
            verdict.in_flight += 1
            after = dict(expected)
            pending.apply(after)
        for key in sorted(ledger.keys):
            actual = state.get(key, ABSENT)
            if _same(actual, expected.get(key, ABSENT)):
                continue
            if pending is not None and pending.key == key and _same(actual, after.get(key, ABSENT)):
                verdict.in_flight_applied += 1
                continue
            verdict.lost.append(
                f"{ledger.name}: {key} holds {_show(actual)}, "
                f"last acknowledged {_show(expected.get(key, ABSENT))}"
            )
    verdict.strays = sorted(k for k in state if k.startswith(namespace) and k not in known)
    return verdict


def _same(a: Any, b: Any) -> bool:
    if a is ABSENT or b is ABSENT:
        return a is b
    return a == b


def _show(value: Any) -> str:
    if value is ABSENT:
        return "nothing"
    if isinstance(value, dict):  # a writer's value: its padding says nothing
        value = {k: v for k, v in value.items() if k != "pad"}
    return orjson.dumps(value).decode()[:80]
