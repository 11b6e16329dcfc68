"""Many servers' replies, one answer: what a cluster read returns (sans-IO; a
write's are ``hashtable.cluster.writes``').

- A scan or query is answered by every server; each key counts once, from the
  first of its replicas that answered (its primary when it did), and a server's
  keys that do not belong on it (written there directly) are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hashtable.placement import key_hash


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
