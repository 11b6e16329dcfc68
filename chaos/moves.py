"""Server moves: the server restarts on a new port several times during a TestPerf run.

TestPerf (two client processes, every stage) finds the server through the
catalog. While it runs, the server is stopped (SIGTERM or SIGKILL, in turn) and
started again with the same data directory on a port the kernel picks, so the
clients must look it up again. Once, it moves twice within a second, so that
the catalog lists two records heard from in the same second and the client
must still pick the live one. TestPerf must end with status 0 and no wrong
answer (a remove applied twice would answer KeyError).

To show that no operation was applied twice, the server never compacts here
(--compact-after is huge), so table.txn keeps every mutation: each client's
sequence numbers must be 1, 2, 3, ... with none repeated. The table must be
empty at the end, as TestPerf removes what it inserts.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path

from catalog.client import matching, query
from chaos.lab import Lab, Result, Server
from harness.processes import Process, python_script, wait_until
from hashtable.client import HashTableClient
from hashtable.logreader import read_records
from hashtable.storage import LOG
from perftest.workload import STAGES as TESTPERF_STAGES

PROJECT = "chaos-moves"
NEVER_COMPACT = "1000000000"
RUN_TIMEOUT = 240.0
# Clients retry after 1, 2, 4 s: a server they cannot find in this long is lost to
# them (a stale catalog record chosen over the live one, say).
FIND_TIMEOUT = 20.0
# TestPerf must outlast the moves, and its length does not grow with them (its
# stages are timed): a move takes up to ~3.5 s (the pause before it, the restart,
# the clients' retry). Half as much again for slack.
MOVE_SECONDS = 3.5


def run(lab: Lab) -> Result:
    result = Result("server moves", lost=None)
    moves = 3 if lab.quick else 6
    stage_seconds = f"{1.5 * moves * MOVE_SECONDS / len(TESTPERF_STAGES):.2f}"
    catalog = lab.catalog()
    data = lab.path("data")
    extra = ("--compact-after", NEVER_COMPACT)
    server = lab.server(PROJECT, data, catalog.host, *extra)
    testperf = lab.start(
        python_script(
            "TestPerf.py", PROJECT, "--clients", "2", "--stage-seconds", stage_seconds,
            "--catalog", catalog.host,
        ),
        name="testperf",
    )  # fmt: skip
    _wait_for_clients(server, testperf, 60)
    deadline = time.monotonic() + RUN_TIMEOUT
    done = 0
    while testperf.alive() and time.monotonic() < deadline:
        time.sleep(lab.rng.uniform(0.8, 1.6))
        if done >= moves or not testperf.alive():
            continue
        how = signal.SIGKILL if done % 2 else signal.SIGTERM
        twice = done == 1
        if twice:  # from the start of a second, so that both announce within it
            time.sleep(1 - time.time() % 1)
            server = _move(lab, server, how, data, catalog.host, extra)
        server = _move(lab, server, how, data, catalog.host, extra)
        note = f", twice in a row: {_tied_records(catalog.port)} records tied" if twice else ""
        done += 1
        began = time.monotonic()
        try:
            _wait_for_clients(server, testperf, FIND_TIMEOUT)
        except TimeoutError:
            result.fail(f"move {done}: the clients did not find the server in {FIND_TIMEOUT:g} s")
        lab.say(
            f"  move {done}/{moves} ({how.name}{note}): now on port {server.port}, "
            f"found by the clients in {time.monotonic() - began:.1f} s"
        )
    result.runs = done
    try:
        code = testperf.popen.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        code = None
    output = testperf.output()
    if code != 0:
        result.fail(f"TestPerf ended with status {code}: {output[-800:]}")
    if "Traceback" in output or "wrong answer" in output:
        result.fail(f"TestPerf: {output[-800:]}")
    if done < moves:
        result.fail(f"TestPerf ended after {done} of {moves} moves")
    retries = output.count("retrying in")
    lab.say(f"  TestPerf exited {code}; its clients retried {retries} times")
    with HashTableClient.at("127.0.0.1", server.port, give_up_after=30) as client:
        left = client.size()
    if left:
        result.fail(f"{left} keys left after TestPerf removed all it inserted")
    server.process.kill()
    _check_exactly_once(data / LOG, result)
    return result


def _wait_for_clients(server: Server, testperf: Process, timeout: float) -> None:
    """Until both TestPerf clients are connected to ``server`` (or TestPerf ended)."""
    wait_until(
        lambda: server.log().count("connected (") >= 2 or not testperf.alive(),
        timeout=timeout,
        what="TestPerf's clients to connect",
    )


def _tied_records(catalog_port: int) -> int:
    """How many of the project's records share the latest lastheardfrom (whole
    seconds): the clients must choose the live one among them."""
    records = matching(query(catalogs=[("127.0.0.1", catalog_port)]), "hashtable", PROJECT)
    return sum(r["lastheardfrom"] == records[0]["lastheardfrom"] for r in records)


def _move(lab: Lab, server: Server, how: signal.Signals, data: Path, catalog: str, extra) -> Server:
    server.process.signal(how)
    server.process.popen.wait(timeout=30)
    return lab.server(PROJECT, data, catalog, *extra)


def _check_exactly_once(log: Path, result: Result) -> None:
    """Each client's mutations in the log are numbered 1, 2, 3, ...: none twice, none missing."""
    seqs: dict[str, list[int]] = defaultdict(list)
    records = 0
    # Read as recovery reads it: the killed server left its preallocated zeros.
    for record in read_records(log):
        records += 1
        if "client" in record:
            seqs[record["client"]].append(record["seq"])
    twice = {c: s for c, s in seqs.items() if s != list(range(1, len(s) + 1))}
    if twice:
        client, numbers = next(iter(twice.items()))
        repeated = sorted(n for n, count in Counter(numbers).items() if count > 1)[:5]
        result.fail(
            f"{len(twice)} clients' mutations are not numbered 1, 2, 3, ... in the log "
            f"(client {client[:8]}: repeated {repeated})"
        )
    result.figures.append(
        f"server moves: {records} mutations in the log from {len(seqs)} clients, none applied twice"
        if not twice
        else f"server moves: {records} mutations in the log"
    )
