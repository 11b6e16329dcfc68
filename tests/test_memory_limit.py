"""--max-memory: inserts refused while the server holds too much, everything else served,
and inserts taken again once removes have freed room."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from harness.processes import wait_until
from harness.procfs import memory_kib
from hashtable.database import Database
from hashtable.errors import ServerError
from hashtable.memory_limit import (
    OUT_OF_MEMORY,
    RECORD_OVERHEAD,
    MemoryLimit,
    describe_bytes,
    removed_bytes,
)
from hashtable.request import Outcome, Request, Status
from HashTableClient import HashTableClient
from netkit.memory import cgroup_limit_files, memory_available, resident_bytes, smallest_limit
from tests.server_support import Wire, start_server

MiB = 1 << 20


class FakeProcess:
    """A resident size the test sets, and what releasing free memory gives back."""

    def __init__(self, used: int) -> None:
        self.used = used
        self.freeable = 0
        self.releases = 0
        self.now = 100.0

    def measure(self) -> int:
        return self.used

    def grow(self, used: int) -> None:
        """The resident size becomes ``used``, seen by the next measure."""
        self.used = used
        self.now += 0.001

    def release(self) -> None:
        self.releases += 1
        self.used -= self.freeable
        self.freeable = 0

    def limit(self, limit: int) -> MemoryLimit:
        return MemoryLimit(
            limit, measure=self.measure, release=self.release, clock=lambda: self.now
        )


def test_under_the_limit_nothing_is_refused_nor_released() -> None:
    process = FakeProcess(used=50 * MiB)
    limit = process.limit(64 * MiB)
    assert limit.refusal(100) is None
    assert process.releases == 0


def test_over_the_limit_free_memory_is_given_back_before_refusing() -> None:
    process = FakeProcess(used=70 * MiB)
    process.freeable = 10 * MiB  # glibc held 10 MiB that was freed
    limit = process.limit(64 * MiB)
    assert limit.refusal(100) is None
    assert process.releases == 1 and process.used == 60 * MiB


def test_over_the_limit_inserts_are_refused_with_what_and_why(caplog) -> None:
    process = FakeProcess(used=80 * MiB)
    limit = process.limit(64 * MiB)
    with caplog.at_level(logging.WARNING, logger="hashtable.server"):
        error, message = limit.refusal(100)  # type: ignore[misc]
        limit.refusal(100)
    assert error == OUT_OF_MEMORY
    assert "80.0 MiB" in message and "--max-memory of 64.0 MiB" in message
    assert "removes" in message
    # One line when it starts refusing, not one per insert.
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert len(caplog.records) == 1 and "refusing inserts" in caplog.records[0].message


def test_free_memory_is_given_back_at_most_once_a_second() -> None:
    process = FakeProcess(used=80 * MiB)
    limit = process.limit(64 * MiB)
    for _ in range(100):
        assert limit.refusal(100) is not None
    assert process.releases == 1
    process.now += 1.0
    process.freeable = 20 * MiB  # removes freed room
    assert limit.refusal(100) is None
    assert process.releases == 2


def test_taking_inserts_again_is_logged(caplog) -> None:
    process = FakeProcess(used=80 * MiB)
    limit = process.limit(64 * MiB)
    limit.refusal(100)
    process.grow(30 * MiB)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hashtable.server"):
        assert limit.refusal(100) is None
        assert limit.refusal(100) is None
    assert [r.message for r in caplog.records] == [
        "memory: back under --max-memory 64.0 MiB: taking inserts again"
    ]


def test_inserts_faster_than_a_millisecond_share_one_measure() -> None:
    process = FakeProcess(used=50 * MiB)
    limit = process.limit(64 * MiB)
    assert limit.refusal(100) is None
    process.used = 80 * MiB  # no time has passed: the same measure
    assert limit.refusal(100) is None
    process.now += 0.001
    assert limit.refusal(100) is not None


def test_removes_that_the_resident_size_does_not_show_make_room() -> None:
    """Python keeps small objects' memory: the resident size stays where it was."""
    process = FakeProcess(used=80 * MiB)
    limit = process.limit(64 * MiB)
    assert limit.refusal(100) is not None
    assert limit.counting
    limit.freed(3 * MiB)  # 12 MiB at 4 resident bytes per byte of JSON: not yet
    process.now += 0.001
    assert limit.refusal(100) is not None
    limit.freed(2 * MiB)  # 20 MiB in all: 60 MiB held
    process.now += 0.001
    assert limit.refusal(MiB // 2 + 1) is None  # taken, and counted: 62 MiB held
    process.now += 0.001
    assert limit.refusal(MiB // 2 + 1) is None  # just over 64 MiB held
    process.now += 0.001
    assert limit.refusal(100) is not None  # the room the removes made is full again


def test_the_count_ends_once_the_resident_size_is_under_the_limit() -> None:
    process = FakeProcess(used=80 * MiB)
    limit = process.limit(64 * MiB)
    limit.refusal(100)
    limit.freed(10 * MiB)
    process.grow(50 * MiB)  # given back after all
    assert limit.refusal(100) is None
    assert not limit.counting
    process.grow(70 * MiB)  # over again: counted from here, the old removes forgotten
    assert limit.refusal(100) is not None


def test_what_a_remove_frees_is_its_key_and_value() -> None:
    plain = Outcome.ok({"applied": True, "x": "y"})  # a value that looks versioned
    assert removed_bytes("k", plain, versioned=False) == 1 + 24 + RECORD_OVERHEAD
    versioned = Outcome.ok({"applied": True, "was": [1, "w"], "removed": [1, 2]})
    assert removed_bytes("k", versioned, versioned=True) == 1 + 5 + RECORD_OVERHEAD
    tombstone = Outcome.ok({"applied": True, "was": [1, "w"]})
    assert removed_bytes("k", tombstone, versioned=True) == 0
    assert removed_bytes("k", Outcome.failed("KeyError", "no such key"), versioned=False) == 0


def test_an_unreadable_size_never_refuses() -> None:
    limit = MemoryLimit(1, measure=lambda: None, release=lambda: None)
    assert limit.refusal(100) is None


def test_sizes_are_described_in_the_unit_that_reads_best() -> None:
    assert describe_bytes(512) == "512 bytes"
    assert describe_bytes(1536) == "1.5 KiB"
    assert describe_bytes(3 * MiB) == "3.0 MiB"
    assert describe_bytes(5 << 40) == "5.0 TiB"


def test_the_process_measures_are_real() -> None:
    used = resident_bytes()
    available = memory_available()
    assert used is not None and 5 * MiB < used
    assert available is not None and used < available


# ---------------------------------------------------------------- the database


def _insert(db: Database, key: str, seq: int) -> Request:
    return Request("insert", key, "v" * 100, client="c1", seq=seq)


def test_a_refused_insert_is_an_answer_kept_across_a_restart(tmp_path: Path) -> None:
    process = FakeProcess(used=10 * MiB)
    with Database(tmp_path, memory_limit=process.limit(64 * MiB)) as db:
        assert db.execute(_insert(db, "kept", 1)).status is Status.OK
        process.grow(80 * MiB)
        refused = db.execute(_insert(db, "refused", 2))
        assert (refused.status, refused.error) == (Status.FAILED, OUT_OF_MEMORY)
        assert db.execute(Request("lookup", "kept")).status is Status.OK
        removed = db.execute(Request("remove", "kept", client="c1", seq=3))
        assert removed.status is Status.OK
        # Unnumbered, as nc sends it: refused the same way.
        plain = db.execute(Request("insert", "plain", 1))
        assert (plain.status, plain.error) == (Status.FAILED, OUT_OF_MEMORY)
        db.commit()
    # Room again, after a restart: the retried insert still gets its first answer
    # (exactly-once), which replay read from the log instead of deciding again.
    process.used = 10 * MiB
    with Database(tmp_path, memory_limit=process.limit(64 * MiB)) as db:
        again = db.execute(_insert(db, "refused", 2))
        assert (again.status, again.error) == (Status.FAILED, OUT_OF_MEMORY)
        assert db.execute(Request("lookup", "refused")).error == "KeyError"
        assert db.execute(Request("lookup", "kept")).error == "KeyError"  # removed
        assert db.execute(_insert(db, "refused", 4)).status is Status.OK


# ---------------------------------------------------------------- the server


def _resident(pid: int) -> int:
    return memory_kib(pid)[0] * 1024


def test_a_server_at_its_limit_refuses_inserts_serves_the_rest_and_recovers(
    spawn, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = start_server(spawn, data, "--sync", "no")
    limit = _resident(first.process.pid) + 24 * MiB
    first.process.stop()
    server = start_server(spawn, data, "--sync", "no", "--max-memory", str(limit))
    value = "x" * (256 * 1024)
    stored = []
    with HashTableClient.at("127.0.0.1", server.port, give_up_after=0) as table:
        with pytest.raises(ServerError, match=r"OutOfMemory: the server holds .* more than its"):
            for n in range(400):  # 100 MiB: well past the limit
                table.insert(f"big-{n}", value)
                stored.append(f"big-{n}")
        assert 10 < len(stored) < 400
        assert table.lookup(stored[0]) == value  # reads go on
        assert table.size() == len(stored)
        for key in stored:
            assert table.remove(key) == value  # removes go on, and free room
        wait_until(lambda: _inserted(table), timeout=10, what="an insert taken again")
    log = server.log()
    assert "refusing inserts until removes free room" in log
    assert "back under --max-memory" in log


def _inserted(table: HashTableClient) -> bool:
    try:
        table.insert("after", "room again")
    except ServerError:
        return False
    return True


def test_a_limit_below_what_the_table_takes_is_said_at_start(spawn, tmp_path: Path) -> None:
    server = start_server(spawn, tmp_path / "data", "--max-memory", "1M")
    wait_until(lambda: "every insert will be refused" in server.log(), timeout=10, what="warning")
    with HashTableClient.at("127.0.0.1", server.port, give_up_after=0) as table:
        with pytest.raises(ServerError, match="OutOfMemory"):
            table.insert("k", 1)
        with pytest.raises(KeyError):
            table.lookup("k")


def test_removing_small_values_at_random_makes_room_again(spawn, tmp_path: Path) -> None:
    """Python keeps the memory of small objects freed here and there, so the resident
    size stays up; the server counts what the removes freed instead."""
    data = tmp_path / "data"
    first = start_server(spawn, data, "--sync", "no")
    limit = _resident(first.process.pid) + 24 * MiB
    first.process.stop()
    server = start_server(spawn, data, "--sync", "no", "--max-memory", str(limit))
    batch = 2000
    inserted = 0
    with Wire(server.port) as wire:
        while True:  # small values, pipelined, until refused
            wire.send(*({"method": "insert", "key": f"k{inserted + n}",
                         "value": {"a": [1, 2, 3], "b": f"text {inserted + n}"}}
                        for n in range(batch)))  # fmt: skip
            replies = [wire.reply() for _ in range(batch)]
            taken = sum(reply["status"] == "ok" for reply in replies)
            inserted += taken
            if taken < batch:
                assert replies[taken]["error"] == "OutOfMemory"
                break
            assert inserted < 1_000_000, "never refused"
        resident = _resident(server.process.pid)
        keys = random.Random(1).sample(range(inserted), inserted // 2)
        for start in range(0, len(keys), batch):
            chunk = keys[start : start + batch]
            wire.send(*({"method": "remove", "key": f"k{key}"} for key in chunk))
            assert all(wire.reply()["status"] == "ok" for _ in chunk)
        assert _resident(server.process.pid) > limit  # the resident size did not show it
        assert resident > limit
        reply = wire.call({"method": "insert", "key": "after", "value": {"a": [1]}})
        assert reply["status"] == "ok", reply


def test_the_default_limit_reads_the_process_own_control_group(tmp_path: Path) -> None:
    """The group's own limit and those above it count, in v2, hybrid and v1 layouts,
    not the root's alone (a systemd MemoryMax= is on the service's own group)."""
    (tmp_path / "system.slice" / "app.service").mkdir(parents=True)
    (tmp_path / "system.slice" / "app.service" / "memory.max").write_text("max\n")
    (tmp_path / "system.slice" / "memory.max").write_text(f"{300 * MiB}\n")
    (tmp_path / "memory" / "box").mkdir(parents=True)
    (tmp_path / "memory" / "box" / "memory.limit_in_bytes").write_text(f"{200 * MiB}\n")
    files = cgroup_limit_files("0::/system.slice/app.service\n", tmp_path)
    assert files[:3] == [
        tmp_path / "system.slice" / "app.service" / "memory.max",
        tmp_path / "system.slice" / "memory.max",
        tmp_path / "memory.max",
    ]
    assert tmp_path / "unified" / "system.slice" / "memory.max" in files
    assert smallest_limit(files) == 300 * MiB
    v1 = cgroup_limit_files("4:memory:/box\n3:cpu:/other\n", tmp_path)
    assert v1 == [tmp_path / "memory" / "box" / "memory.limit_in_bytes",
                  tmp_path / "memory" / "memory.limit_in_bytes"]  # fmt: skip
    assert smallest_limit(v1) == 200 * MiB
    assert smallest_limit(cgroup_limit_files("0::/\n", tmp_path / "none")) is None
