"""Server crash under load: SIGKILL at random instants, during compactions, with torn writes.

Eight writer processes (chaos/writer.py, real HashTableClients found through
the catalog) mutate their own keys while the server is killed again and again
and restarted each time on a new port with the same data directory. At each
kill, the writers' ledgers say which writes were acknowledged and which one per
writer was in flight; a copy of the data directory is recovered and checked
against them. At the end the writers stop, and the table the last server serves
is checked the same way over the network, where nothing is in flight any more.

Kill instants rotate between: a random moment; while a compaction child is
writing a checkpoint (a small --compact-after, and enough keys, make them
frequent); and a random moment followed by a torn record written after the last one in table.txn,
which the restarted server must drop (and say so).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from chaos.fleet import Writers
from chaos.lab import Lab, Result, Server
from chaos.ledger import Verdict
from chaos.torn import tear_log
from harness import procfs
from harness.processes import wait_until
from harness.services import StartFailed
from hashtable.database import Database, RecoveryError
from hashtable.storage import CHECKPOINT, LOG, OLD_LOG, ORIGIN

PROJECT = "chaos-crash"
WRITERS = 8
KEYS_PER_WRITER = 50
COMPACT_AFTER = 20
KINDS = ("random", "compacting", "torn")
TORN_WARNING = "a write interrupted by a crash, never acknowledged"
COMPACTION_TIMEOUT = 20.0  # generous: the machine may be busy with other work


def run(lab: Lab) -> Result:
    result = Result("server crash")
    kills = 6 if lab.quick else 50
    catalog = lab.catalog()
    data = lab.path("data")
    options = ("--compact-after", str(COMPACT_AFTER))
    server = lab.server(PROJECT, data, catalog.host, *options)
    writers = Writers(lab, PROJECT, catalog.host, KEYS_PER_WRITER)
    writers.start(WRITERS)
    stats = {"compacting": 0, "old log": 0, "in flight": 0, "applied": 0}
    for n in range(kills):
        kind = KINDS[n % len(KINDS)]
        writers.wait_for_progress()
        hit_child, old_log = _kill(server, kind, lab, data)
        stats["compacting"] += hit_child
        stats["old log"] += old_log
        torn = tear_log(data, lab.rng) if kind == "torn" else 0
        verdict = _check_files(data, lab.root / "copy", writers, result, f"kill {n + 1}")
        if verdict is not None:
            stats["in flight"] += verdict.in_flight
            stats["applied"] += verdict.in_flight_applied
        result.runs += 1
        try:
            server = lab.server(PROJECT, data, catalog.host, *options)
        except StartFailed as exc:
            result.fail(f"kill {n + 1} ({kind}): recovery failed: {exc}")
            return result
        if torn and TORN_WARNING not in server.log():
            result.fail(f"kill {n + 1}: the restarted server did not report the torn write")
        lab.say(
            f"  kill {n + 1}/{kills} ({kind}{', compaction child running' if hit_child else ''}"
            f"{f', {torn}-byte torn record' if torn else ''}): "
            + (_summary(verdict) if verdict else "check failed")
        )

    # The end: nothing in flight once the writers stop; what the last server
    # serves and what its files recover must both match the ledgers exactly.
    writers.wait_for_progress()
    writers.stop(result)
    verdict = writers.check_served(server.port, result, "at the end, over the network")
    server.process.kill()
    _check_files(data, lab.root / "copy", writers, result, "at the end, recovered from the files")
    result.figures.append(
        f"server crash: {kills} kills, {stats['compacting']} while a compaction child ran, "
        f"{stats['old log']} with table.txn.old on disk (mid-compaction); "
        f"{stats['in flight']} writes in flight at kills, {stats['applied']} of them applied; "
        f"{verdict.acknowledged} writes acknowledged in all, the writers retried "
        f"{writers.retries()} times"
    )
    if not stats["compacting"]:
        result.fail("no kill landed during a compaction")
    return result


def _kill(server: Server, kind: str, lab: Lab, data: Path) -> tuple[bool, bool]:
    """SIGKILLs the server as ``kind`` says; returns whether a compaction child was
    running and whether table.txn.old was on disk at that instant."""
    pid = server.process.pid
    if kind == "compacting":
        # A small table's compaction can end within the random delay, most often on
        # a loaded machine: then the kill waits for the next one (a few tries).
        for _ in range(5):
            wait_until(
                lambda: procfs.children(pid), timeout=COMPACTION_TIMEOUT, what="a compaction child"
            )
            time.sleep(lab.rng.uniform(0, 0.0015))
            if procfs.children(pid):
                break
    else:
        time.sleep(lab.rng.uniform(0.0, 0.5))
    child = procfs.children(pid)
    on_disk = (data / OLD_LOG).exists()
    server.process.kill()
    # The child dies with its parent (PR_SET_PDEATHSIG); a live one could still
    # rename a checkpoint, so nothing is read until it is gone.
    wait_until(lambda: not any(procfs.alive(c) for c in child), timeout=10, what="the child to die")
    return bool(child), on_disk


def _check_files(
    data: Path, scratch: Path, writers: Writers, result: Result, when: str
) -> Verdict | None:
    """Recovers a copy of ``data`` (the server's own files stay untouched for the
    restart) and checks it against the ledgers."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for name in (CHECKPOINT, LOG, OLD_LOG, ORIGIN):
        if (data / name).exists():
            shutil.copy2(data / name, scratch / name)
    try:
        with Database(scratch, lock_timeout=10) as db:
            state = dict(db.table.data)
    except RecoveryError as exc:
        result.fail(f"{when}: recovery of the files failed: {exc}")
        return None
    return writers.judge(state, result, when)


def _summary(verdict: Verdict) -> str:
    return (
        f"{verdict.acknowledged} writes acknowledged, all present"
        if verdict.ok
        else f"{len(verdict.lost)} LOST"
    ) + f"; {verdict.in_flight} in flight, {verdict.in_flight_applied} applied"
