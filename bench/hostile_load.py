"""The hash table under hostile load, measured: do the secret's holders still get served?

    python bench/hostile_load.py [--idle 10000] [--loris 200] [--sessions 100000]

1. Floods: ``--idle`` TCP connections opened and held doing nothing, and
   ``--loris`` slow-loris ones trickling a TLS handshake a byte at a time. Then
   a new authenticated client connects: how long until its first reply (the
   target: within 1 s), and a well-behaved client's request latency (p50, p99)
   before and during the flood.
2. A storm of ``--sessions`` fake sessions (each a new client id's first insert,
   sent by a holder of the secret, since nobody else can create one) while five
   honest clients hold sessions: every honest client then keeps writing, and
   counts its errors (the target: none).
3. The server's log: bytes written during each attack (repeated events are
   summarized, not logged one by one), and its resident memory.

The attacker runs in this process; its descriptors are raised to the hard limit.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.procfs import memory_kib  # noqa: E402
from harness.services import start_hashtable_server  # noqa: E402
from hashtable.client import HashTableClient  # noqa: E402
from netkit.cliargs import positive_int  # noqa: E402
from netkit.security import load_secret  # noqa: E402
from netkit.tls import TlsSession, handshake_blocking  # noqa: E402


def latencies(port: int, count: int) -> list[float]:
    with HashTableClient.at("127.0.0.1", port) as client:
        client.insert("probe", 1)
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            client.lookup("probe")
            samples.append(time.perf_counter() - started)
    return samples


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def first_reply_seconds(port: int) -> float:
    started = time.perf_counter()
    with HashTableClient.at("127.0.0.1", port, timeout=5.0) as client:
        client.size()
    return time.perf_counter() - started


def flood(port: int, idle: int, loris: int, stop: threading.Event) -> list[socket.socket]:
    """Opens the idle connections (as fast as it can) and starts the slow ones."""
    held = []
    for _ in range(idle):
        try:
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break  # out of descriptors, or the backlog full: hold what we have
    slow = []
    for _ in range(loris):
        try:
            slow.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break

    def trickle() -> None:
        hello = b"\x16\x03\x01\x02\x00" + b"\x01" * 600  # a handshake that never ends
        sent = 0
        while not stop.is_set():
            for sock in list(slow):
                try:
                    sock.send(hello[sent % len(hello) : sent % len(hello) + 1])
                except OSError:
                    slow.remove(sock)
                    with contextlib.suppress(OSError):  # dropped: the attacker comes back at once
                        slow.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            sent += 1
            stop.wait(0.5)

    threading.Thread(target=trickle, daemon=True).start()
    return held + slow


def session_storm(port: int, sessions: int) -> float:
    """``sessions`` new client ids, one insert each, pipelined over one connection."""
    context = load_secret().client_context()
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        tls = TlsSession(context, server_side=False)
        handshake_blocking(sock, tls)
        batch = 2000
        for start in range(0, sessions, batch):
            lines = b"".join(
                orjson.dumps(
                    {
                        "method": "insert",
                        "key": f"storm-{n}",
                        "value": n,
                        "client": f"fake-{n}",
                        "seq": 1,
                    }
                )
                + b"\n"
                for n in range(start, min(sessions, start + batch))
            )
            tls.send(lines)
            sock.sendall(tls.take_output())
            replies = 0
            while replies < min(batch, sessions - start):
                replies += tls.feed(sock.recv(1 << 16)).count(b"\n")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--idle", type=positive_int, default=10_000)
    parser.add_argument("--loris", type=positive_int, default=200)
    parser.add_argument("--sessions", type=positive_int, default=100_000)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="hostile-load-") as scratch:
        work = Path(scratch)
        process, port = start_hashtable_server("hostile", work / "data", "127.0.0.1:1", work)
        log = work / "server-hostile.log"
        try:
            quiet = latencies(port, 500)
            size_before = log.stat().st_size
            stop = threading.Event()
            attackers = flood(port, args.idle, args.loris, stop)
            time.sleep(1.0)  # the attack in full swing (a pace, not a condition)
            first = first_reply_seconds(port)
            attacked = latencies(port, 500)
            print(
                f"flood: {len(attackers)} attacker connections held ({args.idle} idle asked, "
                f"{args.loris} slow-loris); a new authenticated client's first reply in "
                f"{first * 1000:.0f} ms (target: under 1000)"
            )
            print(
                f"  a client's lookups: p50 {percentile(quiet, 50):.2f} -> "
                f"{percentile(attacked, 50):.2f} ms, p99 {percentile(quiet, 99):.2f} -> "
                f"{percentile(attacked, 99):.2f} ms (alone -> under the flood)"
            )
            stop.set()
            for sock in attackers:
                sock.close()
            print(
                f"  the server's log grew {log.stat().st_size - size_before:,} bytes; "
                f"resident {memory_kib(process.pid)[0] // 1024} MiB"
            )
            honest = [HashTableClient.at("127.0.0.1", port) for _ in range(5)]
            for n, client in enumerate(honest):
                client.insert(f"honest-{n}", 0)
            size_before = log.stat().st_size
            storm = session_storm(port, args.sessions)
            errors = 0
            for round_ in range(1, 11):
                for n, client in enumerate(honest):
                    try:
                        client.insert(f"honest-{n}", round_)
                        if client.lookup(f"honest-{n}") != round_:
                            errors += 1
                    except Exception:  # counted: the figure is how many
                        errors += 1
            print(
                f"session storm: {args.sessions:,} new sessions in {storm:.1f} s; the 5 honest "
                f"clients' 100 writes and reads after it: {errors} errors (target: none)"
            )
            print(
                f"  the server's log grew {log.stat().st_size - size_before:,} bytes; "
                f"resident {memory_kib(process.pid)[0] // 1024} MiB"
            )
            for client in honest:
                client.close()
        finally:
            process.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
