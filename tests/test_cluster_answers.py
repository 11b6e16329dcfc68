"""The cluster client's answers from many servers' replies, without a network."""

from __future__ import annotations

import pytest

from hashtable.cluster.answers import census_size, merged_pairs
from hashtable.placement import key_hash


def census(keys: list[str], servers: int) -> list[list]:
    """What a server holding ``keys`` answers to ``size`` with ``servers``."""
    entries = [[0, 0] for _ in range(servers)]
    for key in keys:
        entry = entries[key_hash(key) % servers]
        entry[0] += 1
        entry[1] = (entry[1] + key_hash(key)) % 2**64
    return [[count, f"{digest:016x}"] for count, digest in entries]


def placed(keys: list[str], servers: int, copies: int) -> dict[int, list[str]]:
    held: dict[int, list[str]] = {index: [] for index in range(servers)}
    for key in keys:
        first = key_hash(key) % servers
        for n in range(copies):
            held[(first + n) % servers].append(key)
    return held


KEYS = [f"key-{n}" for n in range(40)]


@pytest.mark.parametrize("servers, copies", [(1, 1), (3, 1), (3, 2), (3, 3), (5, 3)])
def test_agreeing_replicas_count_each_key_once(servers, copies):
    held = placed(KEYS, servers, copies)
    censuses = {index: census(keys, servers) for index, keys in held.items()}
    assert census_size(censuses, servers, copies) == len(KEYS)


def test_keys_on_a_server_they_do_not_belong_on_are_left_out_as_by_a_scan():
    held = placed(KEYS, 3, 2)
    stray = next(k for k in (f"s{n}" for n in range(100)) if key_hash(k) % 3 == 0)
    held[2].append(stray)  # primary 0's replicas are 0 and 1
    censuses = {index: census(keys, 3) for index, keys in held.items()}
    pairs = {index: [[key, 1] for key in keys] for index, keys in held.items()}
    assert census_size(censuses, 3, 2) == len(merged_pairs(pairs, 3, 2)) == len(KEYS)


def test_replicas_that_differ_in_count_or_only_in_which_keys_tell_nothing():
    held = placed(KEYS, 3, 2)
    primary_0 = [k for k in (f"h{n}" for n in range(500)) if key_hash(k) % 3 == 0][:2]
    missing = {index: census(keys, 3) for index, keys in held.items()}
    missing[1] = census(held[1] + [primary_0[0]], 3)  # one replica has a write the other lacks
    assert census_size(missing, 3, 2) is None
    halves = {index: census(keys, 3) for index, keys in held.items()}
    halves[0] = census(held[0] + [primary_0[0]], 3)  # the same count, other keys
    halves[1] = census(held[1] + [primary_0[1]], 3)
    assert halves[0][0][0] == halves[1][0][0]
    assert census_size(halves, 3, 2) is None


@pytest.mark.parametrize(
    "answer",
    [
        7,  # a server that ignores "servers" and answers its plain size
        [[1, "00"], [0, "00"]],  # a census of 2, not 3
        [[1, "00"], "x", [0, "00"]],
        [[1.5, "00"], [0, "00"], [0, "00"]],
        None,
    ],
)
def test_an_answer_that_is_not_a_census_means_the_keys_are_listed(answer):
    held = placed(KEYS, 3, 2)
    censuses = {index: census(keys, 3) for index, keys in held.items()}
    for index in range(3):
        assert census_size({**censuses, index: answer}, 3, 2) is None


def test_a_server_missing_means_the_keys_are_listed():
    held = placed(KEYS, 3, 2)
    censuses = {index: census(keys, 3) for index, keys in held.items() if index != 1}
    assert census_size(censuses, 3, 2) is None
