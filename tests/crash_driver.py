"""Crash-test driver: mutates a Database and reports each mutation once it is durable.

tests/test_storage_crash.py SIGKILLs it at random instants, reopens the
directory and checks that every acknowledged mutation survived. Usage:

    python tests/crash_driver.py DATA_DIR --start N --client NAME [--seed S]

It performs operations ``operation(seed, N)``, ``operation(seed, N + 1)``, ...
in batches, as client NAME with seq 1, 2, 3, ...; after each batch's commit()
it prints one line per mutation, ``ACK <index> <seq> <summary>``, and only
then runs maintain() (which forks compactions). It never stops by itself.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hashtable.database import Database
from hashtable.request import Outcome, Request, Status
from netkit.logs import setup_logging

KEYS = 300
MAX_BATCH = 40
VALUE_SIZE = 2000  # large-ish values make checkpoints take long enough to be killed in


def operation(seed: int, index: int) -> tuple[str, str, Any]:
    """The index-th mutation of the run: the same for the driver and the test."""
    rng = random.Random(f"{seed}:{index}")
    key = f"key{rng.randrange(KEYS)}"
    if rng.random() < 0.3:
        return "remove", key, None
    return "insert", key, {"op": index, "pad": "v" * rng.randrange(VALUE_SIZE)}


def summary(outcome: Outcome) -> str:
    """A short, comparable form of an outcome: a removed value is named by its op index."""
    if outcome.status is Status.OK:
        return "ok:-" if outcome.result is None else f"ok:{outcome.result['op']}"
    return f"{outcome.status.value}:{outcome.error}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--client", required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--compact-after", type=int, default=20)
    args = parser.parse_args()
    setup_logging(quiet=True)  # warnings only: a failed compaction shows
    db = Database(args.data_dir, compact_after=args.compact_after, lock_timeout=30)
    batches = random.Random(args.seed + args.start)
    index, seq, acked = args.start, 0, 0
    while True:
        lines = []
        for _ in range(batches.randint(1, MAX_BATCH)):
            method, key, value = operation(args.seed, index)
            seq += 1
            request = Request(method, key=key, value=value, client=args.client, seq=seq, ack=acked)
            lines.append(f"ACK {index} {seq} {summary(db.execute(request))}\n")
            index += 1
        db.commit()
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
        acked = seq
        db.maintain()


if __name__ == "__main__":
    main()
