"""The LS under load: throughput with 2 and 8 TSs, and the latency it adds.

    python bench/lb_bench.py [--queries N] [--clients C] [--rounds R] [--tss 2,8] [--logging]

For each TS count, starts that many TSs (each holding its own share of the
names) and an LS over them, all on loopback with logging off, then measures:
  throughput  C clients at once, each sending N/C names without waiting
              (lb.resolver.resolve, as python -m lb.client does); every name is
              in exactly one table, so every query is answered (no time-outs);
  latency     one query at a time on one connection, R rounds: through the LS,
              and straight to a TS with the LS's own wire format (ID NAME), in
              the same run; the difference is what the LS adds.
Every answer is checked. Figures depend on the machine; it is printed first.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.processes import Process, free_port, python_module, tcp_open, wait_until  # noqa: E402
from lb.resolver import resolve  # noqa: E402
from netkit.cliargs import number_list, positive_int  # noqa: E402
from netkit.framing import LineFramer  # noqa: E402

NAMES_PER_TS = 5000


def name_of(ts: int, i: int) -> str:
    return f"host{i}.ts{ts}.example"


def answer_of(ts: int, i: int) -> bytes:
    return f"{name_of(ts, i)} 10.{ts}.{i // 250}.{i % 250} A IN".encode()


class Cluster:
    """``count`` TSs and an LS over them, stopped by ``stop()``."""

    def __init__(self, count: int, workdir: Path, logging: bool) -> None:
        self.quiet = [] if logging else ["--quiet"]
        self.processes: list[Process] = []
        self.ts_ports = []
        for ts in range(count):
            table = workdir / f"ts{ts}.txt"
            table.write_bytes(
                b"".join(answer_of(ts, i)[: -len(b" IN")] + b"\n" for i in range(NAMES_PER_TS))
            )
            port = free_port()
            self._start(["lb.ts", str(port), str(table)], port, workdir / f"ts{ts}.log")
            self.ts_ports.append(port)
        self.ls_port = free_port()
        pairs = [word for port in self.ts_ports for word in ("127.0.0.1", str(port))]
        self._start(["lb.ls", str(self.ls_port), *pairs], self.ls_port, workdir / "ls.log")

    def _start(self, module_args: list[str], port: int, log: Path) -> None:
        module, *args = module_args
        process = Process(python_module(module, *args, "--host", "127.0.0.1", *self.quiet), log)
        self.processes.append(process)
        wait_until(lambda: tcp_open("127.0.0.1", port) or not process.alive(), what=module)
        if not process.alive():
            raise SystemExit(f"{module} did not start:\n{process.output()}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def workload(count: int, queries: int, offset: int) -> tuple[list[bytes], list[bytes]]:
    """``queries`` names spread over the ``count`` TSs, and their answers."""
    picks = [((offset + n) % count, (offset * 7919 + n) % NAMES_PER_TS) for n in range(queries)]
    return [name_of(ts, i).encode() for ts, i in picks], [answer_of(ts, i) for ts, i in picks]


def throughput(cluster: Cluster, count: int, queries: int, clients: int) -> float:
    share = queries // clients
    loads = [workload(count, share, offset) for offset in range(clients)]

    def run(load: tuple[list[bytes], list[bytes]]) -> None:
        names, expected = load
        if resolve("127.0.0.1", cluster.ls_port, names, wait=30) != expected:
            raise SystemExit("wrong answers through the LS")

    run(workload(count, 200, 99))  # warm-up: connections made, code paths hot
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, loads))
    return share * clients / (time.perf_counter() - started)


def round_trips(port: int, lines: list[bytes], expected: list[bytes]) -> list[float]:
    """Seconds per request/answer on one connection, one at a time."""
    times = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        framer = LineFramer()
        for line, answer in zip(lines, expected, strict=True):
            started = time.perf_counter()
            sock.sendall(line)
            got: list[bytes] = []
            while not got:
                got = framer.feed(sock.recv(4096))
            times.append(time.perf_counter() - started)
            if got != [answer]:
                raise SystemExit(f"wrong answer {got!r}, expected {answer!r}")
    return times


def latency(cluster: Cluster, rounds: int) -> tuple[list[float], list[float]]:
    """Round trips through the LS and straight to TS 0, interleaved in batches so
    that both see the same machine conditions."""
    names = [name_of(0, i).encode() for i in range(rounds)]
    answers = [answer_of(0, i) for i in range(rounds)]
    via_ls: list[float] = []
    direct: list[float] = []
    batch = 100
    for start in range(0, rounds, batch):
        part = slice(start, start + batch)
        via_ls += round_trips(cluster.ls_port, [n + b"\n" for n in names[part]], answers[part])
        ids = range(start + 1, start + 1 + len(names[part]))
        direct += round_trips(
            cluster.ts_ports[0],
            [b"%d %s\n" % (i, n) for i, n in zip(ids, names[part], strict=True)],
            [b"%d %s" % (i, a) for i, a in zip(ids, answers[part], strict=True)],
        )
    return via_ls, direct


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--queries", type=positive_int, default=200_000, help="queries per throughput run"
    )
    parser.add_argument("--clients", type=positive_int, default=4, help="concurrent clients")
    parser.add_argument("--rounds", type=positive_int, default=2000, help="one-at-a-time queries")
    parser.add_argument(
        "--tss",
        type=number_list(positive_int),
        default=[2, 8],
        help="TS counts to compare (default 2,8)",
    )
    parser.add_argument(
        "--logging",
        action="store_true",
        help="servers log as by default (a line per query) instead of --quiet",
    )
    args = parser.parse_args()
    counts = args.tss
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )
    print(
        f"{args.queries} queries from {args.clients} pipelining clients; "
        f"{args.rounds} one-at-a-time round trips; {NAMES_PER_TS} names per TS; "
        f"server logging {'on (a line per query)' if args.logging else 'off (--quiet)'}\n"
    )
    header = (
        f"{'TSs':>4} {'queries/s':>10} | {'p50 via LS':>10} {'p50 direct':>10} {'added':>8}"
        f" | {'p99 via LS':>10} {'p99 direct':>10} {'added':>8}"
    )
    print(header)
    print("-" * len(header))
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="lb-bench-") as workdir:
            cluster = Cluster(count, Path(workdir), args.logging)
            try:
                qps = throughput(cluster, count, args.queries, args.clients)
                via_ls, direct = latency(cluster, args.rounds)
            finally:
                cluster.stop()
        figures = []
        for fraction in (0.5, 0.99):
            ls_us, ts_us = (percentile(v, fraction) * 1e6 for v in (via_ls, direct))
            figures.append(f"{ls_us:8.0f}us {ts_us:8.0f}us {ls_us - ts_us:6.0f}us")
        print(f"{count:>4} {qps:>10,.0f} | {figures[0]} | {figures[1]}")
    print("\nadded: how much longer one query takes through the LS than asked of a TS directly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
