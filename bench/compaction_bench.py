"""Engine benchmark: does write cost stay flat as the table grows, and how long is the fork pause?

    .venv/bin/python bench/compaction_bench.py [--large 1000000] [--writes 200000]

For a small and a large table it times durable inserts through the engine
alone (no network): batches of ``--batch`` inserts, one commit (fsync) per
batch, maintain() after each batch as the server loop does, so compactions and
their forks are paid inside the measurement. It prints throughput, the longest
and 99th-percentile turn (what a request behind a compaction waits at most),
the ratio large/small (target >= 0.8), the fork pause with the large table, and
its recovery time.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hashtable.database import Database
from hashtable.request import Request
from netkit.cliargs import nonempty_path, positive_int


def preload(db: Database, keys: int) -> None:
    for start in range(0, keys, 100_000):
        for i in range(start, min(keys, start + 100_000)):
            db.execute(Request("insert", key=f"key{i}", value={"n": i, "name": f"item {i}"}))
        db.commit()


def timed_writes(db: Database, keys: int, writes: int, batch: int) -> dict:
    turns = []
    started = time.perf_counter()
    for done in range(0, writes, batch):
        turn_start = time.perf_counter()
        for i in range(done, done + batch):
            key = f"key{i * 7919 % keys}"  # overwrites spread over the whole table
            db.execute(Request("insert", key=key, value={"n": i, "name": f"item {i}"}))
        db.commit()
        db.maintain()
        turns.append(time.perf_counter() - turn_start)
    elapsed = time.perf_counter() - started
    turns.sort()
    return {
        "rate": writes / elapsed,
        "max_ms": turns[-1] * 1000,
        "p99_ms": turns[int(len(turns) * 0.99)] * 1000,
        "compactions": db.stats()["compactions"] + db.stats()["compacting"],
    }


def wait_for_compaction(db: Database) -> None:
    while db.stats()["compacting"]:
        time.sleep(0.05)
        db.maintain()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=positive_int, default=1_000)
    parser.add_argument("--large", type=positive_int, default=1_000_000)
    parser.add_argument("--writes", type=positive_int, default=200_000)
    parser.add_argument(
        "--batch", type=positive_int, default=100, help="inserts per commit (one turn)"
    )
    parser.add_argument("--sync", default="always", choices=("always", "everysec", "no"))
    parser.add_argument(
        "--dir", type=nonempty_path, help="where to put the data (default: a temp dir)"
    )
    args = parser.parse_args()
    try:
        base = Path(tempfile.mkdtemp(prefix="compaction-bench-", dir=args.dir))
    except OSError as exc:
        parser.error(f"--dir: cannot use {args.dir}: {exc.strerror or exc}")
    print(f"machine: {platform.node()}, {platform.machine()}, Python {platform.python_version()}")
    print(f"data in {base}; sync={args.sync}; {args.writes:,} inserts, {args.batch} per commit\n")
    results = {}
    try:
        for keys in (args.small, args.large):
            with Database(base / str(keys), sync=args.sync, compact_after=100) as db:
                preload(db, keys)
                results[keys] = timed_writes(db, keys, args.writes, args.batch)
                # The preload made a compaction due at once: its figures are the large table's.
                wait_for_compaction(db)
                last = db.stats()
            if keys == args.large:
                started = time.perf_counter()
                Database(base / str(keys)).close()
                recovery = time.perf_counter() - started
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(
        f"{'table size':>12} {'inserts/s':>11} {'max turn ms':>12} {'p99 turn ms':>12} {'compactions':>12}"
    )
    for keys, r in results.items():
        print(
            f"{keys:>12,} {r['rate']:>11,.0f} {r['max_ms']:>12.1f} {r['p99_ms']:>12.1f} "
            f"{r['compactions']:>12}"
        )
    ratio = results[args.large]["rate"] / results[args.small]["rate"]
    print(
        f"\ninsert throughput {args.large:,} keys / {args.small:,} keys: {ratio:.2f}x (target >= 0.8)"
    )
    print(
        f"fork pause with {last['keys']:,} keys: {last['last_fork_ms']:.1f} ms "
        f"(with log rotation: {last['last_pause_ms']:.1f} ms; target well under 100 ms)"
    )
    print(
        f"background checkpoint of {last['keys']:,} keys: "
        f"{last['last_compaction_ms'] / 1000:.1f} s (fork to reaping)"
    )
    print(f"recovery of {last['keys']:,} keys: {recovery:.1f} s")


if __name__ == "__main__":
    main()
