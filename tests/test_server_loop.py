"""The server in-process, turn by turn, over real sockets and the real database.

Driving the loop one turn at a time (``server.loop.run_once``) makes the
scheduling rules observable without timing: what one turn reads, executes,
commits and sends. The rules themselves are tested without sockets in
tests/test_scheduler.py.
"""

from __future__ import annotations

import contextlib
import socket
import time
from functools import partial
from pathlib import Path

import orjson
import pytest

from harness.processes import wait_until
from hashtable.database import Database
from hashtable.request import Request
from hashtable.server import Limits, Server
from netkit.listeners import open_listener
from tests import server_support
from tests.server_support import OutOfFiles

# The in-process server here serves plain text (no TLS context): the loop's rules
# do not depend on it, and tests/test_security.py covers the TLS side.
Wire = partial(server_support.Wire, plain=True)


class SpyDatabase(Database):
    """The real database, noting what happens around commits."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.commits: list[int] = []  # mutations per commit
        self._since_commit = 0
        self.before_commit = lambda: None
        self.fail_on: str | None = None

    def start_parsed(self, request):
        if request.method == self.fail_on:
            raise RuntimeError("engine bug")
        if request.method == "scan" and request.regex == "slow":
            time.sleep(0.005)
        outcome = super().start_parsed(request)
        if request.method in ("insert", "remove"):
            self._since_commit += 1
        return outcome

    def commit(self) -> None:
        self.before_commit()
        super().commit()
        self.commits.append(self._since_commit)
        self._since_commit = 0


@pytest.fixture
def db(tmp_path: Path):
    # A scan time-out far above what the tests scan: they are about slicing, and the
    # machine may be busy (the time-out itself: tests/test_engine_table.py).
    database = SpyDatabase(tmp_path / "data", scan_timeout=30.0)
    yield database
    database.close()


def make_server(db: Database, **limits) -> Server:
    return Server(db, open_listener("127.0.0.1", 0), limits=Limits(**limits))


@pytest.fixture
def server(db):
    server = make_server(db)
    yield server
    server.close()


def turn(server: Server, timeout: float | None = 0.05) -> None:
    server.loop.run_once(timeout)  # with work left, the loop itself does not wait


def turns_until(server: Server, condition, limit: int = 200) -> int:
    for n in range(1, limit + 1):
        turn(server)
        if condition():
            return n
    raise AssertionError("condition not reached")


def input_waiting(server: Server, count: int) -> bool:
    """True once ``count`` connections have unread input on the server's side."""
    waiting = 0
    for peer in server._peers:
        with contextlib.suppress(BlockingIOError):
            waiting += bool(peer.conn.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    return waiting >= count


def readable(sock: socket.socket) -> bool:
    timeout = sock.gettimeout()  # restored after: a later recv must not wait forever
    sock.setblocking(False)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    finally:
        sock.settimeout(timeout)


def at_eof(sock: socket.socket) -> bool:
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.settimeout(timeout)


def accept_all(server: Server, clients: list[Wire]) -> None:
    turns_until(server, lambda: len(server._peers) == len(clients))


def test_one_turn_commits_once_then_answers_everyone(server, db):
    clients = [Wire(server.port) for _ in range(4)]
    accept_all(server, clients)
    for n, client in enumerate(clients):
        client.send({"method": "insert", "key": f"k{n}", "value": n})
    wait_until(lambda: input_waiting(server, 4), what="all four requests at the server")

    def nobody_answered_yet() -> None:
        assert not any(readable(c.sock) for c in clients), "a reply left before the commit"

    db.before_commit = nobody_answered_yet
    turn(server, 0)
    assert db.commits == [4]  # one commit for the whole turn: group commit
    assert all(c.reply() == {"status": "ok", "result": None} for c in clients)


def test_pipelined_replies_come_in_request_order(server):
    with Wire(server.port) as client:
        requests = []
        for n in range(300):
            requests.append({"method": "insert", "key": f"k{n}", "value": {"n": n}})
            requests.append({"method": "lookup", "key": f"k{n}"})
            requests.append(
                {"method": "remove", "key": f"k{n - 1}"} if n % 2 else {"method": "size"}
            )
        client.send(*requests)
        replies = []

        def all_answered() -> bool:
            client.sock.settimeout(0.01)
            try:
                while len(replies) < len(requests):
                    replies.append(client.reply())
            except TimeoutError:
                return False
            return True

        turns_until(server, all_answered)
    for n in range(300):
        insert, lookup, third = replies[3 * n : 3 * n + 3]
        assert insert == {"status": "ok", "result": None}
        assert lookup == {"status": "ok", "result": {"n": n}}
        if n % 2:
            assert third == {"status": "ok", "result": {"n": n - 1}}
        else:
            assert third["status"] == "ok" and isinstance(third["result"], int)


def test_a_client_that_does_not_read_is_not_read_from(db):
    server = make_server(db, high_water=64 * 1024)
    try:
        big = "x" * 20_000
        with Wire(server.port) as setup:
            setup.send({"method": "insert", "key": "big", "value": big})
            turns_until(server, lambda: readable(setup.sock))
        hog = socket.create_connection(("127.0.0.1", server.port))
        hog.sendall(b'{"method": "lookup", "key": "big"}\n' * 2000)
        other = Wire(server.port)
        for _ in range(100):
            turn(server, 0.01)
        [peer] = [p for p in server._peers if p.conn.sock.getpeername() == hog.getsockname()]
        # Output stays bounded by the high-water mark plus one reply; the rest of
        # the requests wait unread.
        assert peer.conn.buffered <= 64 * 1024 + 20_100
        assert peer.conn.backlogged
        assert peer.served < 2000
        # Meanwhile another client is served.
        other.send({"method": "size"})
        turns_until(server, lambda: readable(other.sock))
        assert other.reply() == {"status": "ok", "result": 1}
        # Once the hog reads, it gets every reply, in full.
        expected = len(orjson.dumps({"status": "ok", "result": big})) + 1
        received = 0
        deadline = time.monotonic() + 60
        while received < 2000 * expected and time.monotonic() < deadline:
            turn(server, 0)
            try:
                hog.setblocking(False)
                received += len(hog.recv(1 << 20))
            except BlockingIOError:
                pass
        assert received == 2000 * expected
        hog.close()
        other.close()
    finally:
        server.close()


def test_slow_requests_of_one_client_do_not_hold_up_another(server):
    with Wire(server.port) as slow, Wire(server.port) as quick:
        accept_all(server, [slow, quick])
        slow.send(*[{"method": "scan", "regex": "slow"}] * 40)
        turns_until(server, lambda: server.scheduler.busy)
        quick.send({"method": "size"})
        turns_until(server, lambda: readable(quick.sock))
        assert quick.reply() == {"status": "ok", "result": 0}
        [slow_peer] = [
            p for p in server._peers if p.conn.sock.getpeername() == slow.sock.getsockname()
        ]
        assert slow_peer.has_work  # still has requests queued: it got a slice, not the loop
        turns_until(server, lambda: not slow_peer.has_work)
        assert [slow.reply()["status"] for _ in range(40)] == ["ok"] * 40


def test_an_over_long_line_is_answered_then_the_connection_closed(db):
    server = make_server(db, max_request_bytes=1024)
    try:
        with Wire(server.port) as client:
            client.sock.sendall(b'{"method": "lookup", "key": "' + b"k" * 5000)
            turns_until(server, lambda: readable(client.sock))
            reply = client.reply()
            assert reply["status"] == "invalid"
            assert "longer than 1024 bytes" in reply["message"]
            client.sock.shutdown(socket.SHUT_WR)
            turns_until(server, lambda: not server._peers)
            assert client.closed_by_server()
    finally:
        server.close()


def test_half_a_request_is_dropped_after_the_request_timeout(db):
    server = make_server(db, request_timeout=0.3)
    try:
        with Wire(server.port) as half, Wire(server.port) as whole:
            half.sock.sendall(b'{"method": "si')
            whole.send({"method": "size"})
            deadline = time.monotonic() + 10
            while len(server._peers) != 1 and time.monotonic() < deadline:
                turn(server, 0.1)
            [left] = server._peers
            assert left.conn.sock.getpeername() == whole.sock.getsockname()
            assert whole.reply() == {"status": "ok", "result": 0}
            assert half.closed_by_server()
    finally:
        server.close()


def test_connections_over_the_cap_are_closed_at_once(db):
    server = make_server(db, max_connections=2)
    try:
        first, second = Wire(server.port), Wire(server.port)
        accept_all(server, [first, second])
        third = Wire(server.port)
        turns_until(server, lambda: at_eof(third.sock))
        assert len(server._peers) == 2
        first.send({"method": "size"})
        turns_until(server, lambda: readable(first.sock))
        assert first.reply()["status"] == "ok"
        for wire in (first, second, third):
            wire.close()
    finally:
        server.close()


def test_running_out_of_file_descriptors_pauses_accepting_instead_of_spinning(db):
    listener = OutOfFiles(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = Server(db, listener)
    try:
        client = Wire(server.port)
        turn(server, 1.0)
        assert server.acceptor.paused
        assert not server._peers
        # While paused the listener is not watched, so a turn sleeps instead of spinning.
        events = server.loop._selector.select(0)
        assert all(key.fileobj is not listener for key, _ in events)
        turns_until(server, lambda: server._peers)
        client.send({"method": "size"})
        turns_until(server, lambda: readable(client.sock))
        assert client.reply() == {"status": "ok", "result": 0}
        client.close()
    finally:
        server.close()


def test_a_failing_read_is_answered_and_the_loop_goes_on(server, db):
    db.fail_on = "size"
    with Wire(server.port) as client:
        client.send({"method": "size"}, {"method": "lookup", "key": "k"})
        turns_until(server, lambda: readable(client.sock))
        assert client.reply()["error"] == "ServerError"
        turns_until(server, lambda: client.lines or readable(client.sock))
        assert client.reply()["error"] == "KeyError"


def test_a_failing_mutation_stops_the_server(server, db):
    db.fail_on = "insert"
    with Wire(server.port) as client:
        client.send({"method": "insert", "key": "k", "value": 1})
        with pytest.raises(RuntimeError, match="engine bug"):
            turns_until(server, lambda: False)


def test_stop_wakes_a_sleeping_loop(server):
    server.stop()
    started = time.monotonic()
    turn(server, 30)  # would sleep 30 s without the wake-up
    assert time.monotonic() - started < 25


def peer_of(server: Server, wire: Wire):
    [peer] = [p for p in server._peers if p.conn.sock.getpeername() == wire.sock.getsockname()]
    return peer


def test_a_long_scan_runs_in_slices_with_other_clients_served_between(server, db):
    # Direct to the dict: a read test needs a big table, not 100,000 logged inserts.
    db.table.data.update((f"k{n}", n) for n in range(100_000))
    with Wire(server.port) as scanner, Wire(server.port) as other:
        accept_all(server, [scanner, other])
        scanner.send({"method": "scan", "regex": "^k[0-9]*7$"}, {"method": "size"})
        turns_until(server, lambda: peer_of(server, scanner).job is not None)
        # While the scan is under way, the other client writes and reads, and the
        # scanner's next request waits for the scan's reply.
        other.send(
            {"method": "insert", "key": "k0000007", "value": "new"},
            {"method": "remove", "key": "k7"},
            {"method": "lookup", "key": "k0000007"},
        )
        turns_until(server, lambda: len(other.lines) == 3 or readable(other.sock))
        assert [other.reply() for _ in range(3)] == [
            {"status": "ok", "result": None},
            {"status": "ok", "result": 7},
            {"status": "ok", "result": "new"},
        ]
        assert peer_of(server, scanner).job is not None
        assert not readable(scanner.sock)
        turns_until(server, lambda: readable(scanner.sock))
        scan = scanner.reply()
        # The table as of the scan's start: k7 still there, k0000007 not yet.
        assert sorted(scan["result"]) == sorted([f"k{n}", n] for n in range(7, 100_000, 10))
        # The size runs in the same turn if the scan's last slice left time, else in the next.
        turns_until(server, lambda: scanner.lines or readable(scanner.sock))
        assert scanner.reply() == {"status": "ok", "result": 100_000}


def test_catastrophic_scans_end_at_the_key_limit_and_others_are_served_meanwhile(server, db):
    for n in range(10):
        db.execute(Request("insert", key="a" * 30 + f"!{n}", value=n))
    scan = {"method": "scan", "regex": "^(a|aa)+$"}
    with Wire(server.port) as evil, Wire(server.port) as other:
        accept_all(server, [evil, other])
        evil.send(scan, scan, scan)
        turns_until(server, lambda: peer_of(server, evil).has_work)
        for n in range(5):
            other.send({"method": "lookup", "key": "a" * 30 + f"!{n}"})
            turns_until(server, lambda: readable(other.sock), limit=3)
            assert other.reply() == {"status": "ok", "result": n}
        turns_until(server, lambda: not peer_of(server, evil).has_work)
        for _ in range(3):
            reply = evil.reply()
            assert reply["status"] == "invalid"
            assert "longer than 0.05 s on one key" in reply["message"]


def test_scans_past_the_limit_wait_for_a_free_slot_while_others_are_served(db, monkeypatch):
    import hashtable.scheduler

    monkeypatch.setattr(hashtable.scheduler, "TURN_SLICE", 0.0)  # one key per turn: long scans
    for n in range(40):
        db.execute(Request("insert", key=f"k{n}", value=n))
    db.commit()
    server = make_server(db, max_scans=1)
    try:
        with Wire(server.port) as first, Wire(server.port) as second, Wire(server.port) as other:
            accept_all(server, [first, second, other])
            first.send({"method": "scan", "regex": "^k"})
            turns_until(server, lambda: peer_of(server, first).job is not None)
            second.send({"method": "query", "subkey": "n", "subvalue": 1}, {"method": "size"})
            turns_until(server, lambda: peer_of(server, second).parked)
            assert peer_of(server, second).job is None and server.scheduler.jobs == 1
            # A parked client's requests wait; everyone else is served.
            other.send({"method": "lookup", "key": "k3"})
            turns_until(server, lambda: readable(other.sock))
            assert other.reply() == {"status": "ok", "result": 3}
            assert not readable(first.sock) and not readable(second.sock)
            most = 0
            for _ in range(400):
                turn(server)
                most = max(most, server.scheduler.jobs)
                if readable(second.sock):
                    break
            assert most == 1  # never two at once
            assert sorted(first.reply()["result"]) == sorted([f"k{n}", n] for n in range(40))
            assert second.reply() == {"status": "ok", "result": []}  # values are not objects
            turns_until(server, lambda: readable(second.sock))
            assert second.reply() == {"status": "ok", "result": 40}
            assert server.scheduler.jobs == 0 and not server.scheduler.parked
    finally:
        server.close()


def test_a_client_that_leaves_while_parked_holds_nobody_up(db, monkeypatch):
    import hashtable.scheduler

    monkeypatch.setattr(hashtable.scheduler, "TURN_SLICE", 0.0)
    for n in range(20):
        db.execute(Request("insert", key=f"k{n}", value=n))
    db.commit()
    server = make_server(db, max_scans=1)
    try:
        with Wire(server.port) as first, Wire(server.port) as third:
            second = Wire(server.port)
            accept_all(server, [first, second, third])
            first.send({"method": "scan", "regex": "k"})
            turns_until(server, lambda: peer_of(server, first).job is not None)
            second.send({"method": "scan", "regex": "k"})
            turns_until(server, lambda: peer_of(server, second).parked)
            second.sock.close()  # leaves while parked: noticed once its turn comes
            third.send({"method": "scan", "regex": "k1"})
            turns_until(server, lambda: peer_of(server, third).parked)
            turns_until(server, lambda: readable(third.sock))
            assert len(first.reply()["result"]) == 20
            assert len(third.reply()["result"]) == 11  # k1, k10..k19
            turns_until(server, lambda: len(server._peers) == 2)
            assert server.scheduler.jobs == 0 and not server.scheduler.parked
    finally:
        server.close()
