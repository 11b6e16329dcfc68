"""A cluster whose servers reach their --max-memory: a replica out of memory is waited
for like one that is down, and a write every replica refused took effect nowhere."""

from __future__ import annotations

import threading

import pytest

from harness.processes import wait_until
from hashtable.errors import ServerError, ServiceUnavailable
from tests.cluster_support import Cluster


@pytest.fixture
def duo(spawn, tmp_path, catalog) -> Cluster:
    return Cluster(spawn, tmp_path, catalog.host, "room", 2)


def full(cluster: Cluster, index: int) -> None:
    """Restarts server ``index`` with a limit below what it holds at start."""
    cluster.servers[index].process.stop()
    cluster.restart(index, "--max-memory", "1M")


def test_a_write_waits_for_a_replica_out_of_memory_and_completes_with_room(duo):
    full(duo, 1)
    with duo.client(2) as table:
        done = threading.Event()
        thread = threading.Thread(target=lambda: (table.insert("k", "v1"), done.set()))
        thread.start()
        try:
            wait_until(lambda: duo.contents(0).get("k") == "v1", what="the replica with room")
            wait_until(lambda: "refusing inserts" in duo.servers[1].log(), what="the refusal")
            assert not done.wait(0.5), "the insert returned while a replica refused it"
            duo.servers[1].process.stop()
            duo.restart(1)  # room again
            assert done.wait(30), "the insert did not complete once the replica had room"
        finally:
            thread.join(60)
        assert duo.contents(1) == duo.contents(0) == {"k": "v1"}
        assert table.lookup("k") == "v1"


def test_a_write_waiting_for_room_gives_up_on_time(duo):
    full(duo, 1)
    with (
        duo.client(2, give_up_after=1.0) as table,
        pytest.raises(ServiceUnavailable, match=r"insert unreachable for 1 s: .*--max-memory"),
    ):
        table.insert("k", "v1")


def test_a_write_every_replica_refused_for_memory_is_refused_at_once(duo):
    full(duo, 0)
    full(duo, 1)
    with duo.client(2) as table:
        with pytest.raises(ServerError, match="OutOfMemory: the server holds"):
            table.insert("k", "v1")
        with pytest.raises(KeyError):
            table.lookup("k")
        assert table.size() == 0
