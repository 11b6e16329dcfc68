"""A cluster writer that contends with others for the same keys.

    python -m chaos.contender NAME N K --catalog HOST:PORT [--keys 20] [--seed S] [--seconds T]

Several of these insert and remove the same keys at once (a ClusterClient
each), so that their writes reach the replicas in different orders; afterwards
the replicas must be identical (tests/test_cluster.py, chaos/cluster.py). It
runs for ``--seconds`` or until SIGTERM/SIGINT, finishing the write under way,
and prints how many writes it made.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import sys

from hashtable.cluster import ClusterClient
from netkit.logs import setup_logging

REMOVE_SHARE = 0.25


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("servers", type=int)
    parser.add_argument("copies", type=int)
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, help="stop after this long (default: a signal)")
    parser.add_argument("--tag", default="c", help="this contender's name, in its values")
    args = parser.parse_args(argv)
    setup_logging(0, quiet=True)
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _: stopping.append(signum))
    if args.seconds is not None:
        signal.signal(signal.SIGALRM, lambda signum, _: stopping.append(signum))
        signal.setitimer(signal.ITIMER_REAL, args.seconds)
    rng = random.Random(f"{args.seed}:{args.tag}")
    keys = [f"shared-{n}" for n in range(args.keys)]
    writes = removes = 0
    options = {"backoff_initial": 0.05, "backoff_cap": 0.5}
    with ClusterClient(
        args.name, args.servers, args.copies, catalog=args.catalog, **options
    ) as table:
        while not stopping:
            key = rng.choice(keys)
            if rng.random() < REMOVE_SHARE:
                with contextlib.suppress(KeyError):
                    table.remove(key)
                removes += 1
            else:
                table.insert(key, {"by": args.tag, "n": writes})
            writes += 1
    print(f"contender {args.tag}: {writes} writes ({removes} removes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
