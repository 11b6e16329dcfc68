"""Versioned writes (the cluster's replicas): the newest version of a key wins,
whatever order the writes arrive in, a remove leaves a tombstone, and all of it
is durable and exactly-once like any mutation."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from hashtable.database import Database
from hashtable.logreader import read_records
from hashtable.protocol import encode_request, parse_request
from hashtable.request import Outcome, Request, Status
from hashtable.storage import LOG
from hashtable.table import Table


def now_us() -> int:
    return time.time_ns() // 1000


class Writer:
    """One client's numbered, versioned writes to a database."""

    def __init__(self, db: Database, client: str) -> None:
        self.db, self.client, self.seq = db, client, 0

    def send(self, method: str, key: str, version: int, value=None) -> Outcome:
        self.seq += 1
        return self.db.execute(self.request(method, key, version, value, self.seq))

    def request(self, method, key, version, value=None, seq=None) -> Request:
        return Request(
            method,
            key=key,
            value=value,
            client=self.client,
            seq=seq or self.seq,
            version=[version, self.client],  # the writer id: here the session's
        )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def state(db: Database) -> tuple[dict, dict, dict]:
    table = db.table
    return dict(table.data), dict(table.versions), dict(table.tombstones)


# ---------------------------------------------------------------- order does not matter


WRITES = [  # (method, version, value): two writers' inserts and a remove
    ("insert", 10, "a"),
    ("insert", 30, "c"),
    ("remove", 20, None),
    ("insert", 25, "b"),
]


@pytest.mark.parametrize("order", list(itertools.permutations(range(len(WRITES)))))
def test_every_arrival_order_ends_in_the_newest_version(tmp_path, order):
    base = now_us()
    with Database(tmp_path / "d") as db:
        writer = Writer(db, "w")
        for index in order:
            method, version, value = WRITES[index]
            writer.send(method, "k", base + version, value)
        assert db.execute(Request("lookup", key="k")) == Outcome.ok("c")
        assert db.table.versions == {"k": (base + 30, "w")} and not db.table.tombstones


def test_a_remove_is_not_undone_by_a_late_older_insert(data):
    base = now_us()
    with Database(data) as db:
        writer = Writer(db, "w")
        assert writer.send("remove", "k", base + 2).result == {"applied": True}
        late = writer.send("insert", "k", base + 1, "old")
        assert late.result == {"applied": False, "newer": [base + 2, "w"]}
        assert db.execute(Request("lookup", key="k")).error == "KeyError"
        assert db.execute(Request("size")).result == 0  # a tombstone is not a key
        assert db.execute(Request("scan", regex="")).result == []
        assert writer.send("insert", "k", base + 3, "new").result == {"applied": True}
        assert db.execute(Request("lookup", key="k")).result == "new"


def test_a_remove_reports_the_value_it_removed_and_that_values_version(data):
    base = now_us()
    with Database(data) as db:
        Writer(db, "a").send("insert", "k", base + 1, {"n": 1})
        removed = Writer(db, "b").send("remove", "k", base + 2)
        assert removed.result == {"applied": True, "removed": {"n": 1}, "was": [base + 1, "a"]}
        db.execute(Request("insert", key="p", value="plain"))
        removed = Writer(db, "c").send("remove", "p", base + 3)
        assert removed.result == {"applied": True, "removed": "plain", "was": None}


def test_equal_numbers_are_ordered_by_client(data):
    base = now_us()
    with Database(data) as db:
        Writer(db, "b").send("insert", "k", base, "from b")
        lost = Writer(db, "a").send("insert", "k", base, "from a")
        assert lost.result == {"applied": False, "newer": [base, "b"], "value": "from b"}
        assert db.table.data["k"] == "from b"


def test_a_refusal_says_what_the_server_holds_and_a_second_remove_that_it_was_gone(data):
    """What a cluster writer needs to bring the other replicas to the newer write, and
    to know that another remove had taken the value first."""
    base = now_us()
    with Database(data) as db:
        Writer(db, "a").send("insert", "k", base + 1, None)  # JSON null is a value too
        older = Writer(db, "b").send("insert", "k", base, "late")
        assert older.result == {"applied": False, "newer": [base + 1, "a"], "value": None}
        Writer(db, "c").send("remove", "k", base + 2)
        older = Writer(db, "d").send("insert", "k", base + 1, "late")
        assert older.result == {"applied": False, "newer": [base + 2, "c"]}  # a tombstone
        again = Writer(db, "e").send("remove", "k", base + 3)
        assert again.result == {"applied": True, "was": [base + 2, "c"]}
        first = Writer(db, "f").send("remove", "never", base + 4)
        assert first.result == {"applied": True}


def test_plain_writes_behave_as_before_and_clear_the_version(data):
    base = now_us()
    with Database(data) as db:
        writer = Writer(db, "w")
        writer.send("insert", "k", base, "versioned")
        assert db.execute(Request("insert", key="k", value="plain")) == Outcome.ok(None)
        assert db.table.versions == {}
        assert db.execute(Request("remove", key="k")) == Outcome.ok("plain")
        assert db.execute(Request("remove", key="k")).error == "KeyError"
        writer.send("remove", "t", base + 1)
        db.execute(Request("insert", key="t", value="plain over a tombstone"))
        assert db.table.tombstones == {}


# ---------------------------------------------------------------- durable, exactly-once


def test_versions_and_tombstones_survive_replay_and_compaction(data):
    base = now_us()
    with Database(data, compact_after=1) as db:
        writer = Writer(db, "w")
        for n in range(30):
            writer.send("insert", f"k{n}", base + n, n)
        for n in range(0, 30, 3):
            writer.send("remove", f"k{n}", base + 100 + n)
        writer.send("remove", "never-inserted", base + 200)
        db.commit()
        expected = state(db)
        db.maintain()  # forks a compaction
        deadline = time.monotonic() + 30
        while db.stats()["compactions"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
            db.maintain()
        assert db.stats()["compactions"] >= 1
        writer.send("insert", "after", base + 300, "x")  # in the log only
        db.commit()
        expected = state(db)
    with Database(data) as db:
        assert state(db) == expected
        assert list(db.table.tombstones) == list(expected[2])  # the purge order too
        late = Writer(db, "late").send("insert", "k0", base, "old")  # older than its tombstone
        assert late.result["applied"] is False


def test_a_retried_versioned_write_is_answered_as_the_first_time_even_after_a_crash(data):
    base = now_us()
    with Database(data) as db:
        Writer(db, "a").send("insert", "k", base + 1, "a")
        writer = Writer(db, "b")
        first = writer.send("remove", "k", base + 2)
        db.commit()
    with Database(data) as db:
        again = db.execute(writer.request("remove", "k", base + 2))
        assert again == first and first.result["removed"] == "a"
        assert not db.needs_commit


def test_the_log_record_carries_the_version(data):
    base = now_us()
    with Database(data) as db:
        Writer(db, "w").send("insert", "k", base, 1)
        db.commit()
    (record,) = read_records(data / LOG)
    assert record["version"] == [base, "w"] and record["client"] == "w" and record["value"] == 1


# ---------------------------------------------------------------- the window


def test_versions_far_from_the_servers_clock_are_refused_and_the_refusal_replayed(data):
    with Database(data, version_window=60) as db:
        writer = Writer(db, "w")
        stale = writer.send("insert", "k", now_us() - 120_000_000, "old")
        ahead = writer.send("insert", "k", now_us() + 120_000_000, "future")
        assert (stale.status, stale.error) == (Status.FAILED, "StaleVersion")
        assert (ahead.status, ahead.error) == (Status.FAILED, "VersionAhead")
        assert "k" not in db.table.data
        db.commit()
    # Replayed long after, with another window, the refusals are read, not decided again.
    with Database(data, version_window=10**6) as db:
        assert db.execute(writer.request("insert", "k", 0, seq=1)) == stale
        assert db.execute(writer.request("insert", "k", 0, seq=2)) == ahead


def test_tombstones_are_forgotten_past_the_window_and_older_writes_refused(data):
    with Database(data, version_window=0.2) as db:
        writer = Writer(db, "w")
        removed_at = now_us()
        writer.send("remove", "k", removed_at)
        assert db.table.tombstones
        deadline = time.monotonic() + 10
        while db.table.tombstones and time.monotonic() < deadline:
            time.sleep(0.05)
            db.maintain()
        assert not db.table.tombstones
        late = writer.send("insert", "k", removed_at - 1, "resurrected?")
        assert late.error == "StaleVersion" and "k" not in db.table.data


def test_a_write_older_than_the_horizon_and_than_what_the_key_holds_is_superseded(data):
    """Not StaleVersion, which a writer answers by sending it again as new (and so
    applying it a second time where other replicas took it): the key's newer version
    is reason enough, and says what the replica holds."""
    with Database(data, version_window=60) as db:
        writer = Writer(db, "w")
        writer.send("remove", "k", now_us())
        late = writer.send("insert", "k", now_us() - 120_000_000, "late")
        assert late.result["applied"] is False and "value" not in late.result  # a tombstone
        db.commit()
    with Database(data, version_window=60) as db:  # replayed: decided alike
        assert db.execute(writer.request("insert", "k", 0, seq=2)) == late


def test_purge_stops_at_the_first_tombstone_inside_the_window():
    table = Table()
    for key, number in (("a", 1), ("b", 5), ("c", 2)):
        table.remove_versioned(key, (number, "w"))
    assert table.purge_tombstones(3) == 1  # "c" is older, but behind "b": kept (safe)
    assert list(table.tombstones) == ["b", "c"]


# ---------------------------------------------------------------- the wire


def test_version_on_the_wire():
    line = b'{"method":"remove","key":"k","client":"c","seq":2,"ack":1,"version":[7,"w"]}'
    request = parse_request(line)
    assert isinstance(request, Request) and request.version == [7, "w"]
    assert parse_request(encode_request(request).rstrip()) == request


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"method":"insert","key":"k","value":1,"version":[7,"w"]}', '"version" needs "client"'),
        (b'{"method":"lookup","key":"k","version":[7,"w"]}', 'lookup takes no field "version"'),
        (
            b'{"method":"insert","key":"k","value":1,"client":"c","seq":1,"version":[0,"w"]}',
            'field "version" must be [number, writer]',
        ),
        (
            b'{"method":"insert","key":"k","value":1,"client":"c","seq":1,"version":7}',
            'field "version" must be [number, writer]',
        ),
        (
            b'{"method":"insert","key":"k","value":1,"client":"c","seq":1,"version":[7,""]}',
            'field "version" must be [number, writer]',
        ),
    ],
)
def test_version_rules(line, expected):
    outcome = parse_request(line)
    message = outcome.problem if isinstance(outcome, Request) else outcome.message
    assert expected in message


def test_the_database_applies_the_same_rules_to_requests_built_in_python(data):
    with Database(data) as db:
        refused = db.execute(Request("insert", key="k", value=1, version=[5, "w"]))
        assert refused.status is Status.INVALID and '"version" needs "client"' in refused.message
        refused = db.execute(
            Request("insert", key="k", value=1, client="c", seq=1, version=[-1, "w"])
        )
        assert refused.status is Status.INVALID and 'field "version"' in refused.message
