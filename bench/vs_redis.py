"""Our hash table service against Redis, side by side in one run.

    python bench/vs_redis.py [--seconds S] [--clients N] [--quick]

Starts our server and a Redis server on loopback with matched durability:
  durable:  ours --sync always (group commit)  vs  Redis appendonly yes, appendfsync always
  fast:     ours --sync no                     vs  Redis appendonly no, no snapshots
and drives both with the same Python workload: our HashTableClient against
redis-py (with hiredis), the same keys, the same JSON values (Redis stores them
serialized with json.dumps and the reader parses them back, so both hand the
caller the same Python object). Prints ops/s for both, the ratio ours/Redis,
and each server's CPU time per request. Table-size and compaction effects are
measured on our server alone (1,000 vs 1,000,000 keys; the worst wait behind
a compaction).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.processes import Process, free_port, tcp_open, wait_until  # noqa: E402
from harness.procfs import cpu_seconds  # noqa: E402
from harness.services import start_hashtable_server  # noqa: E402
from netkit.cliargs import positive_int, positive_seconds  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import floor  # noqa: E402

VALUE = {"name": "zebra", "weight": 100, "tags": ["striped", "savanna"], "n": 0}
PIPELINE_DEPTH = 1000


# ---------------------------------------------------------------- the two systems


@dataclass
class Target:
    """One running server and how to make a client for it."""

    name: str
    process: Process | subprocess.Popen
    connect: Callable[[], object]
    ops: dict[str, Callable]  # operation name -> fn(client, key, value)
    port: int = 0


def ours_ops() -> dict[str, Callable]:
    return {
        "insert": lambda c, k, v: c.insert(k, v),
        "lookup": lambda c, k, v: c.lookup(k),
    }


def redis_ops() -> dict[str, Callable]:
    dumps, loads = json.dumps, json.loads
    return {
        "insert": lambda c, k, v: c.set(k, dumps(v)),
        "lookup": lambda c, k, v: loads(c.get(k)),
    }


def start_ours(
    workdir: Path, sync: str, *extra: str, tree: Path = ROOT, auth: bool = True
) -> Target:
    """Our server from the checkout at ``tree``, driven by this checkout's client:
    authenticated (TLS with the secret) unless ``auth`` is false, or the checkout
    predates authentication."""
    from HashTableClient import HashTableClient

    authenticates = "--no-auth" in (tree / "HashTableServer.py").read_text()
    if authenticates and not auth:
        extra = (*extra, "--no-auth")
    auth = auth and authenticates
    data = workdir / f"ours-{sync}-{'tls' if auth else 'plain'}"
    process, port = start_hashtable_server(
        f"bench-{sync}",
        data,
        "127.0.0.1:1",
        workdir,
        "--sync",
        sync,
        "--quiet",
        *extra,
        tree=tree,
    )
    return Target(
        f"ours ({sync}{'' if auth else ', plain'})",
        process,
        lambda: HashTableClient.at("127.0.0.1", port, auth=auth),
        ours_ops(),
        port,
    )


def start_redis(workdir: Path, durable: bool) -> Target:
    import redis

    port = free_port()
    data = workdir / f"redis-{'aof' if durable else 'mem'}"
    data.mkdir()
    persistence = (
        ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
    )
    process = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--dir",
            str(data),
            *persistence,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: tcp_open("127.0.0.1", port), what="redis-server")
    name = "redis (aof always)" if durable else "redis (no persistence)"
    return Target(name, process, lambda: redis.Redis(port=port), redis_ops(), port)


def stop(target: Target) -> None:
    if isinstance(target.process, Process):
        target.process.stop()
    else:
        target.process.terminate()
        target.process.wait(timeout=10)


def server_cpu_seconds(target: Target) -> float:
    """User + system CPU the server process has used so far."""
    return cpu_seconds(target.process.pid)


# ---------------------------------------------------------------- workloads


def _client_loop(
    target: Target, op: str, seconds: float, prefix: str, preload: int, start_at: float, out
) -> None:
    client = target.connect()
    fn = target.ops[op]
    keys = [f"{prefix}{i}" for i in range(max(preload, 1))]
    if op == "lookup":
        for key in keys:
            target.ops["insert"](client, key, VALUE)
    while time.time() < start_at:
        time.sleep(0.001)
    done, i, n = 0, 0, len(keys)
    begin = time.perf_counter()
    deadline = begin + seconds
    while True:
        for _ in range(100):
            fn(client, keys[i], VALUE) if op == "lookup" else fn(client, f"{prefix}w{done}", VALUE)
            i = i + 1 if i + 1 < n else 0
            done += 1
        if time.perf_counter() >= deadline:
            break
    out.put(done / (time.perf_counter() - begin))


def throughput(target: Target, op: str, clients: int, seconds: float) -> tuple[float, float]:
    """Summed ops/s of ``clients`` processes, and the server's CPU us per request."""
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    start_at = time.time() + 0.5 + 0.1 * clients
    workers = [
        context.Process(
            target=_client_loop,
            args=(target, op, seconds, f"{op}-{clients}-{n}-", 1000, start_at, out),
        )
        for n in range(clients)
    ]
    for worker in workers:
        worker.start()
    wait = max(0.0, start_at - time.time())
    time.sleep(wait)
    cpu_before = server_cpu_seconds(target)
    results = [out.get(timeout=seconds + 120) for _ in workers]
    cpu_after = server_cpu_seconds(target)
    for worker in workers:
        worker.join()
    total = sum(results)
    requests = total * seconds
    return total, (cpu_after - cpu_before) / requests * 1e6 if requests else 0.0


def pipelined_lookups_ours(target: Target, seconds: float) -> tuple[float, float]:
    client = target.connect()
    keys = [f"pipe-{i}" for i in range(PIPELINE_DEPTH)]
    for key in keys:
        client.insert(key, VALUE)
    done = 0
    begin = time.perf_counter()
    while time.perf_counter() - begin < seconds:
        with client.pipeline() as pipe:
            for key in keys:
                pipe.lookup(key)
        done += len(keys)
    return done / (time.perf_counter() - begin), 0.0  # (ops/s, no cpu figure)


def pipelined_lookups_redis(target: Target, seconds: float) -> tuple[float, float]:
    client = target.connect()
    keys = [f"pipe-{i}" for i in range(PIPELINE_DEPTH)]
    for key in keys:
        client.set(key, json.dumps(VALUE))
    loads = json.loads
    done = 0
    begin = time.perf_counter()
    while time.perf_counter() - begin < seconds:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        [loads(v) for v in pipe.execute()]
        done += len(keys)
    return done / (time.perf_counter() - begin), 0.0  # (ops/s, no cpu figure)


# ---------------------------------------------------------------- table size and compaction


def inserts_at_size(workdir: Path, table_size: int, seconds: float) -> tuple[float, float]:
    """Insert ops/s (one client, pipelined fill then measured plain inserts) with
    ``table_size`` keys already in the table, and the worst single-insert latency (ms)."""
    sized = workdir / f"size-{table_size}"
    sized.mkdir()
    target = start_ours(sized, "always")
    try:
        client = target.connect()
        batch = 10_000
        for start in range(0, table_size, batch):
            with client.pipeline() as pipe:
                for i in range(start, min(table_size, start + batch)):
                    pipe.insert(f"fill-{i}", VALUE)
        worst = 0.0
        done = 0
        begin = time.perf_counter()
        while time.perf_counter() - begin < seconds:
            t = time.perf_counter()
            client.insert(f"measure-{done % table_size}", VALUE)
            worst = max(worst, time.perf_counter() - t)
            done += 1
        return done / (time.perf_counter() - begin), worst * 1000
    finally:
        stop(target)


def disk_fsync(directory: Path, seconds: float) -> dict[str, tuple[float, float]]:
    """The disk's own median and worst write+fdatasync (ms) over ``seconds``, two
    ways taking turns: appending to a file (Redis's AOF) and writing into space
    preallocated ahead (our log, docs/storage.md). The floor under any durable
    write's wait, compaction or not."""
    record = b"x" * 100 + b"\n"
    appended = os.open(directory / "fsync-append", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    preallocated = os.open(directory / "fsync-prealloc", os.O_WRONLY | os.O_CREAT)
    waits: dict[str, list[float]] = {"appending": [], "preallocated": []}
    offset = allocated = 0
    try:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            os.write(appended, record)
            os.fdatasync(appended)
            waits["appending"].append(time.perf_counter() - t)
            t = time.perf_counter()
            if offset + len(record) > allocated:
                os.posix_fallocate(preallocated, allocated, 1 << 20)
                allocated += 1 << 20
            os.pwrite(preallocated, record, offset)
            offset += len(record)
            os.fdatasync(preallocated)
            waits["preallocated"].append(time.perf_counter() - t)
    finally:
        os.close(appended)
        os.close(preallocated)
    return {
        how: (statistics.median(times) * 1000, max(times) * 1000) for how, times in waits.items()
    }


def alternate(
    repeat: int, ours: Callable[[], tuple[float, float]], redis: Callable[[], tuple[float, float]]
) -> tuple[float, float, float, float]:
    """Runs both ``repeat`` times, alternating, so that the machine's drift hits both
    alike; returns the medians (ours ops/s, ours cpu, redis ops/s, redis cpu)."""
    runs = [(*ours(), *redis()) for _ in range(repeat)]
    return tuple(statistics.median(run[i] for run in runs) for i in range(4))  # type: ignore[return-value]


# ---------------------------------------------------------------- report


def row(
    case: str,
    ours: float,
    redis: float,
    cpu_ours: float | None = None,
    cpu_redis: float | None = None,
) -> str:
    ratio = ours / redis if redis else float("nan")
    cpu = (
        f"{cpu_ours:>8.1f} {cpu_redis:>8.1f}"
        if cpu_ours is not None and cpu_redis is not None
        else ""
    )
    return f"{case:<38} {ours:>10.0f} {redis:>10.0f} {ratio:>6.2f} {cpu}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds",
        type=positive_seconds,
        default=3.0,
        help="length of each measurement (default 3)",
    )
    parser.add_argument(
        "--clients",
        type=positive_int,
        default=8,
        help="concurrent clients in the multi-client cases (default 8)",
    )
    parser.add_argument(
        "--big",
        type=positive_int,
        default=1_000_000,
        help="table size of the large-table case (default 1,000,000)",
    )
    parser.add_argument(
        "--repeat",
        type=positive_int,
        default=3,
        help="measure each case this many times, ours and Redis alternating; report medians (default 3)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short runs, once each, and a 100,000-key large table"
    )
    parser.add_argument(
        "--security",
        action="store_true",
        help="also what security costs: ours with TLS vs plain, the handshake, Redis with TLS "
        "(bench/security_cost.py)",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.big, args.repeat = 1.0, 100_000, 1
    if shutil.which("redis-server") is None:
        print(
            "vs_redis: redis-server not found; install it with: apt-get install -y redis-server",
            file=sys.stderr,
        )
        return 2

    n = args.clients
    print(
        f"ours vs Redis, {args.seconds:g} s per case, median of {args.repeat} alternating runs, "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
    )
    print(f"{'case':<38} {'ours/s':>10} {'redis/s':>10} {'ratio':>6} {'server cpu us/req':>17}")
    print(f"{'':<38} {'':>10} {'':>10} {'':>6} {'ours':>8} {'redis':>8}")
    ours_inserts: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="vs-redis-") as scratch:
        workdir = Path(scratch)
        for durable in (True, False):
            ours = start_ours(workdir, "always" if durable else "no")
            redis = start_redis(workdir, durable)
            label = "durable" if durable else "non-durable"
            try:
                for op, clients in (("lookup", 1), ("insert", 1), ("insert", n), ("lookup", n)):
                    if not durable and op == "lookup":
                        continue  # lookups do not depend on durability
                    o, o_cpu, r, r_cpu = alternate(
                        args.repeat,
                        partial(throughput, ours, op, clients, args.seconds),
                        partial(throughput, redis, op, clients, args.seconds),
                    )
                    if op == "insert":
                        ours_inserts[f"{label} {clients}"] = o
                    case = (
                        f"{clients} client(s), {label} {op}s"
                        if op == "insert"
                        else f"{clients} client(s), {op}s"
                    )
                    print(row(case, o, r, o_cpu, r_cpu), flush=True)
                if durable:
                    o, _, r, _ = alternate(
                        args.repeat,
                        partial(pipelined_lookups_ours, ours, args.seconds),
                        partial(pipelined_lookups_redis, redis, args.seconds),
                    )
                    print(row(f"pipelined lookups (depth {PIPELINE_DEPTH})", o, r), flush=True)
            finally:
                stop(ours)
                stop(redis)
        cost = ours_inserts[f"durable {n}"] / ours_inserts[f"non-durable {n}"]
        print(
            f"\ngroup commit: {n} clients' durable inserts run at {cost:.2f} of their non-durable rate (ours)"
        )
        (workdir / "floor").mkdir()
        ours = start_ours(workdir / "floor", "always")
        try:
            floor.report(ours.connect(), ours.process.pid, workdir, args.seconds * 2, VALUE)
        finally:
            stop(ours)
        small, small_worst = inserts_at_size(workdir, 1_000, args.seconds)
        big, big_worst = inserts_at_size(workdir, args.big, args.seconds)
        print(
            f"inserts with {args.big:,} keys vs 1,000 keys (ours, durable): {big:.0f}/s vs {small:.0f}/s = {big / small:.2f}"
        )
        print(
            f"worst single-insert wait (includes any compaction): {small_worst:.1f} ms with 1,000 keys, {big_worst:.1f} ms with {args.big:,}"
        )
        disk = disk_fsync(workdir, args.seconds)
        (append, append_worst), (ahead, ahead_worst) = disk["appending"], disk["preallocated"]
        print(
            f"the disk alone, a 101-byte write + fdatasync, taking turns for {args.seconds:g} s:\n"
            f"  appending (Redis's AOF):             median {append:.3f} ms, worst {append_worst:.1f} ms\n"
            f"  into preallocated space (our log):   median {ahead:.3f} ms, worst {ahead_worst:.1f} ms"
            f"  ({ahead / append:.2f} of appending)"
        )
    if args.security:
        import security_cost

        print()
        security_cost.report(args.seconds, args.repeat, 200)
    return 0


if __name__ == "__main__":
    sys.exit(main())
