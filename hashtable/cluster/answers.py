"""Many servers' replies, one answer: what a cluster operation returns (sans-IO).

- A write is answered by each of its K replicas (the versioned results of
  docs/protocol.md); an insert returns None, a remove the value it removed
  from the replica that held the newest one, ``KeyError`` when none held any.
- A scan or query is answered by every server; each key counts once, from the
  first of its replicas that answered (its primary when it did), and a server's
  keys that do not belong on it (written there directly) are left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hashtable.errors import result_of
from hashtable.placement import key_hash
from hashtable.protocol import ProtocolError
from hashtable.request import Outcome, Status

from .clock import HybridClock


def needs_new_version(outcomes: Iterable[Outcome]) -> bool:
    """Whether a replica refused the write as older than its horizon: it was in
    flight longer than the servers keep tombstones, and is sent again as new."""
    return any(o.status is Status.FAILED and o.error == "StaleVersion" for o in outcomes)


def lost_to_newer(outcomes: Iterable[Outcome], version: list[Any], clock: HybridClock) -> bool:
    """Whether a replica held a newer version of the key than this write's ``version``
    (another client's, whose clock is ahead), moving ``clock`` past it. Its own version
    held (a write applied before, its reply forgotten) is not newer."""
    lost = False
    for outcome in outcomes:
        result = outcome.result if outcome.status is Status.OK else None
        if type(result) is dict and result.get("applied") is False:
            newer = result.get("newer")
            if newer != version and type(newer) is list and len(newer) == 2:
                clock.observe(_number(newer))
                lost = True
    return lost


def write_result(method: str, key: str, outcomes: list[Outcome], clock: HybridClock) -> Any:
    """The result of a versioned write from its replicas' outcomes; raises what
    the plain client would (``result_of``) for a refused one. Versions the
    replicas held instead (newer writes) move ``clock`` past them."""
    results = [result_of(outcome, key) for outcome in outcomes]
    removed = []
    for result in results:
        if result is None and method == "insert":
            continue  # applied once, its reply forgotten by the server (OutcomeForgotten)
        if type(result) is not dict or type(result.get("applied")) is not bool:
            raise ProtocolError(f"not the result of a versioned write: {str(result)[:80]}")
        if not result["applied"]:
            clock.observe(_number(result.get("newer")))
        elif "removed" in result:
            removed.append(result)
    if method == "insert":
        return None
    if not removed:
        raise KeyError(key)
    return max(removed, key=lambda result: _version(result.get("was")))["removed"]


def _number(version: Any) -> int:
    if type(version) is list and len(version) == 2 and type(version[0]) is int:
        return version[0]
    raise ProtocolError(f"not a version: {str(version)[:80]}")


def _version(version: Any) -> tuple[int, str]:
    """A removed value's version, for ordering; a plain (unversioned) value's is
    the oldest."""
    if version is None:
        return (0, "")
    return (_number(version), str(version[1]))


def merged_pairs(
    answers: Mapping[int, list[list[Any]]], servers: int, copies: int
) -> list[tuple[str, Any]]:
    """The (key, value) pairs of several servers' scan or query results, each key
    once (see the module)."""
    best: dict[str, tuple[int, Any]] = {}  # key -> (rank of the server it came from, value)
    primaries: dict[str, int] = {}
    for server, pairs in answers.items():
        for key, value in pairs:
            first = primaries.get(key)
            if first is None:
                first = primaries[key] = key_hash(key) % servers
            rank = (server - first) % servers
            if rank >= copies:
                continue  # not one of its replicas
            held = best.get(key)
            if held is None or rank < held[0]:
                best[key] = (rank, value)
    return [(key, value) for key, (_, value) in best.items()]


def census_size(censuses: Mapping[int, Any], servers: int, copies: int) -> int | None:
    """The number of distinct keys from every server's census (``size`` with
    ``servers``: ``[count, digest]`` per primary), when that tells: each primary's
    K replicas answered alike, so they hold the same keys, counted once. None
    otherwise (a server down, or replicas that differ for now: a write under way,
    or one whose writer gave up half way): then the keys must be listed. Keys a
    server holds for a primary it does not replicate (written there directly)
    are not counted, as in ``merged_pairs``. An answer that is not a census (a
    server that ignores ``servers`` and sends its plain size) is None too."""
    if len(censuses) != servers:
        return None
    if any(type(census) is not list or len(census) != servers for census in censuses.values()):
        return None
    total = 0
    for first in range(servers):
        count = censuses[first][first]
        if type(count) is not list or len(count) != 2 or type(count[0]) is not int:
            return None
        if any(censuses[(first + n) % servers][first] != count for n in range(1, copies)):
            return None
        total += count[0]
    return total
