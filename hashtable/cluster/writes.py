"""A versioned write's replies from its K replicas, and what the writer does next (sans-IO).

Each replica answers a versioned write as docs/protocol.md says: applied (a remove
saying what it removed, or the tombstone it found), or refused as older than the
version it holds (``newer``, with the value it holds, none for a tombstone). Then:

- **Refused by every replica**: the write took effect nowhere; a newer write (by a
  writer whose clock is ahead) holds the key. It is sent again after the newest
  version seen, as a new write, so that a write that returns has taken effect.
- **Refused by some, applied by others**: the write overlapped a newer one that
  reached those replicas first (or whose writer gave up half way). It is not sent
  again: that would apply it twice, bringing back a value a concurrent remove had
  returned. The replicas that took it are brought to the newest write instead
  (``repair``: that write's value or tombstone, under its own version), so that
  all end alike, the newer write last; except where both states are tombstones,
  the key absent already (``behind``).
- A remove returns the value the newest of its replicas' earlier states held, or
  ``KeyError`` when that state was a tombstone (another remove took the value
  first) or nothing.
- **Refused for want of memory** (a replica at its ``--max-memory``) while others
  took it: that replica is waited for like one that is down (``out_of_memory``).
  Refused so by every replica, the write took effect nowhere: that is its answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hashtable.errors import result_of
from hashtable.memory_limit import OUT_OF_MEMORY
from hashtable.protocol import ProtocolError
from hashtable.request import Outcome, Request, Status

from .clock import HybridClock


def out_of_memory(outcome: Outcome | None) -> bool:
    """Whether a replica refused the write for want of memory (docs/protocol.md)."""
    return (
        outcome is not None and outcome.status is Status.FAILED and outcome.error == OUT_OF_MEMORY
    )


def needs_new_version(outcomes: Iterable[Outcome]) -> bool:
    """Whether a replica refused the write as older than its horizon: it was in
    flight longer than the servers keep tombstones, and is sent again as new."""
    return any(o.status is Status.FAILED and o.error == "StaleVersion" for o in outcomes)


def refusals(outcomes: Iterable[Outcome], version: list[Any], clock: HybridClock) -> list[dict]:
    """The replies that refused the write as older than what a replica held, moving
    ``clock`` past each version seen. Its own version held (the write applied
    before, its reply forgotten) is no refusal."""
    refused = []
    for outcome in outcomes:
        result = outcome.result if outcome.status is Status.OK else None
        if type(result) is dict and result.get("applied") is False:
            newer = result.get("newer")
            if newer != version:
                clock.observe(_number(newer))
                refused.append(result)
    return refused


def newest(refused: list[dict]) -> dict:
    return max(refused, key=lambda result: _version(result["newer"]))


def repair(key: str, newer: dict) -> Request:
    """The write that brings a replica to the newer write a refusal named: its
    value under its version, or its tombstone."""
    if "value" in newer:
        return Request("insert", key, newer["value"], version=newer["newer"])
    return Request("remove", key, version=newer["newer"])


def behind(method: str, outcome: Outcome, newer: dict) -> bool:
    """Whether the replica that gave ``outcome`` must be brought to ``newer``: it holds
    an older state (this write, which it took or whose reply is unknown, or an older
    refusal's), and one of the two is a value. Two tombstones are left alone: the key
    is absent on both already, and the newer remove, if still under way, must find
    the older one's tombstone to know it took nothing."""
    result = outcome.result if outcome.status is Status.OK else None
    if type(result) is dict and result.get("applied") is False:
        older = _version(result.get("newer")) < _version(newer["newer"])
        holds_value = "value" in result
    else:
        older, holds_value = True, method == "insert"
    return older and (holds_value or "value" in newer)


def write_result(
    method: str, key: str, outcomes: list[Outcome], own: list[list[Any]], clock: HybridClock
) -> Any:
    """The result of a versioned write from its replicas' outcomes in every round
    it was sent (``own``: the versions it was sent with); raises what the plain
    client would (``result_of``) for a refused one. Versions the replicas held
    instead (newer writes) move ``clock`` past them."""
    results = [result_of(outcome, key) for outcome in outcomes]
    earlier = []  # what a remove found: (version, held a value, the value)
    for result in results:
        if result is None and method == "insert":
            continue  # applied once, its reply forgotten by the server (OutcomeForgotten)
        if type(result) is not dict or type(result.get("applied")) is not bool:
            raise ProtocolError(f"not the result of a versioned write: {str(result)[:80]}")
        if not result["applied"]:
            clock.observe(_number(result.get("newer")))
        elif "removed" in result:
            earlier.append((_version(result.get("was")), True, result["removed"]))
        elif result.get("was") is not None and result["was"] not in own:
            earlier.append((_version(result["was"]), False, None))  # another remove's
    if method == "insert":
        return None
    if not earlier:
        raise KeyError(key)
    _, held_value, value = max(earlier, key=lambda state: state[0])
    if not held_value:
        raise KeyError(key)  # removed by a remove before this one
    return value


def _number(version: Any) -> int:
    if type(version) is list and len(version) == 2 and type(version[0]) is int:
        return version[0]
    raise ProtocolError(f"not a version: {str(version)[:80]}")


def _version(version: Any) -> tuple[int, str]:
    """A version, for ordering; a plain (unversioned) value's is the oldest."""
    if version is None:
        return (0, "")
    return (_number(version), str(version[1]))
