"""The stages one TestPerf client runs against the service.

Keys carry a prefix unique to the client (host, process, random), so copies of
TestPerf started by hand at the same time never collide. Every stage is timed
with ``perf_counter_ns`` around each operation; nothing prints inside a timed
loop, and the checks of the answers are kept to a comparison or two.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from perftest.stats import Histogram, StageResult

STAGES = ("insert", "lookup", "scan", "query", "size", "remove")
# Scans and queries read the whole table on the server, so they are measured
# for the same time as the other stages but naturally run fewer operations.
SCAN_WIDTH = 10  # keys each scan matches
QUERY_GROUPS = 100  # distinct "tag" values per client; a query matches n/100 keys


def unique_prefix() -> str:
    return f"tp-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Workload:
    """Runs the stages with one client, checking every answer it can check cheaply."""

    def __init__(
        self,
        client: Any,
        *,
        stage_seconds: float = 1.0,
        min_ops: int = 100,
        value_size: int = 0,
        prefix: str | None = None,
    ) -> None:
        self.client = client
        self.stage_seconds = stage_seconds
        self.min_ops = min_ops
        self.prefix = prefix or unique_prefix()
        self.padding = "x" * value_size
        self.inserted = 0  # keys 0 .. inserted-1 are in the table

    def key(self, i: int) -> str:
        return f"{self.prefix}:{i:08d}"

    def value(self, i: int) -> dict[str, Any]:
        value: dict[str, Any] = {"n": i, "tag": f"{self.prefix}/{i % QUERY_GROUPS}"}
        if self.padding:
            value["pad"] = self.padding
        return value

    def warm_up(self, ops: int = 200) -> None:
        """Connects, and runs a few of each operation untimed (caches, JIT-free Python paths)."""
        warm = f"{self.prefix}:warm"
        for _ in range(ops):
            self.client.insert(warm, {"n": -1})
            self.client.lookup(warm)
        self.client.size()
        self.client.scan("^" + re.escape(warm) + "$")
        self.client.remove(warm)

    def run_stage(self, stage: str) -> StageResult:
        return getattr(self, f"_stage_{stage}")()

    def _timed(
        self, stage: str, op: Callable[[int], bool], count: int | None = None
    ) -> StageResult:
        """Runs ``op(i)`` for i = 0, 1, ... for ``stage_seconds`` (at least ``min_ops``
        times), or exactly ``count`` times; ``op`` returns False for a wrong answer."""
        latencies: list[int] = []
        record = latencies.append
        clock = time.perf_counter_ns
        errors = 0
        i = 0
        cpu_start = time.process_time()
        start = last = clock()
        deadline = start + int(self.stage_seconds * 1e9)
        while True:
            if count is not None and i >= count:
                break
            if not op(i):
                errors += 1
            now = clock()
            record(now - last)
            last = now
            i += 1
            if count is None and now >= deadline and i >= self.min_ops:
                break
        seconds = (last - start) / 1e9
        cpu_seconds = time.process_time() - cpu_start
        histogram = Histogram()
        histogram.add_many(latencies)
        return StageResult(stage, i, seconds, cpu_seconds, errors, histogram)

    def _stage_insert(self) -> StageResult:
        insert, key, value = self.client.insert, self.key, self.value

        def op(i: int) -> bool:
            insert(key(i), value(i))
            return True

        result = self._timed("insert", op)
        self.inserted = result.ops
        return result

    def _stage_lookup(self) -> StageResult:
        lookup, key, inserted = self.client.lookup, self.key, self.inserted

        def op(i: int) -> bool:
            n = i % inserted
            try:
                return lookup(key(n))["n"] == n
            except KeyError:
                return False

        return self._timed("lookup", op)

    def _stage_scan(self) -> StageResult:
        scan = self.client.scan
        groups = max(1, self.inserted // SCAN_WIDTH)
        prefix = re.escape(self.prefix)

        def op(i: int) -> bool:
            group = i % groups
            found = scan(f"^{prefix}:{group:07d}\\d$")
            return len(found) == min(SCAN_WIDTH, self.inserted - group * SCAN_WIDTH)

        return self._timed("scan", op)

    def _stage_query(self) -> StageResult:
        query, inserted = self.client.query, self.inserted

        def op(i: int) -> bool:
            tag = i % QUERY_GROUPS
            found = query("tag", f"{self.prefix}/{tag}")
            return len(found) == len(range(tag, inserted, QUERY_GROUPS))

        return self._timed("query", op)

    def _stage_size(self) -> StageResult:
        size = self.client.size

        def op(i: int) -> bool:
            return isinstance(size(), int)

        return self._timed("size", op)

    def _stage_remove(self) -> StageResult:
        remove, key = self.client.remove, self.key

        def op(i: int) -> bool:
            try:
                return remove(key(i))["n"] == i
            except KeyError:
                return False

        result = self._timed("remove", op, count=self.inserted)
        self.inserted = 0
        return result
