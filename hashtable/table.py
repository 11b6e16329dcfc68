"""The table's operations on an in-memory dict.

Pure functions of the dict: no logging, no persistence, no sessions, no
argument checks (requests arrive checked: ``hashtable.request.validate``). The
same code serves live requests and log replay, which is what makes replay
deterministic.
"""

from __future__ import annotations

import math
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import regex

from hashtable.patterns import compile_pattern, pattern_problem
from hashtable.placement import key_hash
from hashtable.request import OK_NONE, Outcome, Status

_SHOWN_KEY_CHARS = 80  # keys may be megabytes long; messages show a prefix
# The longest one key's regex search may take: no search holds the loop longer.
KEY_TIMEOUT = 0.05
_OK = Status.OK
_DIGEST_MASK = 2**64 - 1

# A versioned write's version: (number, writer id), ordered as a tuple. Written
# [number, "writer"] in requests, replies, checkpoints and docs/protocol.md.
Version = tuple[int, str]
APPLIED = Outcome.ok({"applied": True})


def describe_key(key: str) -> str:
    """The key as shown in messages: quoted, and cut when long."""
    if len(key) <= _SHOWN_KEY_CHARS:
        return repr(key)
    return f"{key[:_SHOWN_KEY_CHARS]!r}... ({len(key)} characters)"


def _missing(key: str) -> Outcome:
    return Outcome.failed("KeyError", f"no such key: {describe_key(key)}")


def _wire(version: Version | None) -> list[Any] | None:
    """A version as JSON carries it: [number, "writer"]."""
    return None if version is None else [version[0], version[1]]


def _same_json(stored: Any, wanted: Any) -> bool:
    # JSON equality: true is not 1 (Python says True == 1), but 1 equals 1.0.
    return stored == wanted and isinstance(stored, bool) == isinstance(wanted, bool)


class Table:
    """The key-value dict and the operations of the protocol on it.

    Change it through ``insert``, ``remove`` and their versioned forms only: they
    count the changes, and reads that visit the whole table share one snapshot
    until the next change.

    A key written with a version (docs/cluster.md) has it in ``versions``; a key
    removed with one leaves a tombstone, its version in ``tombstones`` (oldest
    first, roughly: see ``purge_tombstones``), and is absent for every read. A
    key is in at most one of the two. A plain write clears both: plain and
    versioned writes to the same key are not meant to be mixed.
    """

    __slots__ = ("_census", "_changes", "_snapshot", "data", "tombstones", "versions")

    def __init__(
        self,
        data: dict[str, Any] | None = None,
        versions: dict[str, Version] | None = None,
        tombstones: dict[str, Version] | None = None,
    ) -> None:
        self.data: dict[str, Any] = {} if data is None else data
        self.versions: dict[str, Version] = versions or {}
        # Ordered: purged from the front, and a key tombstoned again moves to the end.
        self.tombstones: OrderedDict[str, Version] = OrderedDict(tombstones or {})
        self._changes = 0
        # The latest snapshot, while a read job still holds it (weak: not kept for nobody).
        self._snapshot: tuple[int, weakref.ref[Snapshot]] | None = None
        self._census: tuple[int, int, list[list[Any]]] | None = None  # (changes, N, counts)

    def insert(self, key: str, value: Any) -> Outcome:
        self.data[key] = value
        self._changes += 1
        if self.versions or self.tombstones:
            self._forget_version(key)
        return OK_NONE

    def _forget_version(self, key: str) -> None:
        self.versions.pop(key, None)
        self.tombstones.pop(key, None)

    # ---- versioned writes (the cluster's replicas) ------------------------------

    def held(self, key: str) -> Version | None:
        """The version of what the table holds for ``key`` (a value or a tombstone)."""
        return self.versions.get(key) or self.tombstones.get(key)

    def insert_versioned(self, key: str, value: Any, version: Version) -> Outcome:
        """Sets ``key`` unless the table holds a version at least as new; then nothing
        changes, and the result names that newer version."""
        held = self.held(key)
        if held is not None and held >= version:
            return self._refusal(key, held)
        self.tombstones.pop(key, None)
        self.data[key] = value
        self.versions[key] = version
        self._changes += 1
        return APPLIED

    def remove_versioned(self, key: str, version: Version) -> Outcome:
        """Removes ``key`` and leaves a tombstone of ``version``, even when the key
        is absent (the insert it removes may come later, and must then change
        nothing); nothing changes if the table holds a version at least as new.
        The result says what was removed, with that value's version (None for a
        plain one), or the tombstone's version when the key was already removed."""
        held = self.held(key)
        if held is not None and held >= version:
            return self._refusal(key, held)
        tombstones = self.tombstones
        earlier = tombstones.pop(key, None)  # moved to the end: the newest
        tombstones[key] = version
        if key not in self.data:
            # A tombstone's version says the key was removed by then: the remove that
            # removed it, not this one, returned its value.
            return (
                APPLIED if earlier is None else Outcome.ok({"applied": True, "was": _wire(earlier)})
            )
        value = self.data.pop(key)
        was = self.versions.pop(key, None)
        self._changes += 1
        return Outcome.ok({"applied": True, "removed": value, "was": _wire(was)})

    def _refusal(self, key: str, held: Version) -> Outcome:
        """Refused as older: the newer version held, and with it the value (none for
        a tombstone), so that a writer whose write other replicas applied can bring
        them to this one (docs/cluster.md)."""
        result = {"applied": False, "newer": _wire(held)}
        if key in self.versions:
            result["value"] = self.data[key]
        return Outcome.ok(result)

    def purge_tombstones(self, horizon: int) -> int:
        """Forgets the tombstones older than ``horizon`` (a version number) from the
        front, stopping at the first newer one: one that arrived late with an old
        version is kept a little longer, which is always safe. Returns how many."""
        tombstones = self.tombstones
        purged = 0
        while tombstones:
            key = next(iter(tombstones))
            if tombstones[key][0] >= horizon:
                break
            del tombstones[key]
            purged += 1
        return purged

    def lookup(self, key: str) -> Outcome:
        try:
            return Outcome(_OK, self.data[key])  # not Outcome.ok(): one call fewer, hot path
        except KeyError:
            return _missing(key)

    def remove(self, key: str) -> Outcome:
        try:
            value = self.data.pop(key)
        except KeyError:
            return _missing(key)
        self._changes += 1
        if self.versions:
            self.versions.pop(key, None)
        return Outcome.ok(value)

    def snapshot(self) -> Snapshot:
        """The table as of now, shared with every job that started since the last change."""
        if self._snapshot is not None:
            changes, ref = self._snapshot
            snapshot = ref()
            if snapshot is not None and changes == self._changes:
                return snapshot
        snapshot = Snapshot(self.data)
        self._snapshot = (self._changes, weakref.ref(snapshot))
        return snapshot

    def size(self) -> Outcome:
        return Outcome.ok(len(self.data))

    def census(self, servers: int, scan_timeout: float = math.inf) -> Outcome | ReadJob:
        """``size`` by placement over a cluster of ``servers`` (hashtable.placement):
        for each primary P, ``[count, digest]`` of the keys held here whose primary
        is P, the digest the sum of their H(key) mod 2**64 as 16 hex digits. Two
        replicas with the same pair for P hold the same keys of P (but for a 64-bit
        collision), which a cluster client checks before counting them once
        (docs/cluster.md). A pass over the keys, answered from memory until the
        next change."""
        cached = self._census
        if cached is not None and cached[0] == self._changes and cached[1] == servers:
            return Outcome.ok(cached[2])
        changes, counts, sums = self._changes, [0] * servers, [0] * servers

        def count(key: str, value: Any, timeout: float) -> bool:
            h = key_hash(key)
            counts[h % servers] += 1
            sums[h % servers] += h
            return False

        def finish(found: list[list[Any]]) -> list[list[Any]]:
            result = [
                [n, f"{total & _DIGEST_MASK:016x}"] for n, total in zip(counts, sums, strict=True)
            ]
            self._census = (changes, servers, result)
            return result

        return ReadJob(
            self.snapshot(), count, slow="size", scan_timeout=scan_timeout, finish=finish
        )

    def scan(
        self, pattern: str, scan_timeout: float, key_timeout: float = KEY_TIMEOUT
    ) -> Outcome | ReadJob:
        """A job giving ``[key, value]`` pairs whose key the pattern matches anywhere
        (``search``), or the invalid outcome of a bad pattern.

        The pattern's size is bounded first (``hashtable.patterns``: compiling is
        not under any timeout). The whole scan gets ``scan_timeout`` seconds of
        searching and one key at most ``key_timeout``, so a pattern that backtracks forever costs the
        server that long once, and holds the loop no longer than ``key_timeout``
        at a time.
        """
        problem = pattern_problem(pattern)
        if problem is not None:
            return Outcome.invalid(problem)
        try:
            compiled = compile_pattern(pattern)
        except regex.error as error:
            return Outcome.invalid(f"invalid regex: {error}")
        except (RecursionError, MemoryError, OverflowError, ValueError) as error:
            # Deeply nested or enormous patterns fail inside the compiler itself.
            return Outcome.invalid(f"invalid regex: {type(error).__name__}")
        search = compiled.search

        def matches(key: str, value: Any, timeout: float) -> bool:
            return search(key, timeout=timeout) is not None

        return ReadJob(
            self.snapshot(),
            matches,
            slow="scan stopped: the regex",
            scan_timeout=scan_timeout,
            key_timeout=key_timeout,
        )

    def query(self, subkey: str, subvalue: Any) -> ReadJob:
        """A job giving ``[key, value]`` pairs whose value is an object holding
        ``subkey`` == ``subvalue``."""

        def matches(key: str, value: Any, timeout: float) -> bool:
            return type(value) is dict and subkey in value and _same_json(value[subkey], subvalue)

        return ReadJob(self.snapshot(), matches, slow="query")


class Snapshot:
    """A table's keys and values as of one moment, for the reads that visit them all.

    Two C-level copies, aligned because nothing runs in between: about 30 ms for
    a million keys, where ``list(data.items())`` allocates a tuple per key and
    takes 20 times as long (bench/scan_bench.py). Values are replaced by
    inserts, never changed in place, so the lists keep the table as of now.
    """

    __slots__ = ("__weakref__", "keys", "values")

    def __init__(self, data: dict[str, Any]) -> None:
        self.keys = list(data)
        self.values = list(data.values())

    def __len__(self) -> int:
        return len(self.keys)


class ReadJob:
    """A read that visits every item (scan, query, a census), run a slice at a time.

    It works on a snapshot taken when it starts, so its result is the table as of
    that moment whatever is written while it runs, and ``step`` returns by its
    deadline so that the server can serve other clients between slices.
    ``scan_timeout`` bounds the job's running time in total, ``key_timeout`` one
    item's test (which raises ``TimeoutError`` past the time it is given);
    running out of either ends the job with an invalid outcome saying that
    ``slow`` took too long.
    """

    __slots__ = (
        "_finish",
        "_found",
        "_items",
        "_key_timeout",
        "_scan_timeout",
        "_slow",
        "_spent",
        "_test",
        "snapshot",
    )

    def __init__(
        self,
        snapshot: Snapshot,
        test: Callable[[str, Any, float], bool],
        *,
        slow: str,
        scan_timeout: float = math.inf,
        key_timeout: float = math.inf,
        finish: Callable[[list[list[Any]]], Any] | None = None,
    ) -> None:
        self.snapshot = snapshot  # held while the job runs: jobs started meanwhile share it
        self._items = zip(snapshot.keys, snapshot.values, strict=True)
        self._test = test
        self._slow = slow
        self._scan_timeout = scan_timeout
        self._key_timeout = key_timeout
        self._spent = 0.0
        self._found: list[list[Any]] = []
        self._finish = finish  # the result from what was found (default: the pairs)

    def step(self, deadline: float) -> Outcome | None:
        """Advances until ``deadline`` (``time.monotonic``), at least one item;
        returns the outcome when done, else None (call again)."""
        clock = time.monotonic
        test, found, key_timeout = self._test, self._found, self._key_timeout
        started = now = clock()
        left = self._scan_timeout - self._spent
        for key, value in self._items:
            remaining = left - (now - started)
            limit = key_timeout if key_timeout < remaining else remaining
            try:
                if limit <= 0:
                    raise TimeoutError
                if test(key, value, limit):
                    found.append([key, value])
            except TimeoutError:
                if limit < key_timeout:
                    return Outcome.invalid(
                        f"{self._slow} took longer than {self._scan_timeout:g} s over the table"
                    )
                return Outcome.invalid(
                    f"{self._slow} took longer than {key_timeout:g} s on one key "
                    f"({describe_key(key)})"
                )
            now = clock()
            if now >= deadline:
                self._spent += now - started
                return None
        return Outcome.ok(found if self._finish is None else self._finish(found))

    def run(self) -> Outcome:
        """The outcome, in one go."""
        outcome = None
        while outcome is None:
            outcome = self.step(math.inf)
        return outcome
