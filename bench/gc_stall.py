"""The longest wait behind the engine as the table grows: with and without the GC freezing.

    python bench/gc_stall.py [--keys 1000000] [--writes 1600000]

The engine alone (no network, ``--sync no`` so that the disk's own stalls stay
out): ``--writes`` inserts spread over ``--keys`` keys, a commit and a
``maintain()`` every 100, as the server's loop does. Prints the longest single
insert (or maintain) and the 99.9th percentile, once as the server runs (the
database freezes what survives every ``FREEZE_EVERY`` writes,
``netkit.memory.freeze_young_survivors``) and once with that freezing turned
off, each in a fresh process. Without it, CPython's full collections visit
every value in the table (about 440 ms at a million keys).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netkit.cliargs import positive_int

RUN = """
import shutil, sys, tempfile, time
from hashtable import database
from hashtable.database import Database
if sys.argv[3] == "off":
    database.FREEZE_EVERY = 10**18  # never: what the server did before it froze at run time
from hashtable.request import Request
keys, writes = int(sys.argv[1]), int(sys.argv[2])
waits = []
directory = tempfile.mkdtemp(prefix="gc-stall-")
try:
    with Database(directory, sync="no", compact_after=10**9) as db:
        for i in range(writes):
            started = time.perf_counter()
            value = {"name": "zebra", "weight": 100, "tags": ["a", "b"], "n": i}
            db.execute(Request("insert", key=f"k{i % keys}", value=value))
            if i % 100 == 0:
                db.commit()
                db.maintain()
            waits.append(time.perf_counter() - started)
finally:
    shutil.rmtree(directory)
waits.sort()
print(waits[-1] * 1000, waits[int(len(waits) * 0.999)] * 1000)
"""


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=positive_int, default=1_000_000)
    parser.add_argument("--writes", type=positive_int, default=1_600_000)
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    print(f"{args.writes:,} inserts over {args.keys:,} keys, engine only")
    for mode in ("on", "off"):
        result = subprocess.run(
            [sys.executable, "-c", RUN, str(args.keys), str(args.writes), mode],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
        worst, p999 = map(float, result.stdout.split())
        print(
            f"  freezing {mode:>3}: longest wait {worst:6.1f} ms, 99.9th percentile {p999:.2f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
