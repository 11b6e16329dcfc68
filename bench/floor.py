"""The physical floor under one client's durable insert, and where our time goes above it.

    python bench/floor.py [--seconds 6]      (bench/vs_redis.py prints it too)

A durable insert cannot take less than one loopback round trip plus one
fdatasync of a log record: the client must hear back, and the server must not
answer before the record is on disk. Both are measured here, in the same run
as our figure (bench/vs_redis.py calls ``report``). Above the floor, the time
goes to the CPU of the client and of the server (both Python); their
per-insert CPU times are measured in the same loop, so the report adds up.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.processes import free_port, tcp_open, wait_until
from harness.procfs import cpu_seconds

_ECHO = """
import socket, sys
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:  # the first connection is the readiness probe's
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.close()
"""


def loopback_round_trip(seconds: float, size: int = 120) -> float:
    """The median time (s) for ``size`` bytes to go to an echo process and back."""
    port = free_port()
    echo = subprocess.Popen([sys.executable, "-c", _ECHO, str(port)])
    try:
        wait_until(lambda: tcp_open("127.0.0.1", port), what="the echo process")
        times = []
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            message = b"x" * (size - 1) + b"\n"
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                started = time.perf_counter()
                sock.sendall(message)
                received = 0
                while received < size:
                    received += len(sock.recv(65536))
                times.append(time.perf_counter() - started)
        return statistics.median(times)
    finally:
        echo.kill()
        echo.wait()


def preallocated_fdatasync(directory: Path, seconds: float, size: int = 120) -> float:
    """The median time (s) of a ``size``-byte pwrite + fdatasync into preallocated space."""
    fd = os.open(directory / "floor-fsync", os.O_WRONLY | os.O_CREAT, 0o600)
    times, offset = [], 0
    try:
        os.posix_fallocate(fd, 0, 64 << 20)
        record = b"x" * (size - 1) + b"\n"
        end = time.perf_counter() + seconds
        while time.perf_counter() < end and offset + size < 64 << 20:
            started = time.perf_counter()
            os.pwrite(fd, record, offset)
            os.fdatasync(fd)
            times.append(time.perf_counter() - started)
            offset += size
    finally:
        os.close(fd)
        os.unlink(directory / "floor-fsync")
    return statistics.median(times)


def one_client_inserts(client, server_pid: int, seconds: float, value: object) -> dict[str, float]:
    """One client's durable inserts for ``seconds``: wall time, client CPU and server
    CPU, each per insert (s)."""
    done = 0
    server_before, client_before = cpu_seconds(server_pid), time.process_time()
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        client.insert(f"floor-{done % 1000}", value)
        done += 1
    wall = time.perf_counter() - started
    return {
        "wall": wall / done,
        "client_cpu": (time.process_time() - client_before) / done,
        "server_cpu": (cpu_seconds(server_pid) - server_before) / done,
    }


def report(client, server_pid: int, directory: Path, seconds: float, value: object) -> None:
    """Prints the floor, our one-client durable insert, their ratio, and the breakdown."""
    ours = one_client_inserts(client, server_pid, seconds, value)
    rtt = loopback_round_trip(seconds / 2)
    sync = preallocated_fdatasync(directory, seconds / 2)
    floor = rtt + sync
    us = 1e6
    print(
        f"\nfloor for one client's durable insert: loopback round trip {rtt * us:.0f} us + "
        f"fdatasync of a record {sync * us:.0f} us = {floor * us:.0f} us ({1 / floor:,.0f}/s)\n"
        f"ours, one client (TLS): {ours['wall'] * us:.0f} us ({1 / ours['wall']:,.0f}/s), "
        f"{floor / ours['wall']:.2f} of the floor\n"
        f"  where it goes: client CPU {ours['client_cpu'] * us:.0f} us + server CPU "
        f"{ours['server_cpu'] * us:.0f} us + fdatasync {sync * us:.0f} us + the rest "
        f"(wake-ups, the kernel's loopback) "
        f"{(ours['wall'] - ours['client_cpu'] - ours['server_cpu'] - sync) * us:.0f} us"
    )


def main() -> int:
    import argparse
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from vs_redis import VALUE, start_ours, stop

    from netkit.cliargs import positive_seconds

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=positive_seconds, default=6.0, help="(default 6)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="floor-") as scratch:
        ours = start_ours(Path(scratch), "always")
        try:
            report(ours.connect(), ours.process.pid, Path(scratch), args.seconds, VALUE)
        finally:
            stop(ours)
    return 0


if __name__ == "__main__":
    sys.exit(main())
