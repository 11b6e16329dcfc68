"""The cluster under fire: N=3 servers, K=2 copies, one server killed and restarted again and again.

Writers (chaos/writer.py with ``--cluster 3 2``: each owns its keys and keeps a
ledger), contenders (chaos/contender.py: several writing the same keys) and
readers (chaos/reader.py: lookups of their own keys, each timed) run while
one server at a time is SIGKILLed at a random instant, left down for a random
while (writes to its keys wait for it meanwhile), and started again on a new
port with its data directory (the clients find it through the catalog).

Afterwards, with every client stopped (nothing in flight):
- every key is on exactly its K replicas, with the same value on each;
- every writer's keys hold their last acknowledged values (the ledgers), and
  no remove answered something else than the writer's model (exactly-once);
- no read failed or waited: one replica of every key was up at every instant.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import orjson

from chaos.fleet import Writers
from chaos.lab import Lab, Result, Server
from harness.processes import Process, python_module, wait_until
from hashtable.client import HashTableClient
from hashtable.cluster import replicas

NAME = "chaos-cluster"
SERVERS, COPIES = 3, 2
WRITERS, CONTENDERS, READERS = 3, 2, 2
KEYS_PER_WRITER = 30
SLOW_READ = 2.0  # seconds: a read slower than this failed (a replica was up)
STOP_TIMEOUT = 60.0


def run(lab: Lab) -> Result:
    result = Result("cluster: server killed")
    kills = 4 if lab.quick else 30
    catalog = lab.catalog()
    servers = [_start(lab, index, catalog.host) for index in range(SERVERS)]
    writers = Writers(lab, NAME, catalog.host, KEYS_PER_WRITER, cluster=(SERVERS, COPIES))
    writers.start(WRITERS)
    contenders = [_contender(lab, n, catalog.host) for n in range(CONTENDERS)]
    readers = [_reader(lab, n, catalog.host) for n in range(READERS)]
    for reader in readers:
        wait_until(lambda r=reader: '"ready"' in r.output(), timeout=60, what="a reader")
    downtime = 0.0
    for n in range(kills):
        writers.wait_for_progress()
        time.sleep(lab.rng.uniform(0.0, 0.5))
        index = lab.rng.randrange(SERVERS)
        servers[index].process.kill()
        down = lab.rng.uniform(0.2, 1.5)
        time.sleep(down)
        downtime += down
        servers[index] = _start(lab, index, catalog.host)
        result.runs += 1
        lab.say(f"  kill {n + 1}/{kills}: {NAME}-{index} down {down:.1f} s")
    writers.wait_for_progress()
    writers.stop(result)
    for process in (*contenders, *readers):
        process.signal(signal.SIGTERM)
    for process in contenders:
        _expect_exit(process, result)
    read_figures = [_reader_summary(reader, result) for reader in readers]
    table = _check_replicas([server.port for server in servers], result)
    verdict = writers.judge({k: v for k, v in table.items() if k.startswith("w")}, result, "end")
    reads = sum(figures.get("reads", 0) for figures in read_figures)
    slowest = max((figures.get("slowest", 0.0) for figures in read_figures), default=0.0)
    result.figures.append(
        f"cluster: {kills} kills ({downtime:.0f} s down in all); {verdict.acknowledged} writes "
        f"acknowledged, retried {writers.retries()} times; {len(table)} keys on identical "
        f"replicas; {reads} reads, slowest {slowest:.2f} s"
    )
    return result


def _start(lab: Lab, index: int, catalog: str) -> Server:
    return lab.server(f"{NAME}-{index}", lab.path(f"data-{index}"), catalog)


def _contender(lab: Lab, n: int, catalog: str) -> Process:
    return lab.start(
        python_module(
            "chaos.contender", NAME, str(SERVERS), str(COPIES), "--catalog", catalog,
            "--keys", "10", "--tag", f"c{n}", "--seed", str(lab.seed),
        ),
        name=f"contender-c{n}",
    )  # fmt: skip


def _reader(lab: Lab, n: int, catalog: str) -> Process:
    return lab.start(
        python_module(
            "chaos.reader", NAME, str(SERVERS), str(COPIES), "--catalog", catalog,
            "--name", f"r{n}", "--slow", str(SLOW_READ),
        ),
        name=f"reader-r{n}",
    )  # fmt: skip


def _expect_exit(process: Process, result: Result) -> None:
    code = process.popen.wait(timeout=STOP_TIMEOUT)
    if code != 0 or "Traceback" in process.output():
        result.fail(f"{process.log_path.stem} exited with {code}: {process.output()[-300:]}")


def _reader_summary(reader: Process, result: Result) -> dict[str, Any]:
    _expect_exit(reader, result)
    lines = [line for line in reader.output().splitlines() if '"done"' in line]
    if not lines:
        result.fail(f"{reader.log_path.stem} said nothing at the end")
        return {}
    figures = orjson.loads(lines[-1])
    if figures["failed"]:
        result.fail(
            f"{reader.log_path.stem}: {figures['failed']} of {figures['reads']} reads failed "
            f"while a replica was up: {'; '.join(figures['problems'])}"
        )
    return figures


def _check_replicas(ports: list[int], result: Result) -> dict[str, Any]:
    """Every key on exactly its replicas, identical on each; returns key -> value."""
    contents = []
    for port in ports:
        with HashTableClient.at("127.0.0.1", port, give_up_after=30) as server:
            contents.append(dict(server.scan("")))
    table: dict[str, Any] = {}
    problems = []
    for index, held in enumerate(contents):
        for key, value in held.items():
            where = replicas(key, len(ports), COPIES)
            if index not in where:
                problems.append(f"{key} on {NAME}-{index}, not one of its replicas {where}")
            differing = [other for other in where if contents[other].get(key, None) != value]
            if differing:
                problems.append(f"{key}: {NAME}-{index} and {NAME}-{differing[0]} differ")
            table[key] = value
    if problems:
        result.fail(f"replicas differ: {len(problems)} keys, e.g. " + "; ".join(problems[:3]))
    return table
