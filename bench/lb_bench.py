"""The LS under load: throughput with 2 and 8 TSs, and the latency it adds, with the
TSs in plain text and over TLS, side by side.

    python bench/lb_bench.py [--queries N] [--clients C] [--rounds R] [--tss 2,8]
                             [--modes plain,tls] [--repeats 3] [--logging]

For each TS count and mode, starts that many TSs (each holding its own share of
the names) and an LS over them, all on loopback with logging off. ``plain``: the
TSs given to the LS as host/port pairs (the assignment's plain text); ``tls``:
TSs and LS with ``--project``, the LS finding them through our catalog and
linked to each by mutual TLS with a secret of the benchmark's own. Then it measures:
  throughput  C clients at once, each sending N/C names without waiting
              (lb.resolver.resolve, as python -m lb.client does); every name is
              in exactly one table, so every query is answered (no time-outs);
  latency     one query at a time on one connection, R rounds: through the LS,
              and straight to a TS with the LS's own wire format (ID NAME), in
              the same run; the difference is what the LS adds (straight to
              a TS means over TLS too in the tls mode).
Every answer is checked. Figures depend on the machine; it is printed first.
Both modes' clusters run at once and their runs alternate (``--repeats`` each),
so that both see the same machine; the median is printed with the range, and
the last column gives tls throughput as a fraction of plain.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.processes import Process, free_port, python_module, tcp_open, wait_until  # noqa: E402
from harness.procfs import cpu_seconds  # noqa: E402
from harness.services import start_catalog  # noqa: E402
from lb.discovery import TS_TYPE  # noqa: E402
from lb.resolver import resolve  # noqa: E402
from netkit.cliargs import number_list, positive_int  # noqa: E402
from netkit.framing import LineFramer  # noqa: E402
from netkit.security import SECRET_ENV, load_secret, service_name  # noqa: E402

NAMES_PER_TS = 5000
MODES = ("plain", "tls")
PROJECT = "lb-bench"


def name_of(ts: int, i: int) -> str:
    return f"host{i}.ts{ts}.example"


def answer_of(ts: int, i: int) -> bytes:
    return f"{name_of(ts, i)} 10.{ts}.{i // 250}.{i % 250} A IN".encode()


class Cluster:
    """``count`` TSs and an LS over them, stopped by ``stop()``; with ``secure``,
    a catalog too, and TSs and LS of one project linked by TLS."""

    def __init__(self, logging: bool) -> None:
        self.quiet = [] if logging else ["--quiet"]
        self.processes: list[Process] = []
        self.ts_ports: list[int] = []
        self.ls_port = 0
        self.env: dict[str, str] = {}
        self.connect: Callable[[int], socket.socket] = loopback

    def start(self, count: int, workdir: Path, secure: bool) -> None:
        project: list[str] = []
        announce: list[str] = []
        if secure:
            secret_file = workdir / "secret"
            context = load_secret(secret_file, create=True).client_context()
            catalog, catalog_port = start_catalog(workdir / "catalog", workdir)
            self.processes.append(catalog)
            self.env = {SECRET_ENV: str(secret_file), "CATALOG_HOST": f"127.0.0.1:{catalog_port}"}
            self.connect = lambda port: context.wrap_socket(
                loopback(port), server_hostname=service_name(TS_TYPE, PROJECT)
            )
            project = ["--project", PROJECT]
            # Announced often: a datagram lost on a busy machine costs 2 s, not a minute.
            announce = ["--announce-interval", "2"]
        for ts in range(count):
            table = workdir / f"ts{ts}.txt"
            table.write_bytes(
                b"".join(answer_of(ts, i)[: -len(b" IN")] + b"\n" for i in range(NAMES_PER_TS))
            )
            port = free_port()
            command = ["lb.ts", str(port), str(table), *project, *announce]
            self._start(command, port, workdir / f"ts{ts}.log")
            self.ts_ports.append(port)
        self.ls_port = free_port()
        if secure:
            tss = [*project, "--refresh", "0.2"]
        else:
            tss = [word for port in self.ts_ports for word in ("127.0.0.1", str(port))]
        self._start(["lb.ls", str(self.ls_port), *tss], self.ls_port, workdir / "ls.log")
        # Through the catalog, the LS links the TSs as it finds them.
        names = [name_of(ts, 0).encode() for ts in range(count)]
        answers = [answer_of(ts, 0) for ts in range(count)]
        try:
            wait_until(
                lambda: resolve("127.0.0.1", self.ls_port, names, wait=30) == answers,
                timeout=60,
                what="the LS to use every TS",
            )
        except TimeoutError:
            raise SystemExit(
                f"the LS does not use every TS:\n{self.processes[-1].output()[-3000:]}"
            ) from None

    def _start(self, module_args: list[str], port: int, log: Path) -> None:
        module, *args = module_args
        process = Process(
            python_module(module, *args, "--host", "127.0.0.1", *self.quiet), log, env=self.env
        )
        self.processes.append(process)
        wait_until(lambda: tcp_open("127.0.0.1", port) or not process.alive(), what=module)
        if not process.alive():
            raise SystemExit(f"{module} did not start:\n{process.output()}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def loopback(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port))


def workload(count: int, queries: int, offset: int) -> tuple[list[bytes], list[bytes]]:
    """``queries`` names spread over the ``count`` TSs, and their answers."""
    picks = [((offset + n) % count, (offset * 7919 + n) % NAMES_PER_TS) for n in range(queries)]
    return [name_of(ts, i).encode() for ts, i in picks], [answer_of(ts, i) for ts, i in picks]


def throughput(cluster: Cluster, count: int, queries: int, clients: int) -> tuple[float, float]:
    """Queries per second, and the CPU time the LS spent per query (seconds): a
    figure that other load on the machine disturbs far less than the rate."""
    share = queries // clients
    loads = [workload(count, share, offset) for offset in range(clients)]

    def run(load: tuple[list[bytes], list[bytes]]) -> None:
        names, expected = load
        if resolve("127.0.0.1", cluster.ls_port, names, wait=30) != expected:
            raise SystemExit("wrong answers through the LS")

    run(workload(count, 200, 99))  # warm-up: connections made, code paths hot
    ls_pid = cluster.processes[-1].pid
    cpu = cpu_seconds(ls_pid)
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, loads))
    elapsed = time.perf_counter() - started
    return share * clients / elapsed, (cpu_seconds(ls_pid) - cpu) / (share * clients)


def round_trips(
    sock: socket.socket | ssl.SSLSocket, lines: list[bytes], expected: list[bytes]
) -> list[float]:
    """Seconds per request/answer on ``sock`` (closed afterwards), one at a time."""
    times = []
    with sock:
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
        via_ls += round_trips(
            loopback(cluster.ls_port), [n + b"\n" for n in names[part]], answers[part]
        )
        ids = range(start + 1, start + 1 + len(names[part]))
        direct += round_trips(
            cluster.connect(cluster.ts_ports[0]),
            [b"%d %s\n" % (i, n) for i, n in zip(ids, names[part], strict=True)],
            [b"%d %s" % (i, a) for i, a in zip(ids, answers[part], strict=True)],
        )
    return via_ls, direct


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def mode_list(text: str) -> list[str]:
    modes = [mode for mode in text.split(",") if mode]
    if not modes or any(mode not in MODES for mode in modes):
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)}, comma-separated")
    return modes


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
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="throughput runs per mode (default 3)"
    )
    parser.add_argument(
        "--modes",
        type=mode_list,
        default=list(MODES),
        help="plain (TSs as pairs), tls (TSs through the catalog, over TLS); default both",
    )
    args = parser.parse_args()
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
        f"{'TSs':>4} {'mode':>5} {'queries/s':>10} {'(range)':>17} | {'p50 via LS':>10}"
        f" {'p50 direct':>10} {'added':>8} | {'p99 via LS':>10} {'p99 direct':>10} {'added':>8}"
        f" | {'vs plain':>8} | {'LS CPU/query':>12} {'vs plain':>8}"
    )
    print(header)
    print("-" * len(header))
    for count in args.tss:
        runs, times = compare(count, args)
        rates = {mode: [rate for rate, _ in runs[mode]] for mode in runs}
        cpus = {mode: statistics.median(cpu for _, cpu in runs[mode]) for mode in runs}
        plain = statistics.median(rates["plain"]) if "plain" in runs else None
        for mode in args.modes:
            qps = statistics.median(rates[mode])
            spread = f"({min(rates[mode]) / 1000:.0f}k-{max(rates[mode]) / 1000:.0f}k)"
            figures = []
            for fraction in (0.5, 0.99):
                ls_us, ts_us = (percentile(v, fraction) * 1e6 for v in times[mode])
                figures.append(f"{ls_us:8.0f}us {ts_us:8.0f}us {ls_us - ts_us:6.0f}us")
            ratio = f"{qps / plain:8.2f}" if plain else f"{'':8}"
            cpu_ratio = f"{cpus[mode] / cpus['plain']:8.2f}" if plain else f"{'':8}"
            print(
                f"{count:>4} {mode:>5} {qps:>10,.0f} {spread:>17} | {figures[0]} | {figures[1]}"
                f" | {ratio} | {cpus[mode] * 1e6:10.1f}us {cpu_ratio}"
            )
    print("\nqueries/s: the median of the runs (range: slowest and fastest); vs plain: of medians")
    print("LS CPU/query: CPU time (user+system) the LS process spent per query, median")
    print("added: how much longer one query takes through the LS than asked of a TS directly")
    return 0


def compare(
    count: int, args: argparse.Namespace
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, tuple[list[float], list[float]]]]:
    """Every mode's cluster up at once, and their runs taken in turn (throughput,
    then latency in slices), so that all see the same machine: on a shared one,
    what else runs changes from second to second. Returns each mode's
    throughputs (with the LS's CPU per query), and its round trips via the LS and direct."""
    clusters = {mode: Cluster(args.logging) for mode in args.modes}
    runs: dict[str, list[tuple[float, float]]] = {mode: [] for mode in clusters}
    times: dict[str, tuple[list[float], list[float]]] = {mode: ([], []) for mode in clusters}
    with tempfile.TemporaryDirectory(prefix="lb-bench-") as workdir:
        try:
            for mode, cluster in clusters.items():
                directory = Path(workdir) / mode
                directory.mkdir()
                cluster.start(count, directory, secure=mode == "tls")
            for _ in range(args.repeats):
                for mode, cluster in clusters.items():
                    runs[mode].append(throughput(cluster, count, args.queries, args.clients))
            for _ in range(args.repeats):
                for mode, cluster in clusters.items():
                    via_ls, direct = latency(cluster, max(1, args.rounds // args.repeats))
                    times[mode][0].extend(via_ls)
                    times[mode][1].extend(direct)
        finally:
            for cluster in clusters.values():
                cluster.stop()
    return runs, times


if __name__ == "__main__":
    sys.exit(main())
