"""SIGKILL at any instant, compaction included: no acknowledged write lost, recovery succeeds.

A driver process (tests/crash_driver.py) mutates the table and prints each
mutation only after it is durable. Each round kills it (at a random instant,
while a compaction child writes, or after killing the child itself), reopens
the directory and checks it against a model of the acknowledged mutations.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from typing import Any

from harness.processes import python_script, wait_until
from harness.procfs import alive, children
from hashtable.database import Database
from hashtable.request import Request, Status
from tests.crash_driver import MAX_BATCH, operation, summary

ROUNDS = 21
KILLS = ("random", "while-compacting", "child-killed")


def apply(model: dict[str, Any], method: str, key: str, value: Any) -> str:
    """The operation on the model; returns the outcome summary the engine must give."""
    if method == "insert":
        model[key] = value
        return "ok:-"
    if key in model:
        return f"ok:{model.pop(key)['op']}"
    return "failed:KeyError"


def acknowledged(output: str) -> list[tuple[int, int, str]]:
    acks = []
    for line in output.splitlines(keepends=True):
        if line.startswith("ACK ") and line.endswith("\n"):  # a cut line is not an ack
            _, index, seq, result = line.split()
            acks.append((int(index), int(seq), result))
    return acks


def kill_driver(driver, how: str, rng: random.Random) -> None:
    if how == "random":
        time.sleep(rng.uniform(0.05, 0.5))
    elif how == "while-compacting":
        wait_until(lambda: children(driver.pid), what="a compaction child")
        time.sleep(rng.uniform(0, 0.004))
    else:
        # Children live for milliseconds: kill them until one dies before finishing.
        def kill_a_child() -> bool:
            for child in children(driver.pid):
                # A child may finish between the listing and the kill.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            return "compaction failed" in driver.output()

        wait_until(kill_a_child, timeout=20, what="a compaction to fail")
        time.sleep(rng.uniform(0, 0.1))
    orphans = children(driver.pid)
    driver.kill()
    # A compaction child must die with its parent, or it could rename an old
    # checkpoint over a newer one (the directory lock would also keep us out).
    wait_until(lambda: not any(alive(pid) for pid in orphans), timeout=5, what="orphans to die")


def test_sigkill_at_any_instant_loses_no_acknowledged_write(tmp_path, spawn):
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    print(f"CRASH_SEED={seed}")
    rng = random.Random(seed)
    data = tmp_path / "data"
    model: dict[str, Any] = {}
    applied = 0  # operations 0 .. applied-1 are in the table
    exact_retries = 0
    for round_ in range(ROUNDS):
        how = KILLS[round_ % len(KILLS)]
        client, start = f"round{round_}", applied
        driver = spawn(
            python_script(
                "tests/crash_driver.py", str(data), "--start", str(start), "--client", client,
                "--seed", str(seed),
            ),
            name=f"driver{round_}",
        )  # fmt: skip
        kill_driver(driver, how, rng)
        output = driver.output()
        assert "Traceback" not in output, output[-3000:]
        if how == "child-killed":
            assert "compaction failed" in output and "nothing is lost" in output

        with Database(data, lock_timeout=10) as db:  # recovery must always succeed
            state = dict(db.table.data)
            # Every acknowledged mutation is there, in order, with the answer it got.
            acks = acknowledged(output)
            for index, _, result in acks:
                assert index == applied
                assert result == apply(model, *operation(seed, index)), f"op {index}"
                applied += 1
            last_ack_seq = acks[-1][1] if acks else 0
            # Beyond them, the state shows a prefix of the batch in flight (never acknowledged).
            trial, in_flight = dict(model), []
            while trial != state:
                assert len(in_flight) < MAX_BATCH, f"round {round_}: state matches no prefix"
                in_flight.append(apply(trial, *operation(seed, applied + len(in_flight))))
            # Retries, even across the crash, answer as the first time and change nothing.
            for offset, result in enumerate(in_flight):
                retried = db.execute(retry(seed, applied + offset, client, start, last_ack_seq))
                assert summary(retried) == result
                exact_retries += 1
            for index, seq, result in acks[-MAX_BATCH:]:
                retried = db.execute(retry(seed, index, client, start, seq - 1))
                if retried.status is Status.INVALID:  # released by the ack of a later record
                    assert "acknowledged" in retried.message
                else:
                    assert summary(retried) == result
                    exact_retries += 1
            assert dict(db.table.data) == state and not db.needs_commit
            print(
                f"round {round_} ({how}): {len(acks)} acknowledged, {len(in_flight)} more applied"
            )
        model, applied = trial, applied + len(in_flight)
    assert exact_retries > 0


def retry(seed: int, index: int, client: str, start: int, ack: int) -> Request:
    method, key, value = operation(seed, index)
    return Request(method, key=key, value=value, client=client, seq=index - start + 1, ack=ack)
