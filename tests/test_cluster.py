"""The cluster with real processes: N servers, K copies, servers killed and restarted.

Each test starts its own catalog and servers (tests/cluster_support.py) and
looks at each server directly (a HashTableClient at its port) to see what the
ClusterClient left where.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict

import orjson
import pytest

from harness.processes import ROOT, free_port, python_module, wait_until
from harness.procfs import alive
from hashtable.client import HashTableClient
from hashtable.cluster import ClusterClient, key_hash, replicas
from hashtable.errors import InvalidRequestError, ServerError, ServiceUnavailable
from hashtable.logreader import read_records
from hashtable.storage import LOG
from tests.cluster_support import Cluster
from tests.server_support import Wire


@pytest.fixture
def cluster3(spawn, tmp_path, catalog) -> Cluster:
    return Cluster(spawn, tmp_path, catalog.host, "trio", 3)


def holders(cluster: Cluster) -> dict[str, set[int]]:
    """key -> the servers that hold it."""
    found: dict[str, set[int]] = defaultdict(set)
    for index in range(len(cluster.servers)):
        for key in cluster.contents(index):
            found[key].add(index)
    return found


def assert_replicas_identical(cluster: Cluster, copies: int) -> dict[str, object]:
    """Every key on exactly its K servers, with the same value on each; returns the table."""
    contents = [cluster.contents(index) for index in range(len(cluster.servers))]
    table: dict[str, object] = {}
    for index, held in enumerate(contents):
        for key, value in held.items():
            where = replicas(key, len(contents), copies)
            assert index in where, f"{key!r} on server {index}, not one of its replicas {where}"
            for other in where:
                assert contents[other].get(key, "<absent>") == value, (
                    f"{key!r}: server {index} holds {value!r}, server {other} "
                    f"{contents[other].get(key, '<absent>')!r}"
                )
            table[key] = value
    return table


# ---------------------------------------------------------------- placement


def test_the_placement_is_blake2b_of_the_utf8_key_as_documented():
    # docs/cluster.md gives these (and `printf zebra | b2sum`); other languages must agree.
    assert key_hash("zebra") == 0xAAD97EEED28F372F
    assert replicas("zebra", 3, 2) == [0, 1] and replicas("zebra", 5, 3) == [1, 2, 3]
    assert key_hash("ключ") == 0xD6E2DEDDD1C32C43
    for key in ("zebra", "", "ключ", "k" * 1000):
        digest = hashlib.blake2b(key.encode("utf-8")).digest()
        assert key_hash(key) == int.from_bytes(digest[:8], "big")
    assert replicas("zebra", 5, 3) == [(key_hash("zebra") % 5 + n) % 5 for n in range(3)]


def test_every_key_is_on_its_k_servers_and_no_other(cluster3):
    with cluster3.client(2) as table:
        keys = {f"key-{n}": {"n": n} for n in range(60)}
        for key, value in keys.items():
            table.insert(key, value)
        found = holders(cluster3)
        assert {key: sorted(where) for key, where in found.items()} == {
            key: sorted(table.where(key)) for key in keys
        }
        assert Counter(len(where) for where in found.values()) == {2: 60}
        # Every server is some keys' primary: the hash spreads them.
        assert {table.where(key)[0] for key in keys} == {0, 1, 2}


@pytest.mark.parametrize(("servers", "copies"), [(1, 1), (3, 1), (3, 3)])
def test_any_k_from_1_to_n(spawn, tmp_path, catalog, servers, copies):
    cluster = Cluster(spawn, tmp_path, catalog.host, f"shape{servers}{copies}", servers)
    with cluster.client(copies) as table:
        for n in range(20):
            table.insert(f"k{n}", n)
        assert table.lookup("k7") == 7 and table.size() == 20
        assert table.remove("k7") == 7 and table.size() == 19
        found = holders(cluster)
        assert all(len(where) == copies for where in found.values()) and len(found) == 19


@pytest.mark.parametrize(
    ("servers", "copies", "message"),
    [
        (3, 4, "1 <= K <= N = 3, not 4"),
        (3, 0, "1 <= K <= N = 3, not 0"),
        (0, 1, "N (the number of servers) must be a whole number from 1 to 1024, not 0"),
        (10**20, 2, "from 1 to 1024, not 100000000000000000000"),
        ("3", 1, "not '3'"),
    ],
)
def test_k_between_1_and_n_is_enforced_with_a_clear_error(servers, copies, message):
    with pytest.raises(ValueError, match="must be a whole number") as error:
        ClusterClient("x", servers, copies)
    assert message in str(error.value)


def test_a_cluster_name_its_servers_cannot_have_is_refused_at_once():
    with pytest.raises(ValueError, match="its server 'bad/name-2' cannot name a project"):
        ClusterClient("bad/name", 3, 2)
    ClusterClient("x" * 126, 10, 2)  # x...x-9: 128 characters, the most a project has
    with pytest.raises(ValueError, match="cannot name a project"):
        ClusterClient("x" * 126, 11, 2)


def test_n_and_k_are_both_required():
    with pytest.raises(
        ValueError, match=r"needs N \(servers\) and K .*ClusterClient\(NAME, N, K\)"
    ):
        ClusterClient("x", 3)


@pytest.mark.parametrize("key", [b"k", object(), {1}])
def test_a_key_json_cannot_carry_is_a_type_error_as_from_hashtableclient(key):
    """Refused before anything is sent (nothing listens at these addresses)."""
    single = HashTableClient.at("127.0.0.1", 9, auth=False)
    cluster = ClusterClient("x", 3, 2, addresses=[("127.0.0.1", 9)] * 3, auth=False)
    for table in (single, cluster):
        for call in (table.lookup, table.remove, lambda k: table.insert(k, 1)):  # noqa: B023
            with pytest.raises(TypeError):
                call(key)


def test_testperf_refuses_k_above_n_in_one_message():
    done = subprocess.run(
        [sys.executable, "TestPerf.py", "x", "3", "4"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "1 <= K <= N = 3, not 4" in done.stderr


# ---------------------------------------------------------------- failures


def test_reads_go_on_while_a_server_is_killed_and_do_not_wait_on_it(cluster3, caplog):
    with cluster3.client(2) as table:
        keys = {f"read-{n}": n for n in range(60)}
        for key, value in keys.items():
            table.insert(key, value)
        cluster3.kill(1)
        caplog.clear()
        began = time.monotonic()
        for _ in range(3):
            for key, value in keys.items():
                assert table.lookup(key) == value
        took = time.monotonic() - began
        # Remembered as down: tried again only as its backoff allows, not per key.
        attempts = caplog.text.count("trio-1")
        assert 1 <= attempts <= 2 + took / 0.05, caplog.text[-2000:]
        # Whole-table reads too: the other two hold a copy of every key.
        assert dict(table.scan("^read-")) == keys and table.size() == 60
        assert len(table.query("n", 3)) == 0  # values are numbers, not objects: none match


def test_a_read_given_up_on_one_replica_still_tries_one_whose_backoff_ended(cluster3):
    """Replica A, remembered as down from an earlier read, is skipped; B, frozen,
    times out after the read's time to give up: A, due by then, gets a last try."""
    key = next(k for k in (f"r{n}" for n in range(500)) if replicas(k, 3, 2) == [0, 1])
    a, b = (cluster3.servers[i].process for i in (0, 1))
    options = {"timeout": 1.5, "backoff_initial": 0.5, "backoff_cap": 0.5, "give_up_after": 1.0}
    with cluster3.client(2, **options) as table:
        table.insert(key, "v")
        a.signal(signal.SIGSTOP)
        try:
            for _ in range(2):  # one of the two starts at A, times out, fails over to B
                assert table.lookup(key) == "v"
        finally:
            a.signal(signal.SIGCONT)
        b.signal(signal.SIGSTOP)  # A is back, but remembered as down for 0.5 s more
        try:
            assert table.lookup(key) == "v"
        finally:
            b.signal(signal.SIGCONT)


def test_a_read_with_every_replica_refusing_gives_up_on_time_even_with_no_backoff():
    """The last tries after giving up end: a replica just tried is not tried again,
    even when its backoff is already over (it was looped on for ever)."""
    dead = [("127.0.0.1", free_port()), ("127.0.0.1", free_port())]
    options = {"backoff_initial": 1e-6, "backoff_cap": 1e-6, "give_up_after": 0.3}
    outcome: list[BaseException] = []

    def read() -> None:
        with ClusterClient("x", 2, 2, addresses=dead, auth=False, **options) as table:
            try:
                table.lookup("k")
            except ServiceUnavailable as exc:
                outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive() and len(outcome) == 1


def test_a_write_waits_for_a_dead_replica_and_completes_when_it_returns(cluster3):
    with cluster3.client(2) as table:
        key = next(f"w{n}" for n in range(100) if set(replicas(f"w{n}", 3, 2)) == {0, 1})
        cluster3.kill(1)
        done = threading.Event()
        thread = threading.Thread(target=lambda: (table.insert(key, "v1"), done.set()))
        thread.start()
        try:
            # Meanwhile: the live replica has it, the call has not returned.
            wait_until(lambda: cluster3.contents(0).get(key) == "v1", what="the live replica")
            assert not done.wait(1.0), "the insert returned while a replica was down"
            cluster3.restart(1)
            assert done.wait(30), "the insert did not complete after the replica came back"
        finally:
            thread.join(60)
        assert cluster3.contents(1).get(key) == "v1"
        assert_replicas_identical(cluster3, 2)


def test_an_operation_gives_up_on_time_and_does_not_spin_meanwhile(cluster3):
    """Past ``give_up_after`` an operation makes its last try and raises, although
    the members' backoff (1 s, 2 s, 4 s, ...) runs longer; it sleeps meanwhile.
    A later operation counts waiting on members remembered as down as failing."""
    key = next(f"g{n}" for n in range(100) if set(replicas(f"g{n}", 3, 2)) == {0, 1})
    cluster3.kill(0)
    cluster3.kill(1)
    options = {"backoff_initial": 1.0, "backoff_cap": 8.0, "give_up_after": 1.5}
    with cluster3.client(2, **options) as table:
        for what, operation in [
            ("lookup", lambda: table.lookup(key)),
            ("insert", lambda: table.insert(key, 1)),
            ("scan", lambda: table.scan("")),  # only server 2 left: some keys have no copy
        ]:
            began, cpu = time.monotonic(), time.thread_time()
            with pytest.raises(ServiceUnavailable, match=f"{what} unreachable for 1.5 s"):
                operation()
            took, spent = time.monotonic() - began, time.thread_time() - cpu
            assert 1.4 <= took < 2.5, f"{what} gave up after {took:.2f} s, not 1.5 s"
            assert spent < 0.3, f"{what} spent {spent:.2f} s of CPU waiting"


def test_a_write_given_up_is_on_the_replicas_that_were_up(cluster3):
    """Server 1 is remembered as down (an earlier write gave up on it) though it is
    back; server 0 is down. A write to both, given up on server 0, still gets its try
    on server 1 before the call gives up."""
    key = next(f"g{n}" for n in range(1000) if replicas(f"g{n}", 3, 2) == [0, 1])
    with cluster3.client(2, give_up_after=1, timeout=1) as table:
        cluster3.kill(1)
        with pytest.raises(ServiceUnavailable):
            table.insert(key, "first")
        cluster3.restart(1)
        # Still remembered as down for a while, as after a longer outage (restarting
        # it took longer than the backoff after one failure).
        table._members[1].retry_at = time.monotonic() + 30
        cluster3.kill(0)
        with pytest.raises(ServiceUnavailable):
            table.insert(key, "second")
    assert cluster3.contents(1).get(key) == "second"


def test_a_write_given_up_leaves_no_reply_to_be_taken_for_the_next_request(
    spawn, tmp_path, catalog
):
    """The write reaches server 0, then gives up on server 1 before server 0's
    reply is read: that connection is closed, so the next request on it cannot
    take the late reply for its own."""
    duo = Cluster(spawn, tmp_path, catalog.host, "duo", 2)
    with duo.client(2, give_up_after=0) as table:
        table.insert("before", "old")
        first = next(f"d{n}" for n in range(100) if replicas(f"d{n}", 2, 2)[0] == 0)
        duo.kill(1)
        with pytest.raises(ServiceUnavailable):
            table.insert(first, "new")
        duo.restart(1)
        # Reads take turns between the replicas: some of these are server 0's.
        assert [table.lookup("before") for _ in range(4)] == ["old"] * 4


def test_removes_leave_no_copy_and_a_late_older_insert_does_not_bring_a_key_back(cluster3):
    with cluster3.client(2) as table:
        table.insert("gone", {"v": 1})
        where = table.where("gone")
        # The version the insert had: read from the replica's log.
        log = cluster3.root / f"trio-{where[0]}" / LOG
        insert_version = next(
            record["version"] for record in read_records(log) if record.get("key") == "gone"
        )
        assert table.remove("gone") == {"v": 1}
        with pytest.raises(KeyError):
            table.remove("gone")
        with pytest.raises(KeyError):
            table.lookup("gone")
        assert "gone" not in holders(cluster3)
        # A retry of an older insert reaching a replica late (from some client that
        # was cut off): the replica's tombstone makes it change nothing.
        with Wire(cluster3.servers[where[1]].port) as wire:
            late = {"method": "insert", "key": "gone", "value": "late", "version": insert_version}
            reply = wire.call({**late, "client": "late-writer", "seq": 1})
        assert reply["result"]["applied"] is False
        assert "gone" not in holders(cluster3)


def test_a_write_after_one_from_a_clock_minutes_ahead_still_takes_effect(cluster3):
    """Last-writer-wins by clocks alone lost this insert to an earlier one by a writer
    whose clock is 5 minutes fast (inside the servers' window), and returned as if it
    had taken effect: it is sent again after the version it lost to."""
    with cluster3.client(2) as fast, cluster3.client(2) as table, cluster3.client(2) as fresh:
        ahead = fast._clock

        def five_minutes_fast() -> int:
            ahead.last = max(ahead.last + 1, time.time_ns() // 1000 + 300_000_000)
            return ahead.last

        ahead.next = five_minutes_fast  # type: ignore[method-assign]
        fast.insert("skew", "from-fast-first")
        table.insert("skew", "from-table-later")
        assert table.lookup("skew") == "from-table-later"
        assert fresh.lookup("skew") == "from-table-later"
        fast.insert("gone", "from-fast-first")
        assert table.remove("gone") == "from-fast-first"  # was KeyError: the insert "newer"
        with pytest.raises(KeyError):
            fresh.lookup("gone")
    assert assert_replicas_identical(cluster3, 2) == {"skew": "from-table-later"}


def test_a_write_half_way_leaves_no_replicas_apart_after_the_next_write(cluster3):
    """A write from a writer whose clock is a minute fast reached only one replica (its
    writer gave up, or died, half way). The next write, applied by the other replica
    and refused by that one, brings the other to it (both end alike, the half-way
    write ordered last, as a write still under way may be); the writes after it,
    refused by both, are sent again after it and take effect."""
    with cluster3.client(2) as table:
        table.insert("k", "before")
        second = table.where("k")[1]
        halfway = {
            "method": "insert",
            "key": "k",
            "value": "fast-halfway",
            "version": [time.time_ns() // 1000 + 60_000_000, "fast"],
            "client": "fast",
        }
        with Wire(cluster3.servers[second].port) as wire:
            assert wire.call({**halfway, "seq": 1})["result"]["applied"] is True
    for n, expected in enumerate(["fast-halfway", "later-1", "later-2"]):
        with cluster3.client(2) as other:  # each with a clock that has not seen it
            other.insert("k", f"later-{n}")
            assert {other.lookup("k") for _ in range(4)} == {expected}
        assert assert_replicas_identical(cluster3, 2) == {"k": expected}


@pytest.fixture
def held_back(monkeypatch) -> list:
    """Hooks that run a 2-replica write's calls in a chosen order, as if messages to
    some replicas were slow: each hook gets the write's calls and ``run``, and the
    write's remaining calls go once it returns."""
    import hashtable.cluster.client as cluster_client

    hooks: list = []
    real_run = cluster_client.run

    def run(calls, patience, *, keep_trying):
        if hooks and len(calls) == 2:
            hooks.pop(0)(calls, lambda some: real_run(some, patience, keep_trying=keep_trying))
        real_run(calls, patience, keep_trying=keep_trying)

    monkeypatch.setattr(cluster_client, "run", run)
    return hooks


def test_a_remove_that_returned_an_insert_is_not_undone_by_that_insert_arriving_late(
    cluster3, held_back
):
    """The insert reaches the first replica; a remove, newer, takes its value from there
    (and the old value from the second); then the insert reaches the second, too late.
    The remove came after the insert: the key ends removed, on both."""
    with cluster3.client(2) as writer, cluster3.client(2) as remover:
        writer.insert("raced", "orig")
        removed = []

        def first_only(calls, run):
            run(calls[:1])
            removed.append(remover.remove("raced"))

        held_back.append(first_only)
        writer.insert("raced", "late")
        assert removed == ["late"]
        with pytest.raises(KeyError):
            writer.lookup("raced")
    assert "raced" not in holders(cluster3)


def test_of_two_removes_racing_exactly_one_returns_the_value(cluster3, held_back):
    """Each reaches one replica first, then the other's: one remove took the value,
    and the other finds it gone (with one server, the second would raise KeyError)."""
    with cluster3.client(2) as first, cluster3.client(2) as second:
        first.insert("twice", "v")
        results: dict[str, object] = {}

        def interleaved(first_calls, run):
            run(first_calls[:1])  # the first remove reaches replica A

            def other_first(second_calls, run_second):
                run_second(second_calls[1:])  # the second reaches B
                run(first_calls[1:])  # the first's message to B arrives: refused

            held_back.append(other_first)
            try:
                results["second"] = second.remove("twice")
            except KeyError:
                results["second"] = KeyError

        held_back.append(interleaved)
        try:
            results["first"] = first.remove("twice")
        except KeyError:
            results["first"] = KeyError
        assert sorted(map(str, results.values())) == sorted([str(KeyError), "v"]), results
        with pytest.raises(KeyError):
            first.lookup("twice")
    assert "twice" not in holders(cluster3)


def test_a_writer_whose_clock_is_far_behind_the_servers_gets_their_refusal(cluster3):
    """Versions older than the servers' horizon (their clocks minus 600 s) are refused:
    sent again with new versions a few times, then the servers' reason is raised, not
    retried without end."""
    with cluster3.client(2) as table:
        slow = table._clock
        sent: list[int] = []

        def eleven_minutes_slow() -> int:
            sent.append(time.time_ns() // 1000 - 660_000_000 + len(sent))
            return sent[-1]

        slow.next = eleven_minutes_slow  # type: ignore[method-assign]
        with pytest.raises(ServerError, match=r"StaleVersion: .* older than this server's horizon"):
            table.insert("late", 1)
        assert len(sent) == 4  # the first try and three new versions
        with pytest.raises(KeyError):
            table.lookup("late")


@pytest.fixture
def asked(monkeypatch) -> list[str]:
    """The methods a ClusterClient asks every server for, in order."""
    methods: list[str] = []
    ask_all = ClusterClient._read_all

    def spy(self, request, need_all=False, for_method=None):
        methods.append(request.method)
        return ask_all(self, request, need_all, for_method)

    monkeypatch.setattr(ClusterClient, "_read_all", spy)
    return methods


def test_scan_query_and_size_count_every_key_once(cluster3, asked):
    with cluster3.client(2) as table:
        model = {}
        for n in range(80):
            value = {"n": n, "group": n % 4}
            table.insert(f"item-{n:02d}", value)
            model[f"item-{n:02d}"] = value
        for n in range(0, 80, 5):
            assert table.remove(f"item-{n:02d}") == model.pop(f"item-{n:02d}")
        table.insert("item-01", {"n": "changed"})
        model["item-01"] = {"n": "changed"}
        assert dict(table.scan("")) == model and len(table.scan("")) == len(model)
        assert sorted(table.scan("^item-1")) == sorted(
            (k, v) for k, v in model.items() if k.startswith("item-1")
        )
        assert sorted(table.query("group", 2)) == sorted(
            (k, v) for k, v in model.items() if v.get("group") == 2
        )
        asked.clear()
        assert table.size() == len(model) == 64
        assert asked == ["size"]  # the censuses agreed: no key was listed
        with table.pipeline() as queued:  # the same interface as HashTableClient's
            queued.insert("piped", 1)
            queued.lookup("piped")
            queued.remove("absent")
            queued.size()
        assert queued.results()[:2] == [None, 1] and queued.results()[3] == 65
        assert isinstance(queued.results()[2], KeyError)
        table.remove("piped")
        cluster3.kill(2)  # then the other two are counted key by key
        assert table.size() == 64 and dict(table.scan("")) == model


def test_size_counts_writes_given_up_half_way_once_even_when_counts_agree(cluster3, asked):
    """Two writes given up half way leave key a on server 0 only and key b on
    server 1 only, both of primary 0: each server counts one key of primary 0, and
    the sum of all counts is a multiple of K. The census' digests differ, so the
    keys are listed: each counted once."""
    with cluster3.client(2) as table:
        for n in range(10):
            table.insert(f"base-{n}", n)
    a, b = [key for key in (f"h{n}" for n in range(500)) if replicas(key, 3, 2) == [0, 1]][:2]
    for down, key in ((1, a), (0, b)):
        cluster3.kill(down)
        with cluster3.client(2, give_up_after=1) as table, pytest.raises(ServiceUnavailable):
            table.insert(key, "half")
        cluster3.restart(down)
    assert a in cluster3.contents(0) and a not in cluster3.contents(1)
    assert b in cluster3.contents(1) and b not in cluster3.contents(0)
    with cluster3.client(2) as table:
        asked.clear()
        assert table.size() == 12 and asked == ["size", "scan"]
        assert len(table.scan("")) == 12


def test_three_concurrent_writers_to_the_same_keys_leave_identical_replicas(
    spawn, tmp_path, catalog
):
    cluster = Cluster(spawn, tmp_path, catalog.host, "contended", 3)
    contenders = [
        spawn(
            python_module(
                "chaos.contender",
                "contended",
                "3",
                "2",
                "--catalog",
                catalog.host,
                "--keys",
                "8",
                "--seconds",
                "3",
                "--tag",
                f"c{n}",
                "--seed",
                str(n),
            ),
            name=f"contender{n}",
        )
        for n in range(3)
    ]
    for contender in contenders:
        assert contender.popen.wait(timeout=90) == 0, contender.output()
    writes = [int(c.output().split(": ")[1].split()[0]) for c in contenders]
    assert all(count > 20 for count in writes), writes
    table = assert_replicas_identical(cluster, 2)
    assert all(key.startswith("shared-") for key in table)


def test_a_retried_write_is_applied_once_on_every_replica(spawn, tmp_path, catalog):
    """Servers killed mid-run: every replica's log numbers each client's mutations
    1, 2, 3, ... with none twice, and every remove answers the value inserted.
    (The servers never compact, so that their logs keep every mutation.)"""
    cluster3 = Cluster(spawn, tmp_path, catalog.host, "trio", 3, "--compact-after", "1000000000")
    with cluster3.client(2) as table:
        stop = threading.Event()
        killer = threading.Thread(target=_kill_and_restart_in_turn, args=(cluster3, stop))
        killer.start()
        try:
            for n in range(150):
                table.insert(f"once-{n}", n)
                if n % 2:
                    assert table.remove(f"once-{n}") == n
        finally:
            stop.set()
            killer.join(60)
    for index in range(3):
        numbers: dict[str, list[int]] = defaultdict(list)  # session id -> its seqs
        for record in read_records(cluster3.root / f"trio-{index}" / LOG):
            numbers[record["client"]].append(record["seq"])
        assert numbers, f"server {index} logged nothing"
        for session, seqs in numbers.items():
            assert seqs == list(range(1, len(seqs) + 1)), f"server {index}, {session}: {seqs[:20]}"
    assert_replicas_identical(cluster3, 2)


def _kill_and_restart_in_turn(cluster: Cluster, stop: threading.Event) -> None:
    rng = random.Random(7)
    index = 0
    while not stop.wait(rng.uniform(0.2, 0.5)):
        cluster.kill(index)
        time.sleep(rng.uniform(0.1, 0.4))
        cluster.restart(index)
        index = (index + 1) % len(cluster.servers)


# ---------------------------------------------------------------- the programs


def test_testperf_measures_a_cluster(cluster3, catalog):
    done = subprocess.run(
        [sys.executable, "TestPerf.py", "trio", "3", "2", "--clients", "2", "--catalog",
         catalog.host, "--stage-seconds", "0.2", "--min-ops", "20", "--json", "/dev/null"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cluster: N=3 servers, K=2 copies" in done.stdout
    assert "=== 2 concurrent client(s) ===" in done.stdout
    assert holders(cluster3) == {}  # it removed what it inserted, from every replica


def test_testperf_with_the_wrong_n_writes_nothing(cluster3, catalog):
    def testperf(servers: str, copies: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "TestPerf.py", "trio", servers, copies, "--catalog", catalog.host,
             "--stage-seconds", "0.2", "--min-ops", "20", "--give-up-after", "2"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    larger = testperf("4", "2")  # trio-3 does not exist: nothing is written anywhere
    assert larger.returncode == 1 and "trio-3" in larger.stderr, larger.stderr
    assert "Traceback" not in larger.stderr
    assert holders(cluster3) == {}
    smaller = testperf("2", "1")  # runs, on trio-0 and trio-1, but says what it saw
    assert smaller.returncode == 0, smaller.stdout + smaller.stderr
    assert "the catalog also lists trio-2" in smaller.stderr
    assert holders(cluster3) == {}


def test_a_local_cluster_that_cannot_start_says_why_in_one_line(tmp_path):
    """A bad --catalog used to print the first server's whole usage text, then
    "x-1 stopped", and exit 1: now its own check (or the server's own reason) and 2."""
    where = ["--dir", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data")]
    for options, reason in (
        (["--catalog", "::::"], "start: error: --catalog: bad address '::::'"),
        (["--", "--sync", "sometimes"], "x-0 did not start: HashTableServer.py: error: "
                                        "argument --sync: invalid choice: 'sometimes'"),
    ):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "hashtable.cluster", "start", "x", "2", *where, *options],
            cwd=ROOT, capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        assert done.returncode == 2, done.stdout + done.stderr
        assert reason in done.stderr and done.stdout == ""
        assert "usage: HashTableServer.py" not in done.stderr and "Traceback" not in done.stderr
        *usage, last = done.stderr.strip().splitlines()
        assert reason in last and all(line.startswith(("usage: ", " ")) for line in usage)
        assert not list((tmp_path / "run").glob("*.pid"))  # nothing left running


def test_a_regex_too_big_is_an_invalid_request_as_a_bad_one_is(cluster3):
    with cluster3.client(2) as table:
        table.insert("k", 1)
        for pattern, message in (
            ("(", "invalid regex: missing )"),
            ("k" * 600, "more than the 512"),
        ):
            with pytest.raises(InvalidRequestError, match=re.escape(message)):
                table.scan(pattern)


def test_a_local_cluster_in_one_command(tmp_path, catalog):
    run = [sys.executable, "-m", "hashtable.cluster"]
    where = ["--dir", str(tmp_path / "run")]

    def cluster(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*run, *args], cwd=ROOT, capture_output=True, text=True, timeout=90)

    started = cluster("start", "local", "3", *where, "--data-dir", str(tmp_path / "data"),
                      "--catalog", catalog.host)  # fmt: skip
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert started.stdout.count("listening on port") == 3
        assert cluster("status", "local", *where).returncode == 0
        again = cluster("start", "local", "3", *where)  # nothing to do
        assert again.returncode == 0 and again.stdout.count("already running") == 3
        smaller = cluster("start", "local", "2", *where)
        assert smaller.returncode == 1 and "more than 2 servers" in smaller.stderr
        # Another cluster in the same directory is not this one.
        other = cluster("status", "other", *where)
        assert other.returncode == 1 and "no cluster 'other'" in other.stdout
        other = cluster("stop", "other", *where)
        assert other.returncode == 1 and "no cluster 'other' to stop" in other.stderr
        assert cluster("status", "local", *where).returncode == 0
        on_2 = next(key for key in (f"k{n}" for n in range(100)) if 2 in replicas(key, 3, 2))
        with ClusterClient("local", 3, 2, catalog=catalog.host, give_up_after=30) as table:
            table.insert(on_2, "v")
            assert table.lookup(on_2) == "v"
        # One dies: start brings back just that one, with its data.
        died = int((tmp_path / "run" / "local-2.pid").read_text())
        os.kill(died, signal.SIGKILL)
        wait_until(lambda: not alive(died), what="local-2 to die")
        assert cluster("status", "local", *where).returncode == 1
        revived = cluster("start", "local", "3", *where, "--data-dir", str(tmp_path / "data"),
                          "--catalog", catalog.host)  # fmt: skip
        assert revived.returncode == 0, revived.stdout + revived.stderr
        assert revived.stdout.count("already running") == 2
        port = int(revived.stdout.split("local-2 listening on port ")[1].split()[0])
        with HashTableClient.at("127.0.0.1", port, give_up_after=30) as server:
            assert server.lookup(on_2) == "v"
        frozen = int((tmp_path / "run" / "local-1.pid").read_text())
        os.kill(frozen, signal.SIGSTOP)  # a server that does not stop on SIGTERM
    finally:
        stopped = cluster("stop", "local", *where, "--timeout", "5")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert stopped.stdout.count(" stopped") == 2
    assert "local-1 did not stop within 5 s of SIGTERM: killed" in stopped.stdout
    assert not alive(frozen) and not (tmp_path / "run" / "local-1.pid").exists()
    status = cluster("status", "local", *where)
    assert status.returncode == 1 and "no cluster" in status.stdout
    assert (tmp_path / "data" / "local-2" / LOG).exists()
    (tmp_path / "file").write_text("")
    unusable = cluster("start", "local", "1", "--dir", str(tmp_path / "file" / "run"))
    assert unusable.returncode == 1 and "Traceback" not in unusable.stderr
    assert f"cannot use {tmp_path / 'file' / 'run'} for pid files and logs" in unusable.stderr


def test_the_versioned_writes_are_in_the_replicas_logs(cluster3):
    with cluster3.client(2) as table:
        table.insert("logged", [1, 2])
        for index in table.where("logged"):
            records = [
                record
                for record in read_records(cluster3.root / f"trio-{index}" / LOG)
                if record.get("key") == "logged"
            ]
            assert len(records) == 1 and records[0]["version"][1] == table.client_id, records
            assert orjson.loads(orjson.dumps(records[0]["value"])) == [1, 2]
