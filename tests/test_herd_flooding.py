"""Flooding with servers killed, catch-up, convergence and durability: real processes, real kills."""

from __future__ import annotations

import itertools
import re
import signal
import threading
import time

import pytest

from harness.herd import Herd, ask
from harness.processes import wait_until

FAST = ("--backoff-initial", "0.05", "--backoff-cap", "0.3")


def knows(herd: Herd, server: str, client: str) -> str | None:
    return herd.knows(server, client)


def reachable(herd: Herd, start: str, alive: set[str]) -> set[str]:
    """The servers ``start`` reaches over links between live servers."""
    seen, todo = {start}, [start]
    while todo:
        for other in herd.config.neighbours(todo.pop()):
            if other in alive and other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


@pytest.fixture
def herd(tmp_path):
    herd = Herd(tmp_path, *FAST)
    try:
        herd.start()
        herd.wait_links()
        yield herd
    finally:
        herd.stop()


def test_every_pair_of_killed_servers_floods_exactly_to_the_connected_ones(herd):
    """All ten pairs; each survivor in turn takes an update, which must reach exactly the
    survivors still connected to it. Then the pair comes back and catches up on all of it."""
    names = sorted(herd.config.servers)
    for number, pair in enumerate(itertools.combinations(names, 2)):
        herd.kill(*pair)
        alive = set(names) - set(pair)
        herd.wait_links()
        updates = {}
        for receiver in sorted(alive):
            client = f"pair{number}-{receiver}"
            updates[client] = ask(herd.port(receiver), f"IAMAT {client} +1+1 {number}.5\n").strip()
            connected = reachable(herd, receiver, alive)
            wait_until(
                lambda client=client, connected=connected, line=updates[client]: all(
                    knows(herd, s, client) == line for s in connected
                ),
                timeout=10,
                what=f"{client} at {connected}",
            )
            # Cut off from the receiver: no path, so nothing can have arrived.
            for other in alive - connected:
                assert knows(herd, other, client) is None, (pair, receiver, other)
        herd.start(*pair)
        herd.wait_links()
        wait_until(
            lambda updates=updates: all(
                knows(herd, s, c) == line for s in names for c, line in updates.items()
            ),
            timeout=10,
            what=f"catch-up after {pair} came back",
        )


def test_a_restarted_server_catches_up_and_a_cut_off_one_too(herd):
    herd.kill("Welsh", "Holiday")  # Welsh down, and its only neighbour down
    herd.wait_links()
    lines = {
        f"missed{i}": ask(herd.port("Hands"), f"IAMAT missed{i} +2+2 {i}\n").strip()
        for i in range(100)
    }
    herd.start("Welsh")  # up, but cut off: Holiday is still down
    assert knows(herd, "Welsh", "missed0") is None
    herd.start("Holiday")
    herd.wait_links()
    wait_until(
        lambda: all(knows(herd, "Welsh", c) == line for c, line in lines.items()),
        timeout=10,
        what="Welsh to catch up through Holiday",
    )


def test_a_restarted_server_is_linked_at_once_however_long_its_dialer_backs_off(tmp_path):
    """Holiday dials Welsh (its name sorts first) and, with these options, waits 30 s
    between tries: Welsh knocks when it starts, and the link is up at once, at the
    first start (Holiday's first try failed) and after a SIGKILL; an IAMAT sent as
    soon as Welsh listens is answered once the link is up and Holiday has it."""
    herd = Herd(tmp_path, "--backoff-initial", "30", "--backoff-cap", "30")
    try:
        herd.start("Holiday")
        herd.start("Welsh")
        herd.wait_links(timeout=5)
        herd.kill("Welsh")
        herd.wait_links(timeout=5)  # Holiday's link dropped
        herd.start("Welsh")  # and at once, as it listens, before its link is up:
        at = ask(herd.port("Welsh"), "IAMAT knocked +1+1 1600000000\n").strip()
        assert knows(herd, "Holiday", "knocked") == at  # the reply waited for the link
        herd.wait_links(timeout=5)
    finally:
        herd.stop()
    assert "a knock from Welsh: redialling it" in herd.log_file("Holiday").read_text()


def test_a_frozen_neighbour_slows_nobody_and_its_link_resumes_where_it_left_off(tmp_path):
    herd = Herd(tmp_path, *FAST, "--ping-interval", "0.2", "--peer-timeout", "1",
                "--handshake-timeout", "1")  # fmt: skip
    try:
        herd.start()
        herd.wait_links()
        for i in range(50):
            ask(herd.port("Holiday"), f"IAMAT before{i} +3+3 {i}\n")
        wait_until(lambda: knows(herd, "Welsh", "before49"), what="the first flood")
        welsh = herd.processes["Welsh"]
        welsh.signal(signal.SIGSTOP)  # connected but silent: the link stays up for a while
        try:
            started = time.monotonic()
            for i in range(20):
                ask(herd.port("Holiday"), f"IAMAT during{i} +3+3 {i}\n")
            # At most one ack timeout (0.2 s) is spent waiting for Welsh, not 20.
            assert time.monotonic() - started < 2.0
            wait_until(lambda: "Welsh" not in herd.links_up("Holiday"), what="Welsh dropped")
            for i in range(10):  # missed for sure: no link to carry them
                ask(herd.port("Holiday"), f"IAMAT gap{i} +3+3 {i}\n")
        finally:
            welsh.signal(signal.SIGCONT)
        herd.wait_links()
        wait_until(lambda: knows(herd, "Welsh", "gap9"), what="Welsh to catch up")
        assert knows(herd, "Welsh", "during19")
        resumed = [
            line
            for line in herd.log_file("Holiday").read_text().splitlines()
            if "link to Welsh up" in line
        ][-1]
        after, total = re.search(r"sending changes after (\d+) of (\d+)", resumed).groups()
        assert 50 <= int(after) <= int(total) - 10  # only what Welsh missed, not the whole table
    finally:
        herd.stop()


def test_simultaneous_updates_converge_on_the_newest_by_client_time(herd):
    names = sorted(herd.config.servers)
    # Each server gets its own report for the same client at once; Welsh's is the newest.
    reports = {name: f"IAMAT racer +{i}+{i} 1700000000.{i}\n" for i, name in enumerate(names)}
    reports["Welsh"] = "IAMAT racer +9+9 1700000009.0\n"
    threads = [
        threading.Thread(target=ask, args=(herd.port(name), text)) for name, text in reports.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # An older report arriving later changes nothing anywhere.
    ask(herd.port("Hands"), "IAMAT racer +5+5 1700000005.0\n")

    def answers():
        return {knows(herd, name, "racer") for name in names}

    wait_until(lambda: len(answers()) == 1, what="every server to agree")
    (answer,) = answers()
    assert answer.startswith("AT Welsh ") and answer.endswith(" +9+9 1700000009.0")


def test_equal_client_times_still_converge(herd):
    names = sorted(herd.config.servers)
    for round_ in range(5):
        client = f"tie{round_}"
        threads = [
            threading.Thread(target=ask, args=(herd.port(n), f"IAMAT {client} +{i}+{i} 42.0\n"))
            for i, n in enumerate(names)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wait_until(
            lambda client=client: len({knows(herd, n, client) for n in names}) == 1,
            what=f"agreement on {client}",
        )


def test_acknowledged_locations_survive_sigkill(tmp_path):
    herd = Herd(tmp_path, *FAST)
    names = sorted(herd.config.servers)
    try:
        for name in names:
            herd.start(name, extra=["--data-dir", str(tmp_path / f"data-{name}")])
        herd.wait_links()
        # Spaces that are not the protocol's whitespace belong to the client ID.
        clients = [f"durable{i}" for i in range(300)] + ["nb\u00a0sp", "em\u2003sp", "fs\x1csep"]
        pipelined = "".join(f"IAMAT {client} +4+4 {i}.25\n" for i, client in enumerate(clients))
        replies = ask(herd.port("Goloman"), pipelined).split("\n")[:-1]
        assert len(replies) == 303 and all(r.startswith("AT Goloman") for r in replies)
        herd.kill(*names)  # every server at once: nobody to catch up from
        herd.start("Goloman", extra=["--data-dir", str(tmp_path / "data-Goloman")])
        assert all(knows(herd, "Goloman", c) == replies[i] for i, c in enumerate(clients))
        # Its neighbours kept theirs too (flooded before the reply left).
        herd.start("Wilkes", extra=["--data-dir", str(tmp_path / "data-Wilkes")])
        assert knows(herd, "Wilkes", "durable299") == replies[299]
    finally:
        herd.stop()
