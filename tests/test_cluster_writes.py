"""What a cluster writer makes of its replicas' replies (hashtable.cluster.writes),
without a network: the cases the black-box runs found by racing real clients."""

from __future__ import annotations

import pytest

from hashtable.cluster.clock import HybridClock
from hashtable.cluster.writes import (
    behind,
    newest,
    refusals,
    repair,
    write_result,
)
from hashtable.request import Outcome, Status

OURS = [1_000, "me"]


def refused(number: int, *value: object) -> Outcome:
    result: dict = {"applied": False, "newer": [number, "other"]}
    if value:
        result["value"] = value[0]
    return Outcome.ok(result)


def test_its_own_version_held_is_no_refusal_and_the_clock_passes_the_others():
    clock = HybridClock()
    own = Outcome.ok({"applied": False, "newer": OURS})  # applied before, reply forgotten
    assert refusals([own, Outcome.ok({"applied": True})], OURS, clock) == [] and clock.last == 0
    found = refusals([refused(5_000, "v"), refused(7_000)], OURS, clock)
    assert newest(found)["newer"] == [7_000, "other"] and clock.last == 7_000
    failed = Outcome(Status.FAILED, error="StaleVersion")
    assert refusals([failed], OURS, HybridClock()) == []


def test_a_replica_that_took_the_write_or_held_older_is_brought_to_the_newer_one():
    newer = {"applied": False, "newer": [7_000, "other"], "value": "theirs"}
    assert behind("insert", Outcome.ok({"applied": True}), newer)
    assert behind("insert", Outcome.ok(None), newer)  # applied, its reply forgotten
    assert behind("remove", Outcome.ok({"applied": True}), newer)  # a tombstone, then a value
    assert behind("remove", refused(5_000, "older"), newer)
    assert not behind("remove", refused(7_000, "theirs"), newer)
    fix = repair("k", newer)
    assert (fix.method, fix.key, fix.value) == ("insert", "k", "theirs")
    assert fix.version == [7_000, "other"]
    tombstone = {"applied": False, "newer": [7_000, "other"]}
    assert (repair("k", tombstone).method, repair("k", tombstone).version) == (
        "remove",
        [7_000, "other"],
    )
    assert repair("k", {"applied": False, "newer": [7_000, "o"], "value": None}).method == "insert"
    # Tombstones on both sides are left alone (the key is absent on both): a repair
    # would hide from the newer remove, still under way, that an older one took the
    # value. A value older than the tombstone is not: K=3, three states.
    assert not behind("remove", Outcome.ok({"applied": True}), tombstone)
    assert not behind("remove", refused(5_000), tombstone)
    assert behind("remove", refused(6_000, "z"), tombstone)
    assert behind("insert", Outcome.ok({"applied": True}), tombstone)


def test_of_two_removes_racing_one_returns_the_value_and_the_other_key_error():
    """Each reached one replica first: the later (by version) found the earlier's
    tombstone on the other replica, which is newer than the value it removed there."""
    later = [
        Outcome.ok({"applied": True, "removed": "v", "was": [500, "w"]}),
        Outcome.ok({"applied": True, "was": [900, "first-remover"]}),
    ]
    with pytest.raises(KeyError):
        write_result("remove", "k", later, [[1_000, "me"]], HybridClock())
    earlier = [Outcome.ok({"applied": True, "removed": "v", "was": [500, "w"]}), refused(1_000)]
    assert write_result("remove", "k", earlier, [[900, "me"]], HybridClock()) == "v"


def test_a_remove_sent_again_does_not_take_its_own_tombstone_for_another_remove():
    """Refused as stale by one replica, it went again with a new version: the first
    round's removal counts, and the tombstone it left is its own."""
    rounds = [
        Outcome.ok({"applied": True, "removed": "v", "was": [500, "w"]}),  # round 1, replica A
        Outcome.ok({"applied": True, "was": [900, "me"]}),  # round 2, A: its own tombstone
        Outcome.ok({"applied": True, "removed": "v", "was": [500, "w"]}),  # round 2, B
    ]
    assert write_result("remove", "k", rounds, [[900, "me"], [1_100, "me"]], HybridClock()) == "v"
    with pytest.raises(KeyError):  # nothing anywhere
        write_result("remove", "k", [Outcome.ok({"applied": True})], [OURS], HybridClock())
