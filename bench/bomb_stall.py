"""What wide JSON bombs cost the other clients, with --max-request-values and without it.

    python bench/bomb_stall.py [--seconds S]

Starts two hash table servers (loopback, --sync no): one with the default
--max-request-values (250,000), one with it at its most (10,000,000, as good as
no bound for these bombs). Against each in turn, the chaos battery's attacker
(``python -m chaos.attacks hashtable PORT --only bombs``: inserts of 8 MiB of
``[{},{},...]``, 2.8 million objects each, pipelined two at a time) runs while a
well-behaved client does lookups one after another. Prints the lookups done,
their p50, p99 and max latency, and the server's resident size afterwards, side
by side with the ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.processes import (  # noqa: E402
    Process,
    free_port,
    python_module,
    wait_until,
)
from harness.procfs import memory_kib  # noqa: E402
from harness.services import start_hashtable_server  # noqa: E402
from netkit.cliargs import positive_seconds  # noqa: E402
from tests.server_support import Wire  # noqa: E402


def under_bombs(process: Process, port: int, seconds: float) -> dict[str, float]:
    attacker = subprocess.Popen(
        python_module("chaos.attacks", "hashtable", str(port), "--only", "bombs",
                      "--seconds", str(seconds + 1.5)),
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    latencies = []
    with Wire(port) as wire:
        wire.call({"method": "insert", "key": "mine", "value": 1})
        wait_until(lambda: attacker.stdout.readline().startswith("attacking"), what="attack")  # type: ignore[union-attr]
        time.sleep(0.5)  # the bombs under way
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            started = time.monotonic()
            wire.call({"method": "lookup", "key": "mine"})
            latencies.append(time.monotonic() - started)
    attacker.communicate(timeout=120)
    latencies.sort()
    resident, _ = memory_kib(process.pid)
    return {
        "lookups": len(latencies),
        "p50 ms": latencies[len(latencies) // 2] * 1000,
        "p99 ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "max ms": latencies[-1] * 1000,
        "server RSS MiB": resident / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=positive_seconds, default=4.0, help="of lookups")
    args = parser.parse_args()
    columns = {}
    with tempfile.TemporaryDirectory(prefix="bomb-stall-") as scratch:
        directory = Path(scratch)
        for label, extra in (("bounded", ()), ("unbounded", ("--max-request-values", "10000000"))):
            name = f"bombs-{label}"
            process, port = start_hashtable_server(
                name, directory / name, f"127.0.0.1:{free_port()}", directory,
                "--sync", "no", "--quiet", *extra,
            )  # fmt: skip
            try:
                columns[label] = under_bombs(process, port, args.seconds)
            finally:
                process.stop()
    print(f"\nwide JSON bombs against the hash table, {args.seconds:g} s of lookups each")
    print(f"{'':16} {'bounded':>10} {'unbounded':>10} {'ratio':>8}")
    for figure in columns["bounded"]:
        bounded, unbounded = columns["bounded"][figure], columns["unbounded"][figure]
        ratio = bounded / unbounded if unbounded else float("nan")
        print(f"{figure:16} {bounded:10.1f} {unbounded:10.1f} {ratio:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
