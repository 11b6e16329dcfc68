"""How long a burst of small, highly compressed datagrams keeps honest updates out.

    .venv/bin/python bench/catalog_bomb.py [--seconds 3] [--tree PATH]

Starts a catalog (the one in ``--tree``, this checkout by default: give an
exported older tree to compare), sends it for ``--seconds`` as many copies as it
can of a 326-byte datagram that expands to 261 KB of ``[{},{},...]``, then
announces an honest record every 50 ms and reports how long after the burst it
was listed (the recovery), the journal's size, and the catalog's memory.
The real cctools catalog_server recovered in about 3 s from the same burst.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import orjson
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.processes import free_port, tcp_open, wait_until  # noqa: E402

BOMB = b"\x1a" + zlib.compress(
    b'{"type":"amp","port":9000,"a":[' + b",".join([b"{}"] * 87000) + b"]}", 9
)
GIVE_UP = 180.0  # seconds after the burst


def listed(port: int) -> bool:
    try:
        answer = requests.get(f"http://127.0.0.1:{port}/query.json", timeout=5)
    except requests.RequestException:
        return False
    return answer.ok and any(r.get("type") == "honest" for r in orjson.loads(answer.content))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the burst")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the project tree to run")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as state:
        env = {**os.environ, "PYTHONPATH": str(args.tree.resolve())}
        command = [sys.executable, "-m", "catalog", "--port", str(port), "--state-dir", state]
        catalog = subprocess.Popen(
            command, cwd=args.tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_until(lambda: tcp_open("127.0.0.1", port), what="the catalog to listen")
            sent = 0
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                end = time.monotonic() + args.seconds
                while time.monotonic() < end:
                    try:
                        sock.sendto(BOMB, ("127.0.0.1", port))
                        sent += 1
                    except OSError:
                        pass
                burst_end = time.monotonic()
                honest = orjson.dumps({"type": "honest", "port": 1})
                while not listed(port) and time.monotonic() - burst_end < GIVE_UP:
                    sock.sendto(honest, ("127.0.0.1", port))
                    time.sleep(0.05)
            recovery = time.monotonic() - burst_end
            journal = sum(p.stat().st_size for p in Path(state).glob("journal.*"))
            print(
                f"tree {args.tree}: {sent} datagrams ({sent * len(BOMB) / 1e6:.1f} MB) in "
                f"{args.seconds:g} s; honest update listed {recovery:.2f} s after the burst"
                f"{' (gave up)' if recovery >= GIVE_UP else ''}; journal {journal / 1e6:.1f} MB; "
                f"peak RSS {rss_mib(catalog.pid):.0f} MiB"
            )
        finally:
            catalog.send_signal(signal.SIGTERM)
            catalog.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
