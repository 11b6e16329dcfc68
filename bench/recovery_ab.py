"""Recovery time of two versions of the storage engine side by side in one run.

    git worktree add /tmp/before HEAD~1
    python bench/recovery_ab.py /tmp/before . [--keys 1000000] [--repeat 3]

Each checkout writes its own data directory of ``--keys`` keys (a checkpoint
holding them all, then a log of ``--log`` more records), in its own format; then
the two directories are recovered in turn, A and B alternating, each in a fresh
process running that checkout's ``Database``. Prints the median recovery time
of each and the ratio B/A. The machine's speed drifts; the ratio is the result.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netkit.cliargs import positive_int

BUILD = """
import sys, time
from hashtable.database import Database
from hashtable.request import Request
keys, extra = int(sys.argv[2]), int(sys.argv[3])
with Database(sys.argv[1], compact_after=keys) as db:
    for i in range(keys):
        db.execute(Request("insert", key=f"key{i}", value={"n": i, "name": f"item {i}"}))
        if i % 10000 == 0:
            db.commit()
    db.commit()
    db.maintain()
    while db.stats()["compacting"]:
        time.sleep(0.05)
        db.maintain()
    for i in range(extra):
        db.execute(Request("insert", key=f"key{i}", value={"n": -i, "name": "again"}))
    db.commit()
"""

RECOVER = """
import sys, time
started = time.perf_counter()
from hashtable.database import Database
with Database(sys.argv[1]) as db:
    keys = db.stats()["keys"]
print(time.perf_counter() - started, keys)
"""


def run(tree: Path, code: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=tree, capture_output=True, text=True, check=False
    )
    if result.returncode:
        raise SystemExit(f"{tree}: {result.stderr.strip()}")
    return result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("a", type=Path, help="the checkout to compare against (before)")
    parser.add_argument("b", type=Path, help="the checkout being measured (after)")
    parser.add_argument("--keys", type=positive_int, default=1_000_000, help="(default 1,000,000)")
    parser.add_argument(
        "--log", type=positive_int, default=100_000, help="log records after the checkpoint"
    )
    parser.add_argument("--repeat", type=positive_int, default=3, help="(default 3)")
    args = parser.parse_args()
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    times: dict[str, list[float]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="recovery-ab-") as scratch:
        for name, tree in trees.items():
            run(tree, BUILD, f"{scratch}/{name}", str(args.keys), str(args.log))
        for _ in range(args.repeat):
            for name, tree in trees.items():
                seconds, keys = run(tree, RECOVER, f"{scratch}/{name}").split()
                assert int(keys) == args.keys, f"{name} recovered {keys} keys"
                times[name].append(float(seconds))
    a, b = statistics.median(times["A"]), statistics.median(times["B"])
    print(
        f"recovery of {args.keys:,} keys (checkpoint) + {args.log:,} log records, median of "
        f"{args.repeat}"
    )
    print(f"  A {trees['A']}: {a:.2f} s\n  B {trees['B']}: {b:.2f} s\n  B/A: {b / a:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
