"""A cluster reader for the battery: its own keys, looked up again and again.

    python -m chaos.reader NAME N K --catalog HOST:PORT --name r0 [--keys 30] [--slow 2.0]

It inserts its keys once, then looks them up in turn until SIGTERM/SIGINT,
checking each value. A lookup that raises, answers wrong, or takes longer than
``--slow`` seconds is a failed read: the battery kills one server at a time,
so one of each key's K >= 2 replicas is always up and a read has no reason to
wait. At the end it prints one JSON line: reads, failures, the slowest read.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import orjson

from hashtable.cluster import ClusterClient
from netkit.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cluster")
    parser.add_argument("servers", type=int)
    parser.add_argument("copies", type=int)
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--keys", type=int, default=30)
    parser.add_argument("--slow", type=float, default=2.0)
    args = parser.parse_args(argv)
    setup_logging(0, quiet=True)
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _: stopping.append(signum))
    keys = {f"{args.name}-key{n}": {"reader": args.name, "n": n} for n in range(args.keys)}
    reads = failed = 0
    slowest = 0.0
    problems: list[str] = []
    options = {"backoff_initial": 0.1, "backoff_cap": 1.0}
    with ClusterClient(
        args.cluster, args.servers, args.copies, catalog=args.catalog, **options
    ) as table:
        for key, value in keys.items():
            table.insert(key, value)
        print(orjson.dumps({"event": "ready"}).decode(), flush=True)
        while not stopping:
            for key, value in keys.items():
                if stopping:
                    break
                began = time.monotonic()
                try:
                    found = table.lookup(key)
                    problem = None if found == value else f"{key} gave {found!r}"
                except Exception as exc:  # any exception is a failed read, reported
                    problem = f"{key} raised {type(exc).__name__}: {exc}"
                took = time.monotonic() - began
                slowest = max(slowest, took)
                if problem is None and took > args.slow:
                    problem = f"{key} took {took:.2f} s"
                reads += 1
                if problem is not None:
                    failed += 1
                    problems.append(f"{time.strftime('%H:%M:%S')} {problem}")
    summary = {"reads": reads, "failed": failed, "slowest": slowest, "problems": problems[:5]}
    print(orjson.dumps({"event": "done", **summary}).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
