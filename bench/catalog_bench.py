"""Catalog benchmark: our catalog and the real cctools catalog_server, side by side.

    .venv/bin/python bench/catalog_bench.py [--sizes 1000,5000,10000] [--queries 20]
                                            [--ingest 8000] [--rates 10000,20000,50000]
                                            [--ours-only]

Two figures, each measured on a fresh server of each kind, on loopback:

  query latency   the catalog is filled with N realistic records (about 330 bytes,
                  what catalog_update sends), then ``/query.json`` is fetched Q
                  times, one after another, as the course's clients do (requests);
                  median and 95th percentile of the time to the whole reply.
                  Target for ours: < 100 ms at 10,000 records.
  ingestion       M updates, each a new record, are sent over UDP at a fixed rate
                  R; then the catalog is polled until its count stops growing.
                  Reported: how many of the M it took in, and at what rate
                  (taken in / time from the first send until the last record
                  sent is listed, watched with a cheap /detail/ look-up). A
                  last, longer run for ours alone shows the rate it sustains.
                  Target for ours: >= 10,000 updates/s with nothing lost.

Filling is paced and lost datagrams are resent, so that every size is reached
when the server can hold it; cctools' catalog_server keeps at most 10,000
records (and counts its own), and what it does at that size is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.cctools import CctoolsCatalog, missing_programs  # noqa: E402
from harness.services import start_catalog  # noqa: E402
from netkit.cliargs import (  # noqa: E402
    nonnegative_int,
    number_list,
    positive_int,
    positive_number,
)


def record(port: int, kind: str = "bench") -> dict:
    """A record shaped like what catalog_update and the hash table servers send."""
    return {
        "type": kind,
        "project": f"proj-{port % 97}",
        "owner": "bench",
        "port": port,
        "version": "8.0.0",
        "cpu": "x86_64",
        "opsys": "linux",
        "opsysversion": "6.1.0-18-amd64",
        "load1": 0.25,
        "load5": 0.31,
        "load15": 0.27,
        "memory_total": 25276514304,
        "memory_avail": 24593375232,
        "cpus": 2,
        "uptime": 1206 + port,
        "starttime": 1795324494,
    }


class Unavailable(Exception):
    """The catalog gave no valid answer (the message says what it gave)."""


def fetch(port: int) -> tuple[float, int, int]:
    """One ``/query.json``: (seconds, bytes, records); Unavailable if it fails."""
    started = time.perf_counter()
    try:
        reply = requests.get(f"http://127.0.0.1:{port}/query.json", timeout=30)
        elapsed = time.perf_counter() - started
        reply.raise_for_status()
        found = orjson.loads(reply.content)
    except (requests.RequestException, orjson.JSONDecodeError) as exc:
        raise Unavailable(str(exc).splitlines()[0][:120]) from None
    return elapsed, len(reply.content), len(found)


def present(port: int, kind: str) -> set[int]:
    """The ports of the catalog's records of ``kind``; Unavailable if it cannot say."""
    try:
        reply = requests.get(f"http://127.0.0.1:{port}/query.json", timeout=30)
        return {r.get("port") for r in orjson.loads(reply.content) if r.get("type") == kind}
    except requests.RequestException as exc:
        raise Unavailable(str(exc).splitlines()[0][:120]) from None
    except orjson.JSONDecodeError:
        raise Unavailable(f"reply is not JSON (HTTP {reply.status_code})") from None


def send_paced(port: int, datagrams: list[bytes], rate: float) -> float:
    """Sends ``datagrams`` over UDP at ``rate`` per second; returns the seconds it took."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        started = time.perf_counter()
        for i, data in enumerate(datagrams):
            due = started + i / rate
            while (now := time.perf_counter()) < due:
                if due - now > 0.001:
                    time.sleep(due - now - 0.0005)
            sock.sendto(data, ("127.0.0.1", port))
        return time.perf_counter() - started


@contextlib.contextmanager
def server(kind: str, workdir: Path) -> Iterator[int]:
    """A fresh catalog of ``kind`` ("ours" or "cctools"); yields its port."""
    if kind == "ours":
        state = Path(tempfile.mkdtemp(dir=workdir))
        process, port = start_catalog(state, workdir)
        try:
            yield port
        finally:
            process.stop()
        return
    with CctoolsCatalog(Path(tempfile.mkdtemp(dir=workdir))) as cctools:
        yield cctools.port


def fill(port: int, size: int, rate: float = 5000, step: int = 2000) -> str | None:
    """Brings the catalog to ``size`` bench records, ``step`` at a time; None, or
    why it could not. Sent at a pace both servers keep up with; whatever a full
    socket buffer dropped anyway is sent again."""
    held: set[int] = set()
    for goal in range(min(step, size), size + step, step):
        goal = min(goal, size)
        for _ in range(10):
            missing = set(range(1, goal + 1)) - held
            if not missing:
                break
            send_paced(port, [orjson.dumps(record(p)) for p in sorted(missing)], rate)
            time.sleep(0.2)
            try:
                held = present(port, "bench")
            except Unavailable as exc:
                return f"holding {len(held)} records, it got {goal - len(held)} more and every query fails: {exc}"
        else:
            return f"{goal - len(held)} of {goal} records never arrived"
    return None


def latency(port: int, queries: int) -> dict:
    fetch(port)  # warm-up: the first reply may build caches
    times, size, records = [], 0, 0
    for _ in range(queries):
        elapsed, size, records = fetch(port)
        times.append(elapsed)
    times.sort()
    return {
        "median_ms": statistics.median(times) * 1000,
        "p95_ms": times[min(len(times) - 1, int(len(times) * 0.95))] * 1000,
        "bytes": size,
        "records": records,
    }


def listed(port: int, key: str) -> bool:
    """Whether the record ``key`` is listed: a cheap look-up of one record, in both
    catalogs, so that watching for it does not slow the catalog down."""
    reply = requests.get(f"http://127.0.0.1:{port}/detail/{key}", timeout=30)
    return reply.status_code == 200 and "Unknown Item" not in reply.text


def ingest(port: int, total: int, rate: float) -> dict:
    """Sends ``total`` new records at ``rate``/s; returns what the catalog took in."""
    datagrams = [orjson.dumps(record(p, "ingest")) for p in range(1, total + 1)]
    started = time.perf_counter()
    sent_in = send_paced(port, datagrams, rate)
    last_arrived = None
    deadline = time.perf_counter() + 2.0
    while time.perf_counter() < deadline:
        if listed(port, f"127.0.0.1:{total}:localhost"):
            last_arrived = time.perf_counter()
            break
        time.sleep(0.002)
    time.sleep(0.3)  # for any stragglers behind the last one
    taken = len(present(port, "ingest"))
    # When the last record was lost, when the catalog caught up is unknown: the
    # rate is then over the sending time only (marked "*").
    took = max(last_arrived - started, sent_in) if last_arrived else sent_in
    return {
        "sent_rate": total / sent_in,
        "taken": taken,
        "rate": taken / took,
        "mark": "" if last_arrived else "*",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=number_list(positive_int), default=[1000, 5000, 10000])
    parser.add_argument("--queries", type=positive_int, default=20)
    parser.add_argument(
        "--ingest", type=positive_int, default=8000, help="records per ingestion run"
    )
    parser.add_argument(
        "--rates", type=number_list(positive_number), default=[10000, 20000, 50000, 100000]
    )
    parser.add_argument(
        "--big",
        type=nonnegative_int,
        default=50_000,
        help="records for a last ingestion run, ours only (0: none)",
    )
    parser.add_argument("--big-rate", type=positive_number, default=20_000, help="its send rate")
    parser.add_argument("--ours-only", action="store_true")
    args = parser.parse_args()
    sizes, rates = args.sizes, args.rates
    kinds = (
        ["ours"] if args.ours_only or missing_programs(("catalog_server",)) else ["ours", "cctools"]
    )

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}"
    )
    print(f"servers: {', '.join(kinds)} (fresh instance per measurement, loopback)\n")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print(f"/query.json latency, {args.queries} queries after filling (ms):")
        print(
            f"{'records':>8} | {'ours median':>11} {'p95':>7} | {'cctools median':>14} {'p95':>7} | ratio"
        )
        for size in sizes:
            row = {}
            for kind in kinds:
                with server(kind, workdir) as port:
                    problem = fill(port, size)
                    try:
                        row[kind] = problem or latency(port, args.queries)
                    except Unavailable as exc:
                        row[kind] = f"queries fail: {exc}"
            print(_latency_row(size, row))
        print(f"\nUDP ingestion of {args.ingest} new records at a fixed send rate:")
        print(
            f"{'rate/s':>8} | {'ours taken':>10} {'per s':>8} | {'cctools taken':>13} {'per s':>8} | ratio"
        )
        lost_last = False
        for rate in rates:
            row = {}
            for kind in kinds:
                with server(kind, workdir) as port:
                    row[kind] = ingest(port, args.ingest, rate)
                    lost_last |= bool(row[kind]["mark"])
            print(_ingest_row(rate, args.ingest, row))
        if lost_last:
            print("  * the last record sent was lost: rate over the sending time only")
        if args.big:
            with server("ours", workdir) as port:
                result = ingest(port, args.big, args.big_rate)
                elapsed, size, _ = fetch(port)
            print(
                f"ours alone, {args.big} records sent at {result['sent_rate']:.0f}/s: took in "
                f"{result['taken']} at {result['rate']:.0f}/s; /query.json of them then "
                f"{elapsed * 1000:.0f} ms ({size / 1e6:.1f} MB)"
            )
    return 0


def _latency_row(size: int, row: dict) -> str:
    cells = []
    for kind in ("ours", "cctools"):
        result = row.get(kind)
        if isinstance(result, dict):
            cells.append(f"{result['median_ms']:11.1f} {result['p95_ms']:7.1f}")
        else:
            cells.append(f"{'-':>11} {'-':>7}" if result is None else "")
    ratio = ""
    if all(isinstance(row.get(k), dict) for k in ("ours", "cctools")):
        ratio = f"cctools/ours {row['cctools']['median_ms'] / row['ours']['median_ms']:.1f}x"
    notes = [f"{kind}: {result}" for kind, result in row.items() if isinstance(result, str)]
    ours, cctools = cells[0], cells[1] if len(cells) > 1 else ""
    return f"{size:>8} | {ours:>19} | {cctools:>22} | {ratio}" + (
        "\n         " + "; ".join(notes) if notes else ""
    )


def _ingest_row(rate: float, total: int, row: dict) -> str:
    cells = []
    for kind in ("ours", "cctools"):
        result = row.get(kind)
        cells.append(
            f"{result['taken']:>10} {result['rate']:7.0f}{result['mark'] or ' '}"
            if result
            else f"{'-':>10} {'-':>8}"
        )
    ratio = ""
    if row.get("cctools") and row["cctools"]["rate"]:
        ratio = f"ours/cctools {row['ours']['rate'] / row['cctools']['rate']:.1f}x"
    sent = row["ours"]["sent_rate"]
    return f"{rate:>8.0f} | {cells[0]} | {cells[1]:>22} | {ratio}   (sent at {sent:.0f}/s, {total} each)"


if __name__ == "__main__":
    sys.exit(main())
