"""The cluster, side by side in one run: what K copies cost a writer, what N servers give readers.

    python bench/cluster_bench.py [--seconds S] [--rounds R] [--clients C] [--quick]

Starts a catalog and five hash table servers (``bench-0`` .. ``bench-4``,
``--sync always``, loopback) and measures, every figure in this one run:

1. One client's inserts (each durable on its K replicas before it returns):
   HashTableClient on one server, and ClusterClient with N=1,K=1; N=3,K=2;
   N=5,K=3, in interleaved rounds (the median of R), with the ratio to
   N=1,K=1 (the issue's target: N=3,K=2 at >= 0.77) and the client's own CPU
   time per insert. Two other ways to write the K replicas, built here only to
   compare: one after another (K round trips) and a thread per replica.
2. Lookups summed over C client processes (TestPerf), for N = 1, 2, 3, 5
   servers with K=1 and for N=3,K=2: each server is one process on one core,
   so the sum grows with N until the machine's 2 cores are busy.
3. The client's CPU time per lookup, one client, N=1,K=1 against N=3,K=2.

The machine's load (``os.getloadavg``) is printed before and after: on a shared
machine the absolute figures drift, the ratios within one run much less.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.processes import Process  # noqa: E402
from harness.services import start_catalog, start_hashtable_server  # noqa: E402
from hashtable.client import HashTableClient  # noqa: E402
from hashtable.cluster import ClusterClient  # noqa: E402
from hashtable.cluster.fanout import Call, Patience, run  # noqa: E402
from hashtable.cluster.writes import write_result  # noqa: E402
from hashtable.request import Request  # noqa: E402
from netkit.cliargs import choice_list, positive_int, positive_seconds  # noqa: E402

NAME = "bench"
SERVERS = 5
VALUE = {"name": "zebra", "weight": 100, "tags": ["striped", "savanna"]}


# ---------------------------------------------------------------- other ways to write K replicas


class SequentialWrites(ClusterClient):
    """The replicas written one after another: K round trips (bench only)."""

    def _write(self, request: Request) -> Any:
        patience = Patience(None, self.name, "sequential write")
        version = [self._clock.next(), self._id]
        calls = []
        for member in self._replicas_of(request):
            numbered = Request(request.method, request.key, request.value, version=version)
            call = Call(member, member.numbering.encode(numbered), numbered)
            run([call], patience, keep_trying=True)
            calls.append(call)
        outcomes = [c.outcome for c in calls]
        return write_result(request.method, request.key, outcomes, [version], self._clock)


class ThreadedWrites(ClusterClient):
    """A thread per replica, each a blocking request on its transport (bench only)."""

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self._pool = concurrent.futures.ThreadPoolExecutor(self.copies)

    def _write(self, request: Request) -> Any:
        version = [self._clock.next(), self._id]
        futures = []
        for member in self._replicas_of(request):
            numbered = Request(request.method, request.key, request.value, version=version)
            line = member.numbering.encode(numbered)  # one thread per member: no sharing
            futures.append((member, numbered, self._pool.submit(member.transport.call, line)))
        outcomes = []
        for member, numbered, future in futures:
            outcome = member.numbering.answered(numbered, future.result())
            assert outcome is not None, "a forgotten session: not handled in this comparison"
            outcomes.append(outcome)
        return write_result(request.method, request.key, outcomes, [version], self._clock)

    def close(self) -> None:
        super().close()
        self._pool.shutdown()


# ---------------------------------------------------------------- measuring


def timed(operation: Callable[[int], Any], seconds: float) -> tuple[float, float]:
    """(operations per second, client CPU microseconds per operation) of
    ``operation(0)``, ``operation(1)``, ... over ``seconds``."""
    count = 0
    cpu = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        operation(count)
        count += 1
        if count % 16 == 0 and time.perf_counter() >= deadline:
            break
    wall = time.perf_counter() - start
    return count / wall, (time.process_time() - cpu) / count * 1e6


def timed_inserts(client: Any, prefix: str, seconds: float) -> tuple[float, float]:
    return timed(lambda n: client.insert(f"{prefix}:{n}", VALUE), seconds)


def timed_lookups(client: Any, keys: list[str], seconds: float) -> tuple[float, float]:
    return timed(lambda n: client.lookup(keys[n % len(keys)]), seconds)


def insert_configs(catalog: str) -> dict[str, Callable[[], Any]]:
    cluster = {"catalog": catalog}
    return {
        "HashTableClient, one server": lambda: HashTableClient(f"{NAME}-0", catalog=catalog),
        "N=1,K=1": lambda: ClusterClient(NAME, 1, 1, **cluster),
        "N=3,K=2": lambda: ClusterClient(NAME, 3, 2, **cluster),
        "N=5,K=3": lambda: ClusterClient(NAME, 5, 3, **cluster),
        "N=3,K=2 one replica after another": lambda: SequentialWrites(NAME, 3, 2, **cluster),
        "N=3,K=2 a thread per replica": lambda: ThreadedWrites(NAME, 3, 2, **cluster),
    }


def bench_inserts(catalog: str, seconds: float, rounds: int) -> dict[str, tuple[float, float]]:
    configs = insert_configs(catalog)
    clients = {name: make() for name, make in configs.items()}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    try:
        for name, client in clients.items():  # connected and warm
            timed_inserts(client, f"warm-{len(name)}", 0.2)
        for round_number in range(rounds):
            for n, (name, client) in enumerate(clients.items()):
                samples[name].append(timed_inserts(client, f"r{round_number}-{n}", seconds))
            print(f"  round {round_number + 1}/{rounds} done", file=sys.stderr, flush=True)
    finally:
        for client in clients.values():
            client.close()
    return {
        name: (
            statistics.median(rate for rate, _ in runs),
            statistics.median(cpu for _, cpu in runs),
        )
        for name, runs in samples.items()
    }


def bench_summed_lookups(
    catalog: str, clients: int, seconds: float
) -> list[tuple[str, float, float]]:
    """(configuration, summed lookups/s, mean client CPU share) from TestPerf."""
    rows = []
    for servers, copies in ((1, 1), (2, 1), (3, 1), (5, 1), (3, 2)):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = [
                sys.executable, str(ROOT / "TestPerf.py"), NAME, str(servers), str(copies),
                "--clients", str(clients), "--stages", "insert,lookup",
                "--stage-seconds", str(seconds), "--catalog", catalog, "--json", out.name, "-q",
            ]  # fmt: skip
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, timeout=600)
            figures = orjson.loads(Path(out.name).read_bytes())
        lookup = next(s for s in figures["runs"][0]["sum"] if s["stage"] == "lookup")
        rows.append((f"N={servers},K={copies}", lookup["ops_per_s"], lookup["client_cpu_share"]))
        print(f"  lookups N={servers},K={copies} done", file=sys.stderr, flush=True)
    return rows


def bench_lookup_cpu(catalog: str, seconds: float) -> list[tuple[str, float, float]]:
    rows = []
    for name, make in (
        ("HashTableClient, one server", lambda: HashTableClient(f"{NAME}-0", catalog=catalog)),
        ("N=1,K=1", lambda: ClusterClient(NAME, 1, 1, catalog=catalog)),
        ("N=3,K=2", lambda: ClusterClient(NAME, 3, 2, catalog=catalog)),
    ):
        with make() as client:
            keys = [f"lookup-{n}" for n in range(200)]
            for key in keys:
                client.insert(key, VALUE)
            timed_lookups(client, keys, 0.2)
            rate, cpu = timed_lookups(client, keys, seconds)
        rows.append((name, rate, cpu))
    return rows


# ---------------------------------------------------------------- the run


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=positive_seconds, default=2.0, help="per measurement")
    parser.add_argument("--rounds", type=positive_int, default=5, help="insert rounds (median)")
    parser.add_argument("--clients", type=positive_int, default=6, help="lookup client processes")
    parser.add_argument("--quick", action="store_true", help="short: for a look, not a report")
    parser.add_argument(
        "--sync",
        choices=("always", "everysec", "no"),
        default="always",
        help="the servers' --sync (default always: every write fsynced before its reply)",
    )
    parser.add_argument(
        "--parts",
        type=choice_list(("1", "2", "3"), "part"),
        default=["1", "2", "3"],
        metavar="1,2,3",
        help="which measurements (default all)",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.clients = 0.5, 2, 4
    print(
        f"cluster_bench: {load()} at the start; {args.seconds:g} s per measurement; "
        f"servers --sync {args.sync}",
        flush=True,
    )
    started: list[Process] = []
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as scratch:
        work = Path(scratch)
        try:
            catalog_process, port = start_catalog(work / "catalog", work)
            started.append(catalog_process)
            catalog = f"127.0.0.1:{port}"
            for index in range(SERVERS):
                process, _ = start_hashtable_server(
                    f"{NAME}-{index}", work / f"data-{index}", catalog, work, "--sync", args.sync
                )
                started.append(process)
            report(catalog, args)
        finally:
            for process in reversed(started):
                process.stop()
    print(f"\n{load()} at the end", flush=True)
    return 0


def report(catalog: str, args: argparse.Namespace) -> None:
    if "1" in args.parts:
        report_inserts(catalog, args)
    if "2" in args.parts:
        report_summed_lookups(catalog, args)
    if "3" in args.parts:
        report_lookup_cpu(catalog, args)


def report_inserts(catalog: str, args: argparse.Namespace) -> None:
    inserts = bench_inserts(catalog, args.seconds, args.rounds)
    base = inserts["N=1,K=1"][0]
    print(f"\n1. one client's inserts, durable on every replica (median of {args.rounds} rounds)")
    print(f"{'':38} {'inserts/s':>10} {'vs N=1,K=1':>11} {'client CPU/insert':>18}")
    for name, (rate, cpu) in inserts.items():
        print(f"{name:38} {rate:10.0f} {rate / base:11.2f} {cpu:15.0f} us")


def report_summed_lookups(catalog: str, args: argparse.Namespace) -> None:
    lookups = bench_summed_lookups(catalog, args.clients, args.seconds)
    print(f"\n2. lookups summed over {args.clients} client processes (TestPerf)")
    print(f"{'':38} {'lookups/s':>10} {'vs N=1,K=1':>11} {'client CPU share':>18}")
    for name, rate, share in lookups:
        print(f"{name:38} {rate:10.0f} {rate / lookups[0][1]:11.2f} {share:18.0%}")


def report_lookup_cpu(catalog: str, args: argparse.Namespace) -> None:
    print("\n3. one client's lookups")
    print(f"{'':38} {'lookups/s':>10} {'':>11} {'client CPU/lookup':>18}")
    for name, rate, cpu in bench_lookup_cpu(catalog, args.seconds):
        print(f"{name:38} {rate:10.0f} {'':>11} {cpu:15.0f} us")


if __name__ == "__main__":
    sys.exit(main())
