"""Two versions of our server side by side in one run: did a change make it faster?

    git worktree add /tmp/before HEAD~1
    python bench/ab_servers.py /tmp/before . [--cases NAME,...] [--repeat 5] [--seconds 2]

Starts each checkout's HashTableServer.py in turn, on a fresh data directory,
alternating A and B so that the machine's drift hits both alike, and drives it
with this checkout's client through the workloads of bench/vs_redis.py. Prints,
per case, the medians of ops/s and of the server's CPU time per request for A
and B, and the ratio B/A. Absolute figures drift on this VM; the ratio is the
result.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_redis import pipelined_lookups_ours, start_ours, stop, throughput

from netkit.cliargs import positive_int, positive_seconds

# name -> (--sync, operation, concurrent clients); "pipeline": pipelined lookups
CASES = {
    "lookups-1": ("always", "lookup", 1),
    "durable-inserts-1": ("always", "insert", 1),
    "durable-inserts-8": ("always", "insert", 8),
    "inserts-8": ("no", "insert", 8),
    "pipelined-lookups": ("always", "pipeline", 1),
}


def checkout(text: str) -> Path:
    path = Path(text).resolve()
    if not (path / "HashTableServer.py").is_file():
        raise argparse.ArgumentTypeError(f"{text}: no HashTableServer.py there")
    return path


def case_list(text: str) -> list[str]:
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in CASES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown case(s) {', '.join(unknown) or '(none)'}; cases: {', '.join(CASES)}"
        )
    return names


def measure(tree: Path, case: str, seconds: float, auth: bool) -> tuple[float, float | None]:
    """One run: (ops/s, server CPU us per request; None for pipelines)."""
    sync, operation, clients = CASES[case]
    with tempfile.TemporaryDirectory(prefix="ab-servers-") as workdir:
        target = start_ours(Path(workdir), sync, tree=tree, auth=auth)
        try:
            if operation == "pipeline":
                return pipelined_lookups_ours(target, seconds)[0], None
            return throughput(target, operation, clients, seconds)
        finally:
            stop(target)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("a", type=checkout, help="the checkout to compare against (before)")
    parser.add_argument("b", type=checkout, help="the checkout being measured (after)")
    parser.add_argument(
        "--cases", type=case_list, default=list(CASES), help=f"of: {', '.join(CASES)}"
    )
    parser.add_argument("--repeat", type=positive_int, default=5, help="runs of each (default 5)")
    parser.add_argument("--seconds", type=positive_seconds, default=2.0, help="per run (default 2)")
    parser.add_argument(
        "--auth",
        action="store_true",
        help="authenticated (TLS) on both sides; by default both serve plain text (--no-auth), "
        "which also compares with checkouts from before authentication",
    )
    args = parser.parse_args()

    print(
        f"A = {args.a}\nB = {args.b}\nmedians of {args.repeat} alternating runs of {args.seconds:g} s, "
        f"{'TLS' if args.auth else 'plain text'}"
    )
    print(
        f"{'case':<20} {'A ops/s':>10} {'B ops/s':>10} {'B/A':>6} {'A cpu us/req':>13} {'B cpu us/req':>13}"
    )
    for case in args.cases:
        runs: dict[Path, list[tuple[float, float | None]]] = {args.a: [], args.b: []}
        for n in range(args.repeat):
            for tree in (args.a, args.b) if n % 2 == 0 else (args.b, args.a):
                runs[tree].append(measure(tree, case, args.seconds, args.auth))
        ops = {tree: statistics.median(r[0] for r in results) for tree, results in runs.items()}
        cpu = {
            tree: (
                f"{statistics.median(r[1] for r in results):13.1f}"
                if results[0][1] is not None
                else f"{'':>13}"
            )
            for tree, results in runs.items()
        }
        print(
            f"{case:<20} {ops[args.a]:>10.0f} {ops[args.b]:>10.0f} {ops[args.b] / ops[args.a]:>6.2f}"
            f" {cpu[args.a]} {cpu[args.b]}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
