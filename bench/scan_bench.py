"""Scan and query jobs: what slicing costs, and how long the loop is held at a time.

    .venv/bin/python bench/scan_bench.py [--keys 200000] [--snapshot-keys 1000000]

In-process, on ``hashtable.table`` alone (no sockets): the server runs a job a
10 ms slice per turn (``TURN_SLICE``), so a job's total time grows by what the
pauses cost, and the longest step is the longest any other client waits behind it.

  snapshot        what a job copies when it starts, at --snapshot-keys keys:
                  the two lists it takes vs list(data.items()).
  scan, query     one go (``run()``, as a single turn did before) vs 10 ms
                  slices: total time, slices, longest step.
  catastrophic    a pattern that backtracks for about 0.5 s per key: the longest
                  step is the per-key limit, not the --scan-timeout budget.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hashtable.scheduler import TURN_SLICE
from hashtable.table import KEY_TIMEOUT, ReadJob, Table
from netkit.cliargs import positive_int


def best_of(runs: int, action: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        result = action()
        best = min(best, time.perf_counter() - started)
        del result
    return best


def sliced(job: ReadJob) -> tuple[float, int, float, str]:
    """Total time, slices and the longest step of ``job`` run as the server runs it."""
    started = time.perf_counter()
    slices, longest = 0, 0.0
    while True:
        before = time.perf_counter()
        outcome = job.step(time.monotonic() + TURN_SLICE)
        longest = max(longest, time.perf_counter() - before)
        slices += 1
        if outcome is not None:
            return time.perf_counter() - started, slices, longest, outcome.status


def one_go(job: ReadJob) -> tuple[float, str]:
    started = time.perf_counter()
    outcome = job.run()
    return time.perf_counter() - started, outcome.status


def compare(name: str, make: Callable[[], ReadJob]) -> None:
    whole, status = one_go(make())
    total, slices, longest, sliced_status = sliced(make())
    print(
        f"{name:<34} one go {whole * 1000:8.1f} ms ({status})   sliced {total * 1000:8.1f} ms "
        f"({sliced_status}) x{total / whole:.2f}, {slices} slices, "
        f"longest step {longest * 1000:.1f} ms (was {whole * 1000:.1f})"
    )


def snapshot(keys: int) -> None:
    data = {f"key-{n:07d}": {"n": n % 100} for n in range(keys)}
    pairs = best_of(3, lambda: list(data.items()))
    lists = best_of(5, lambda: (list(data), list(data.values())))
    print(
        f"snapshot of {keys:,} keys: list(keys) + list(values) {lists * 1000:.1f} ms, "
        f"list(items) {pairs * 1000:.1f} ms (x{pairs / lists:.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=positive_int, default=200_000)
    parser.add_argument("--snapshot-keys", type=positive_int, default=1_000_000)
    args = parser.parse_args()

    snapshot(args.snapshot_keys)
    gc.collect()

    table = Table({f"key-{n:07d}": {"n": n % 100} for n in range(args.keys)})
    compare(f"scan '7$', {args.keys:,} keys", lambda: table.scan("7$", scan_timeout=60))
    compare(f"query n=7, {args.keys:,} keys", lambda: table.query("n", 7))
    evil = Table({"a" * 30 + f"!{n}": n for n in range(40)})
    compare(
        f"catastrophic scan, limit {KEY_TIMEOUT:g} s",
        lambda: evil.scan("^(a|aa)+$", scan_timeout=1.0, key_timeout=KEY_TIMEOUT),
    )
    compare(
        "catastrophic scan, no key limit",
        lambda: evil.scan("^(a|aa)+$", scan_timeout=1.0, key_timeout=float("inf")),
    )


if __name__ == "__main__":
    main()
