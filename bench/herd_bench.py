"""The herd against the public implementations' style, side by side in one run.

    python bench/herd_bench.py [--seconds S] [--samples N]

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
Prints ratios ours/baseline. The machine may be shared: say so with the figures.
"""

from __future__ import annotations

import argparse
import multiprocessing
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


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure_herd(label, ports: dict[str, int], pids: dict[str, int], args) -> dict:
    result = {}
    latencies = flood_latency(ports["Hands"], ports["Welsh"], args.samples)
    result["flood p50 ms"] = statistics.median(latencies) * 1000
    result["flood p99 ms"] = percentile(latencies, 0.99) * 1000
    herd_pids = list(pids.values())
    for clients in (1, 8):
        rate, cpu = throughput("iamat", ports["Goloman"], clients, args.seconds, herd_pids)
        result[f"IAMAT/s, {clients} client(s)"] = rate
        result[f"herd CPU ms/update, {clients} client(s)"] = cpu * 1000
    for clients in (1, 8):
        rate, _ = throughput("whatsat", ports["Goloman"], clients, args.seconds, herd_pids)
        result[f"WHATSAT/s, {clients} client(s)"] = rate
    result["memory bytes/client"] = memory_per_client(ports["Wilkes"], pids["Wilkes"])
    print(f"  measured {label}", flush=True)
    return result


def table(title: str, names: tuple[str, str], rows: dict[str, tuple[float, float]]) -> None:
    print(f"\n{title}")
    print(f"  {'':38} {names[0]:>12} {names[1]:>12} {'ratio':>8}")
    for key, (ours, theirs) in rows.items():
        ratio = ours / theirs if theirs else float("nan")
        print(f"  {key:38} {ours:12.2f} {theirs:12.2f} {ratio:8.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput run")
    parser.add_argument("--samples", type=int, default=300, help="flood latency samples")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="herd-bench-") as tmp:
        directory = Path(tmp)
        ours = Herd(directory, "--quiet")
        baseline_processes: dict[str, Process] = {}
        solo_processes: list[Process] = []
        try:
            ours.start()
            ours.wait_links()
            baseline_config, baseline_processes = start_baseline(directory)
            print(
                f"both herds up on loopback ({multiprocessing.cpu_count()} cores, machine shared)"
            )
            ours_result = measure_herd(
                "ours", {n: ours.port(n) for n in ours.config.servers},
                {n: p.pid for n, p in ours.processes.items()}, args,
            )  # fmt: skip
            baseline_result = measure_herd(
                "baseline", {n: e.port for n, e in baseline_config.servers.items()},
                {n: p.pid for n, p in baseline_processes.items()}, args,
            )  # fmt: skip
            ours.stop()
            for process in baseline_processes.values():
                process.stop()
            # Like for like: one server alone, small writes, --sync no for the hash table.
            solo_dir = directory / "solo"
            solo_dir.mkdir()
            port = free_config(solo_dir / "unused.json").servers["Goloman"].port
            solo = Herd(solo_dir, "--quiet", config=HerdConfig(
                "solo", {"Solo": ServerAddress("Solo", "127.0.0.1", port, port + 1)}, frozenset()))  # fmt: skip
            solo.start()
            ht, ht_port = start_hashtable_server("bench-herd", directory / "ht", "127.0.0.1:1",
                                                 directory, "--sync", "no", "--quiet")  # fmt: skip
            solo_processes = [solo.processes["Solo"], ht]
            like = {}
            for clients in (1, 8):
                herd_rate, herd_cpu = throughput("iamat", port, clients, args.seconds,
                                                 [solo.processes["Solo"].pid])  # fmt: skip
                ht_rate, ht_cpu = throughput("insert", ht_port, clients, args.seconds, [ht.pid])
                like[f"writes/s, {clients} client(s)"] = (herd_rate, ht_rate)
                like[f"server CPU us/write, {clients} client(s)"] = (herd_cpu * 1e6, ht_cpu * 1e6)
            solo.stop()
        finally:
            ours.stop()
            for process in [*baseline_processes.values(), *solo_processes]:
                process.stop()
    table("herd: ours vs the public implementations' style (new connection per flooded message)",
          ("ours", "baseline"), {k: (ours_result[k], baseline_result[k]) for k in ours_result})  # fmt: skip
    table("like for like: lone herd server (asyncio) vs hash table server (selectors, --sync no)",
          ("herd", "hashtable"), like)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
