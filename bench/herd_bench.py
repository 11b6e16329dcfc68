"""The herd against the public implementations' style, side by side in one run.

    python bench/herd_bench.py [--seconds S] [--samples N]
    git worktree add --detach /tmp/herd-before HEAD~1       # A/B: the same run, two trees
    python bench/herd_bench.py --before /tmp/herd-before [--repeat 3] [--skip baseline,like]

Starts two five-server herds on loopback: ours (python -m herd) and the baseline
(bench/herd_baseline.py: a new TCP connection per flooded message, as the
published solutions do), and measures both with the same clients:
  - flood latency from Hands to Welsh, the farthest pair (3 hops), p50 and p99:
    an IAMAT at Hands, then WHATSATs at Welsh until it answers with that update;
  - IAMAT and WHATSAT throughput at one server (Goloman) with 1 and 8 clients,
    each sending a command and waiting for its reply;
  - CPU per update summed over the five servers (/proc), during the IAMAT runs;
  - memory per client: a server's resident size grown by 5,000 new clients.
Then the like-for-like comparison with this project's selectors-based hash table
server: a lone herd server (no neighbours) taking IAMATs against the hash table
taking inserts of the same size with --sync no, same clients, same counts.
Prints ratios ours/baseline. The machine may be shared: say so with the figures
(the load average is printed before and after).

``--before TREE`` also measures the herd of another checkout, started alongside
ours and measured in alternation with it (``--repeat`` rounds, medians), so
that the machine's drift hits both alike; ``--before-args``/``--ours-args``
give either extra server options (``--before . --before-args "--loop asyncio"``
compares the event loops; a lone option needs ``=``, as in ``--before-args=--no-auth``,
or argparse takes it for one of the benchmark's own).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.herd import Herd, free_config  # noqa: E402
from harness.processes import Process, python_script, tcp_open, wait_until  # noqa: E402
from harness.procfs import cpu_seconds, memory_kib  # noqa: E402
from harness.services import start_hashtable_server  # noqa: E402
from herd.config import HerdConfig, ServerAddress  # noqa: E402

LOCATION = "+34.068930-118.445127"


class Replies:
    """Reads herd replies from a socket: ``?``/AT lines end with one newline, WHATSAT with two."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, b""

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        reply, _, self.buffer = self.buffer.partition(marker)
        return reply

    def line(self) -> bytes:
        return self._until(b"\n")

    def whatsat(self) -> bytes:
        first = self.line()
        if first.startswith(b"?"):
            return first
        self._until(b"\n\n")
        return first


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def flood_latency(source: int, target: int, samples: int) -> list[float]:
    """Seconds from sending an IAMAT at ``source`` until ``target`` answers with it."""
    send, poll = connect(source), connect(target)
    send_replies, poll_replies = Replies(send), Replies(poll)
    latencies = []
    for i in range(samples):
        client = f"lat-{i}-{time.time_ns()}"
        started = time.perf_counter()
        send.sendall(f"IAMAT {client} {LOCATION} {time.time():.9f}\n".encode())
        while True:
            poll.sendall(f"WHATSAT {client} 0.01 1\n".encode())
            if poll_replies.whatsat().startswith(b"AT "):
                break
        latencies.append(time.perf_counter() - started)
        send_replies.line()
        time.sleep(0.002)
    send.close()
    poll.close()
    return latencies


def _worker(args: tuple[str, int, int, float, int]) -> int:
    kind, port, worker, seconds, start_at = args
    sock = connect(port)
    replies = Replies(sock)
    while time.time() < start_at:
        time.sleep(0.001)
    deadline, done = time.perf_counter() + seconds, 0
    if kind == "whatsat":
        sock.sendall(f"IAMAT w{worker} {LOCATION} 1600000000\n".encode())
        replies.line()
    while time.perf_counter() < deadline:
        if kind == "iamat":
            sock.sendall(f"IAMAT c{worker}-{done % 1000} {LOCATION} {time.time():.9f}\n".encode())
            replies.line()
        elif kind == "whatsat":
            sock.sendall(f"WHATSAT w{worker} 10 5\n".encode())
            replies.whatsat()
        else:  # the hash table: an insert of an IAMAT's worth of data
            line = f'{{"method":"insert","key":"c{worker}-{done % 1000}","value":"{LOCATION} {time.time():.9f}"}}\n'
            sock.sendall(line.encode())
            replies.line()
        done += 1
    sock.close()
    return done


def throughput(
    kind: str, port: int, clients: int, seconds: float, pids: list[int]
) -> tuple[float, float]:
    """(requests per second, CPU seconds of ``pids`` per request)."""
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    start_at = time.time() + 0.5
    with multiprocessing.Pool(clients) as pool:
        counts = pool.map(_worker, [(kind, port, w, seconds, start_at) for w in range(clients)])
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    total = sum(counts)
    return total / seconds, cpu / max(total, 1)


def memory_per_client(port: int, pid: int, clients: int = 5000) -> float:
    """Bytes of resident memory per new client at the server on ``port``."""
    before = memory_kib(pid)[0]
    sock = connect(port)
    replies = Replies(sock)
    batch = 1000
    for start in range(0, clients, batch):
        sock.sendall(
            "".join(
                f"IAMAT mem{start + i} {LOCATION} 1600000000.5\n" for i in range(batch)
            ).encode()
        )
        for _ in range(batch):
            replies.line()
    sock.close()
    time.sleep(0.5)
    return (memory_kib(pid)[0] - before) * 1024 / clients


def start_baseline(directory: Path) -> tuple[HerdConfig, dict[str, Process]]:
    config = free_config(directory / "baseline.json")
    processes = {}
    for name in config.servers:
        processes[name] = Process(
            python_script("bench/herd_baseline.py", name, "--config", str(directory / "baseline.json"),
                          "--log-file", str(directory / f"baseline-{name}.log")),
            directory / f"baseline-{name}.out",
        )  # fmt: skip
    for name, entry in config.servers.items():
        wait_until(lambda entry=entry: tcp_open("127.0.0.1", entry.port), timeout=60, what=name)
    return config, processes


def start_floor(directory: Path, *extra: str) -> tuple[HerdConfig, dict[str, Process]]:
    """bench/herd_floor.py's five servers, once every one has its links."""
    path = directory / "floor.json"
    config = free_config(path)
    processes = {
        name: Process(
            python_script("bench/herd_floor.py", name, "--config", str(path), *extra),
            directory / f"floor-{name}.out",
        )
        for name in config.servers
    }

    def links(name: str) -> str:
        lines = [line for line in processes[name].output().splitlines() if line.startswith("links")]
        return lines[-1] if lines else ""

    for name in config.servers:
        expected = f"links {','.join(config.neighbours(name))}"
        wait_until(lambda name=name, expected=expected: links(name) == expected, timeout=60,
                   what=f"floor {name}'s links")  # fmt: skip
    return config, processes


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure_herd(label, ports: dict[str, int], pids: dict[str, int], args, everything=True) -> dict:
    """The figures of one herd; ``everything=False``: flood latency and IAMATs only."""
    result = {}
    latencies = flood_latency(ports["Hands"], ports["Welsh"], args.samples)
    result["flood p50 ms"] = statistics.median(latencies) * 1000
    result["flood p99 ms"] = percentile(latencies, 0.99) * 1000
    herd_pids = list(pids.values())
    for clients in (1, 8):
        rate, cpu = throughput("iamat", ports["Goloman"], clients, args.seconds, herd_pids)
        result[f"IAMAT/s, {clients} client(s)"] = rate
        result[f"herd CPU ms/update, {clients} client(s)"] = cpu * 1000
    if not everything:
        print(f"  measured {label}", flush=True)
        return result
    for clients in (1, 8):
        rate, _ = throughput("whatsat", ports["Goloman"], clients, args.seconds, herd_pids)
        result[f"WHATSAT/s, {clients} client(s)"] = rate
    result["memory bytes/client"] = memory_per_client(ports["Wilkes"], pids["Wilkes"])
    print(f"  measured {label}", flush=True)
    return result


def table(title: str, columns: dict[str, dict[str, float]], ratios: list[tuple[str, str]]) -> None:
    print(f"\n{title}")
    header = "".join(f" {label[:14]:>14}" for label in columns)
    header += "".join(f" {a[:6] + '/' + b[:6]:>14}" for a, b in ratios)
    print(f"  {'':38}{header}")
    for key in next(iter(columns.values())):
        row = "".join(
            f" {column[key]:14.2f}" if key in column else f" {'':14}" for column in columns.values()
        )
        for a, b in ratios:
            ours, theirs = columns[a].get(key), columns[b].get(key)
            row += f" {ours / theirs:14.2f}" if ours is not None and theirs else f" {'':14}"
        print(f"  {key:38}{row}")


def medians(results: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def checkout(text: str) -> Path:
    path = Path(text).resolve()
    if not (path / "server.py").is_file() or not (path / "herd").is_dir():
        raise argparse.ArgumentTypeError(f"{text}: not a checkout with the herd (server.py, herd/)")
    return path


PARTS = ("baseline", "floor", "like")


def part_list(text: str) -> list[str]:
    names = [name for name in text.split(",") if name]
    if unknown := [name for name in names if name not in PARTS]:
        raise argparse.ArgumentTypeError(
            f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}"
        )
    return names


def herd_ports(herd: Herd) -> tuple[dict[str, int], dict[str, int]]:
    return (
        {name: herd.port(name) for name in herd.config.servers},
        {name: process.pid for name, process in herd.processes.items()},
    )


def like_for_like(directory: Path, seconds: float, *extra: str) -> dict[str, tuple[float, float]]:
    """A lone herd server against the hash table server, same clients, same counts."""
    solo_dir = directory / "solo"
    solo_dir.mkdir()
    port = free_config(solo_dir / "unused.json").servers["Goloman"].port
    solo = Herd(solo_dir, "--quiet", *extra, config=HerdConfig(
        "solo", {"Solo": ServerAddress("Solo", "127.0.0.1", port, port + 1)}, frozenset()))  # fmt: skip
    ht = None
    try:
        solo.start()
        # Plain text on both sides: herd clients speak the assignment's plain protocol.
        ht, ht_port = start_hashtable_server("bench-herd", directory / "ht", "127.0.0.1:1",
                                             directory, "--sync", "no", "--quiet",
                                             "--no-auth")  # fmt: skip
        like = {}
        for clients in (1, 8):
            herd_rate, herd_cpu = throughput("iamat", port, clients, seconds,
                                             [solo.processes["Solo"].pid])  # fmt: skip
            ht_rate, ht_cpu = throughput("insert", ht_port, clients, seconds, [ht.pid])
            like[f"writes/s, {clients} client(s)"] = (herd_rate, ht_rate)
            like[f"server CPU us/write, {clients} client(s)"] = (herd_cpu * 1e6, ht_cpu * 1e6)
        return like
    finally:
        solo.stop()
        if ht is not None:
            ht.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput run")
    parser.add_argument("--samples", type=int, default=300, help="flood latency samples")
    parser.add_argument("--before", type=checkout, help="also measure this checkout's herd")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of ours (and --before)")
    parser.add_argument(
        "--ours-args",
        default="",
        help="extra options for our servers (a lone option: --ours-args=--no-auth)",
    )
    parser.add_argument(
        "--before-args", default="", help="extra options for --before's (--before-args=--no-auth)"
    )
    parser.add_argument("--skip", type=part_list, default=[], help=f"of: {', '.join(PARTS)}")
    parser.add_argument(
        "--floor-args", default="", help="for bench/herd_floor.py: --loop, --log-dir"
    )
    args = parser.parse_args()
    if args.repeat < 1 or args.seconds <= 0 or args.samples < 1:
        parser.error("--repeat, --seconds and --samples must be positive")
    print(f"{multiprocessing.cpu_count()} cores, machine shared; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the start", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="herd-bench-") as tmp:
        directory = Path(tmp)
        herds = {"ours": Herd(directory, "--quiet", *args.ours_args.split(), name="ours")}
        if args.before is not None:
            herds["before"] = Herd(directory, "--quiet", *args.before_args.split(),
                                   tree=args.before, name="before")  # fmt: skip
        baseline_processes: dict[str, Process] = {}
        floor_processes: dict[str, Process] = {}
        results: dict[str, list[dict[str, float]]] = {label: [] for label in [*herds, "floor"]}
        try:
            for herd in herds.values():
                herd.start()
                herd.wait_links()
            if "baseline" not in args.skip:
                baseline_config, baseline_processes = start_baseline(directory)
            if "floor" not in args.skip:
                floor_config, floor_processes = start_floor(directory, *args.floor_args.split())
            print("herds up on loopback", flush=True)
            for round_ in range(args.repeat):
                # Alternate which goes first, so that neither always runs on a warmer machine.
                order = list(herds) if round_ % 2 == 0 else list(reversed(herds))
                for label in order:
                    results[label].append(measure_herd(label, *herd_ports(herds[label]), args))
                if floor_processes:
                    results["floor"].append(measure_herd(
                        "floor", {n: e.port for n, e in floor_config.servers.items()},
                        {n: p.pid for n, p in floor_processes.items()}, args, everything=False,
                    ))  # fmt: skip
            columns = {label: medians(runs) for label, runs in results.items() if runs}
            if baseline_processes:
                columns["baseline"] = measure_herd(
                    "baseline", {n: e.port for n, e in baseline_config.servers.items()},
                    {n: p.pid for n, p in baseline_processes.items()}, args,
                )  # fmt: skip
        finally:
            for herd in herds.values():
                herd.stop()
            for process in [*baseline_processes.values(), *floor_processes.values()]:
                process.stop()
        like = (
            like_for_like(directory, args.seconds, *args.ours_args.split())
            if "like" not in args.skip
            else None
        )
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    ratios = [("ours", other) for other in columns if other != "ours"]
    title = "herd: ours"
    if "before" in columns:
        title += f", before ({args.before}{' ' + args.before_args if args.before_args else ''})"
    if "baseline" in columns:
        title += ", the public implementations' style (new connection per flooded message)"
    if "floor" in columns:
        title += ", the floor (bench/herd_floor.py: the same messages and nothing else)"
    if args.repeat > 1:
        title += f"; medians of {args.repeat} rounds"
    table(title, columns, ratios)
    if like is not None:
        table("like for like: lone herd server (asyncio API) vs hash table server (selectors, --sync no)",
              {"herd": {k: v[0] for k, v in like.items()},
               "hashtable": {k: v[1] for k, v in like.items()}}, [("herd", "hashtable")])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
