"""``python -m chaos``: run the reliability battery and print its summary table.

    python -m chaos                     the full battery (a few minutes)
    python -m chaos --quick             the short version (what make test runs)
    python -m chaos --only crash,lb     some scenarios
    python -m chaos --seed 42           replay the random choices of an earlier run

Exit status: 0 when every scenario passed, 1 when any failed, 2 for bad arguments.
Logs of every process, the writers' ledgers and data directories stay in the
work directory (printed at the end) when something failed, or with --keep.
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from chaos import catalog_down, cluster, crash, hostile, lbfaults, moves
from chaos.lab import Lab, Result
from chaos.report import format_table
from netkit.cliargs import choice_list, nonempty_path

SCENARIOS: dict[str, Callable[[Lab], Result]] = {
    "crash": crash.run,
    "moves": moves.run,
    "catalog": catalog_down.run,
    "hostile": hostile.run,
    "lb": lbfaults.run,
    "cluster": cluster.run,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m chaos",
        description="Run the reliability battery against real processes and print its summary table.",
        epilog=f"Scenarios: {', '.join(SCENARIOS)}. See docs/chaos.md.",
    )
    parser.add_argument("--quick", action="store_true", help="the short battery (under 90 s)")
    parser.add_argument(
        "--only",
        type=choice_list(SCENARIOS, "scenario"),
        default=list(SCENARIOS),
        metavar="NAME,...",
        help="run these scenarios only",
    )
    parser.add_argument("--seed", type=int, help="seed for every random choice (default: random)")
    parser.add_argument(
        "--work-dir",
        type=nonempty_path,
        metavar="DIR",
        help="where logs and data go (default: /tmp)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def say(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    # The battery recovers copies of data directories itself; the engine's
    # warnings about torn lines there are expected, not news.
    logging.basicConfig(level=logging.ERROR, format="%(name)s %(levelname)s %(message)s")
    try:
        if args.work_dir:
            args.work_dir.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="chaos-", dir=args.work_dir))
    except OSError as exc:
        print(
            f"python -m chaos: cannot use {args.work_dir}: {exc.strerror or exc}", file=sys.stderr
        )
        return 2
    # SIGTERM stops it as Ctrl-C does: every process it started is stopped too.
    signal.signal(signal.SIGTERM, _interrupt)
    mode = "quick" if args.quick else "full"
    say(f"chaos: {mode} battery, seed {seed}, work directory {root}")
    results = []
    started = time.monotonic()
    for name in args.only:
        say(f"\n== {name} ==")
        lab = Lab(root / name, seed, args.quick, say)
        began = time.monotonic()
        try:
            result = SCENARIOS[name](lab)
        except KeyboardInterrupt:
            say(f"chaos: interrupted; stopping what it started (logs in {root})")
            raise
        except Exception as exc:  # a scenario that could not run is a failure, reported
            result = Result(name)
            result.fail(f"the scenario broke off: {type(exc).__name__}: {exc}")
            say(traceback.format_exc())
        finally:
            lab.close()
        for line in result.figures:
            say(f"  {line}")
        say(f"  ({time.monotonic() - began:.0f} s)")
        results.append(result)

    say("\n" + format_table(results))
    failed = any(result.failures for result in results)
    for result in results:
        for problem in result.problems:
            say(f"FAILED {result.scenario}: {problem}")
    say(f"\n{mode} battery took {time.monotonic() - started:.0f} s (seed {seed})")
    if failed or args.keep:
        say(f"logs and data kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # everything it started is stopped by then (Lab.close)
        sys.exit(130)
