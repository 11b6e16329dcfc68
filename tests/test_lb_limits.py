"""The TS and the LS at their connection limits: idle connections make room for
new ones (netkit.room) and cannot lock the working ones out."""

from __future__ import annotations

import socket
import time

from harness.processes import wait_until
from lb.cli import SAMPLES
from netkit.room import IdleOrder
from tests.lb_support import RIGHT, start_ls, start_ts

QUERY = b"amazon.com\n"
ANSWER = RIGHT[b"amazon.com"] + b"\n"


def closed(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (EOF or reset), waiting up to 5 s."""
    sock.settimeout(5)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def answered(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(QUERY)
        try:
            return sock.recv(100) == ANSWER
        except ConnectionResetError:
            return False


def test_the_oldest_silent_gives_way_first_then_the_idlest_for_a_moment_if_allowed():
    room: IdleOrder[str] = IdleOrder()
    for name, connected in (("a", 0.0), ("b", 1.0), ("c", 2.0)):
        room.add(name, connected)
    assert room.idlest(now=2.1) == "a"  # silent: no line from it yet
    room.heard("a", 2.4)  # a line from it: it keeps its place while others are silent
    assert room.idlest(now=2.5) == "b"
    assert room.idlest(now=2.5, may_close=lambda name: name != "b") == "c"
    assert room.idlest(now=2.1, may_close=lambda name: name != "b") is None  # c too young
    room.remove("b")
    room.remove("b")  # idempotent
    room.heard("c", 2.6)
    assert room.idlest(now=3.0) is None  # both spoke, neither idle for a second
    assert room.idlest(now=3.5) == "a" and len(room) == 2 and "a" in room
    room.heard("ghost", 4.0)  # one already gone: nothing
    assert "ghost" not in room


def connected(port: int) -> socket.socket:
    """A connection the server has surely accepted: it has answered a query on it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(QUERY)
    assert sock.recv(100) == ANSWER
    return sock


def test_a_ts_at_its_limit_closes_the_idlest_for_a_newcomer_or_refuses_it(spawn):
    ts, port = start_ts(spawn, SAMPLES / "PROJ2-DNSTS1.txt", "--max-connections", "3")
    held = [connected(port) for _ in range(3)]
    try:
        # Nobody has been idle for a second: the newcomer is refused, the rest kept.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as early:
            assert closed(early)
        wait_until(lambda: answered(port), what="a newcomer answered after a second")
        assert closed(held[0])  # the one idle longest made room
        for sock in held[1:]:  # the others kept their places
            sock.sendall(QUERY)
            assert sock.recv(100) == ANSWER
    finally:
        for sock in held:
            sock.close()
    assert "closed to make room" in ts.output() and "refused at the limit" in ts.output()


def test_a_flood_of_silent_connections_does_not_push_out_a_connection_that_spoke(spawn):
    """The attack a plain TS met once idle connections could make room: connections
    that send nothing, opened faster than one a second, each only displaces another
    of them, and an LS link idle between its queries keeps its place."""
    ts, port = start_ts(spawn, SAMPLES / "PROJ2-DNSTS1.txt", "--max-connections", "4")
    with connected(port) as link:
        flood: list[socket.socket] = []
        deadline = time.monotonic() + 1.5  # the link idle for longer than a second
        while time.monotonic() < deadline:
            flood.append(socket.create_connection(("127.0.0.1", port)))
            time.sleep(0.02)
        link.sendall(QUERY)
        assert link.recv(100) == ANSWER
        for sock in flood:
            sock.close()
    assert "closed to make room" in ts.output()


def test_an_ls_at_its_limit_keeps_a_client_waiting_for_its_answer(spawn):
    _, ts_port = start_ts(spawn, SAMPLES / "PROJ2-DNSTS1.txt")
    # A 3 s time-out: the waiting client is silent for longer than a second.
    ls, port = start_ls(spawn, [ts_port], "--max-clients", "2", "--timeout", "3")
    with connected(port) as idle, socket.create_connection(("127.0.0.1", port)) as waiting:
        waiting.sendall(b"nothinghere.com\n")  # no TS holds it: answered at the time-out
        wait_until(lambda: answered(port), what="a newcomer answered after a second")
        assert closed(idle)
        waiting.settimeout(10)
        assert waiting.recv(100) == b"nothinghere.com - TIMED OUT\n"
    assert "closed to make room" in ls.output()
