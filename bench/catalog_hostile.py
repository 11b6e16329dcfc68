"""The catalog under hostile load: what a well-behaved client sees, alone and meanwhile.

    .venv/bin/python bench/catalog_hostile.py [--records 50000] [--page-loads 5]
                                              [--idle 2000] [--flood 110000] [--seconds 5]

Three measurements, each on a fresh catalog (ours), on loopback:

  page loads   the catalog holds R records (about 330 bytes each); P clients load
               pages as fast as they can (the first page of the table, then a
               re-sorted and a filtered one, which need a scan); meanwhile
               ``/query.json`` is fetched over and over (by a lean client that
               reads to the end: what is timed is the catalog, not a client
               parsing 18 MB), and so is a 404 for a missing record (which costs
               the catalog nothing: its latency is how long the loop was held).
               The page loaders are lean clients too.
               Target: /query.json within 100 ms.
  idle         I idle TCP connections are held open (each one the catalog
               closes is opened again at once); meanwhile a new client queries
               the catalog (``catalog.client.query`` with a filter, a fresh
               connection each time). Target: answered within 100 ms, none fails.
  flood        one address (127.0.0.1) sends F distinct records (more than the
               catalog's 100,000); then a new server announces itself once from
               another address (127.0.0.2), and the flood goes on (F/10 more).
               Target: the new server listed at its first announcement, and
               still listed after the rest of the flood.

Latencies are reported alone and under load, with their ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from catalog_bench import record, send_paced  # noqa: E402

from catalog.client import CatalogUnavailable, query  # noqa: E402
from chaos import catalog_attacks  # noqa: E402
from chaos.attacks import Attack  # noqa: E402
from harness.services import start_catalog  # noqa: E402
from netkit.cliargs import positive_int, positive_seconds  # noqa: E402

HOST = "127.0.0.1"
PROBE_TIMEOUT = 10.0


def timed(call: Callable[[], object]) -> float | None:
    """Seconds ``call`` took; None if it raised."""
    started = time.perf_counter()
    try:
        call()
    except (requests.RequestException, CatalogUnavailable, OSError, AssertionError):
        return None
    return time.perf_counter() - started


def probe_for(seconds: float, call: Callable[[], object]) -> list[float | None]:
    deadline = time.monotonic() + seconds
    times: list[float | None] = []
    while time.monotonic() < deadline:
        times.append(timed(call))
    return times


def summary(times: list[float | None]) -> str:
    good = sorted(t for t in times if t is not None)
    failed = len(times) - len(good)
    if not good:
        return f"all {failed} failed"
    p99 = good[min(len(good) - 1, int(len(good) * 0.99))]
    return (
        f"p50 {statistics.median(good) * 1000:7.1f} ms  p99 {p99 * 1000:7.1f}  "
        f"max {good[-1] * 1000:7.1f}  ({len(good)} answered, {failed} failed)"
    )


def ratio(under: list[float | None], alone: list[float | None]) -> str:
    a = [t for t in alone if t is not None]
    u = [t for t in under if t is not None]
    return f"x{statistics.median(u) / statistics.median(a):.1f}" if a and u else "-"


def fetch_raw(port: int, path: str) -> Callable[[], None]:
    """A client as lean as can be (one socket, reading to the end), so that what is
    timed is the catalog, not the client's own parsing of 18 MB."""

    def call() -> None:
        with socket.create_connection((HOST, port), timeout=PROBE_TIMEOUT) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            first = sock.recv(1 << 16)
            assert first.startswith(b"HTTP/1.1 200 "), first[:40]
            while sock.recv_into(_BUFFER):
                pass

    return call


_BUFFER = bytearray(1 << 20)


def get_ok(url: str) -> Callable[[], None]:
    def call() -> None:
        reply = requests.get(url, timeout=PROBE_TIMEOUT)
        _ = reply.content
        assert reply.status_code in (200, 404), reply.status_code

    return call


# ---------------------------------------------------------------- page loads


def load_pages(port: int, path: str, seconds: float, done: multiprocessing.Queue) -> None:
    """A browser that reloads ``path`` as fast as it can (a process of its own; a lean
    client, so that the clients' own work takes little of the machine's 2 cores)."""
    times = probe_for(seconds, fetch_raw(port, path))
    done.put(times)


def page_loads(workdir: Path, records: int, loaders: int, seconds: float) -> None:
    process, port = start_catalog(Path(tempfile.mkdtemp(dir=workdir)), workdir)
    try:
        send_confirmed(port, range(1, records + 1), "bench")
        json_url, missing_url = (
            f"http://{HOST}:{port}/query.json",
            f"http://{HOST}:{port}/detail/none",
        )
        lean_json = fetch_raw(port, "/query.json")
        alone_json = probe_for(seconds / 2, lean_json)
        alone_404 = probe_for(seconds / 2, get_ok(missing_url))
        print(
            f"  {records} records; /query.json is {len(requests.get(json_url, timeout=30).content) / 1e6:.1f} MB"
        )
        print(f"  alone:            /query.json {summary(alone_json)}")
        print(f"                    404 probe   {summary(alone_404)}")
        for path in ("/", "/?sort=owner", "/?q=proj-7"):
            queue: multiprocessing.Queue = multiprocessing.Queue()
            children = [
                multiprocessing.Process(target=load_pages, args=(port, path, seconds, queue))
                for _ in range(loaders)
            ]
            for child in children:
                child.start()
            time.sleep(0.3)  # the loads are under way
            under_json = probe_for(seconds / 2 - 0.3, lean_json)
            under_404 = probe_for(seconds / 2, get_ok(missing_url))
            pages = [t for _ in children for t in queue.get(timeout=seconds + 60)]
            for child in children:
                child.join()
            print(f"  {loaders} loading {path}:")
            print(f"    the pages       {summary(pages)}")
            print(f"    /query.json     {summary(under_json)}  {ratio(under_json, alone_json)}")
            print(f"    404 probe       {summary(under_404)}  {ratio(under_404, alone_404)}")
    finally:
        process.stop()


# ---------------------------------------------------------------- idle connections


def hold_idle(port: int, count: int, seconds: float, ready, done: multiprocessing.Queue) -> None:
    """Keeps ``count`` idle connections open for ``seconds``, reopening those the
    catalog closes (the chaos battery's attack, ``chaos.catalog_attacks.idle``)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 256), hard))
    attack = Attack("catalog", port, time.monotonic() + 120)  # until all are held, then:

    def held() -> None:
        attack.deadline = time.monotonic() + seconds
        ready.set()

    catalog_attacks.idle(attack, count, on_held=held)
    done.put(dict(attack.counts))


def idle(workdir: Path, count: int, seconds: float) -> None:
    process, port = start_catalog(Path(tempfile.mkdtemp(dir=workdir)), workdir)
    try:
        send_paced(port, [orjson.dumps(record(p, "idle-probe")) for p in range(1, 4)], 1000)
        catalogs = [(HOST, port)]

        def new_client() -> None:
            found = query('type=="idle-probe"', catalogs, timeout=PROBE_TIMEOUT)
            assert len(found) == 3, f"{len(found)} records"

        alone = probe_for(seconds / 2, new_client)
        ready, queue = multiprocessing.Event(), multiprocessing.Queue()
        holder = multiprocessing.Process(
            target=hold_idle, args=(port, count, seconds, ready, queue)
        )
        holder.start()
        ready.wait(60)
        under = probe_for(seconds - 0.5, new_client)
        counts = queue.get(timeout=seconds + 60)
        holder.join()
        print(f"  alone:                  {summary(alone)}")
        print(f"  {count} idle connections held: {summary(under)}  {ratio(under, alone)}")
        print(f"  the holder: {counts} (connections it opened, and closed by the catalog)")
    finally:
        process.stop()


# ---------------------------------------------------------------- record flood


def listed(port: int, key: str) -> bool:
    return (
        requests.get(f"http://{HOST}:{port}/detail/{key}", timeout=PROBE_TIMEOUT).status_code == 200
    )


def send_confirmed(port: int, ports: range, kind: str, batch: int = 2000) -> float:
    """Sends one record per port in ``ports`` from 127.0.0.1, ``batch`` at a time, each
    batch once the catalog listed the last one of the previous (so that few are lost
    to a full socket buffer); returns the seconds it took."""
    started = time.perf_counter()
    for first in range(ports.start, ports.stop, batch):
        last = min(first + batch, ports.stop)
        send_paced(port, [orjson.dumps(record(p, kind)) for p in range(first, last)], 50_000)
        deadline = time.monotonic() + 2
        while not listed(port, f"127.0.0.1:{last - 1}:localhost") and time.monotonic() < deadline:
            time.sleep(0.005)
    return time.perf_counter() - started


def count_records(port: int) -> int:
    return len(orjson.loads(requests.get(f"http://{HOST}:{port}/query.json", timeout=60).content))


def flood(workdir: Path, total: int) -> None:
    process, port = start_catalog(Path(tempfile.mkdtemp(dir=workdir)), workdir)
    try:
        first, more = total, total // 10
        took = send_confirmed(port, range(1, first + 1), "flood")
        print(
            f"  127.0.0.1 sent {first} distinct records in {took:.1f} s; "
            f"the catalog holds {count_records(port)}"
        )
        newcomer = {"type": "hashtable", "project": "honest", "owner": "bench", "port": 4242}
        key = "127.0.0.2:4242:localhost"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.2", 0))
            announced = time.perf_counter()
            sock.sendto(orjson.dumps(newcomer), (HOST, port))
        deadline = time.monotonic() + 2
        while not listed(port, key) and time.monotonic() < deadline:
            time.sleep(0.002)
        took = time.perf_counter() - announced
        verdict = f"listed after {took * 1000:.0f} ms" if listed(port, key) else "NOT listed"
        print(f"  a new server from 127.0.0.2, announced once: {verdict}")
        send_confirmed(port, range(first + 1, first + more + 1), "flood")
        verdict = "still listed" if listed(port, key) else "NOT listed"
        print(
            f"  after {more} more from 127.0.0.1: the catalog holds "
            f"{count_records(port)}; the new server is {verdict}"
        )
    finally:
        process.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=positive_int, default=50_000)
    parser.add_argument("--page-loads", type=positive_int, default=5, help="clients loading pages")
    parser.add_argument("--idle", type=positive_int, default=2000, help="idle connections held")
    parser.add_argument(
        "--flood", type=positive_int, default=110_000, help="records one address sends"
    )
    parser.add_argument("--seconds", type=positive_seconds, default=5.0, help="of each measurement")
    parser.add_argument("--only", choices=("pages", "idle", "flood"), help="one measurement")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.only in (None, "pages"):
            print(f"\npage loads ({args.page_loads} clients), {args.seconds:g} s each:")
            page_loads(workdir, args.records, args.page_loads, args.seconds)
        if args.only in (None, "idle"):
            print(f"\nidle connections ({args.idle}), {args.seconds:g} s:")
            idle(workdir, args.idle, args.seconds)
        if args.only in (None, "flood"):
            print(f"\nrecord flood ({args.flood} distinct records from one address):")
            flood(workdir, args.flood)
    return 0


if __name__ == "__main__":
    sys.exit(main())
