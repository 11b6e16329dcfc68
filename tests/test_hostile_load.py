"""Hostile load (issue 13): room kept for the secret's holders, sessions that cannot be taken away.

Admission (hashtable.admission) sans-IO, then an in-process server (TLS, on a
thread) with real sockets and clients.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from hashtable.admission import Admission
from hashtable.client import HashTableClient
from hashtable.database import Database
from hashtable.server import Limits, Server
from hashtable.sessions import SessionLimits
from netkit.listeners import open_listener
from netkit.security import load_secret
from tests.server_support import Wire


def test_a_full_pool_of_unauthenticated_connections_makes_room_oldest_first():
    admission = Admission(
        max_connections=10, max_unauthenticated=3, max_unauthenticated_per_source=3
    )
    for n in range(3):
        assert admission.arriving("attacker") == (True, [])
        admission.joined(f"a{n}", "attacker", authenticated=False)
    assert admission.arriving("attacker") == (True, ["a0"])  # the oldest gives way
    admission.joined("a3", "attacker", authenticated=False)
    assert admission.arriving("honest") == (True, ["a1"])
    admission.joined("h", "honest", authenticated=False)
    admission.authenticate("h")  # out of the pool: nobody can push it out now
    assert admission.unauthenticated == 2 and admission.authenticated == 1
    for n in range(4, 20):
        admitted, evicted = admission.arriving("attacker")
        assert admitted and "h" not in evicted
        admission.joined(f"a{n}", "attacker", authenticated=False)
        for gone in evicted:
            admission.left(gone)  # the server closes them; nothing counted twice
    assert admission.authenticated == 1 and admission.unauthenticated == 3


def test_one_source_cannot_take_the_whole_pool():
    admission = Admission(
        max_connections=100, max_unauthenticated=10, max_unauthenticated_per_source=4
    )
    for n in range(4):
        admission.joined(f"a{n}", "attacker", authenticated=False)
    admission.joined("b0", "other", authenticated=False)
    assert admission.arriving("attacker") == (True, ["a0"])  # its own oldest, not b0's place
    assert admission.arriving("other") == (True, [])


def test_only_authenticated_clients_can_fill_the_server():
    admission = Admission(
        max_connections=2, max_unauthenticated=2, max_unauthenticated_per_source=2
    )
    admission.joined("x", "a", authenticated=True)
    admission.joined("p", "b", authenticated=False)
    assert admission.arriving("c") == (True, ["p"])  # a pending one gives way
    admission.joined("y", "c", authenticated=True)
    assert admission.arriving("d") == (False, [])  # both slots authenticated: refused
    admission.left("x")
    assert admission.arriving("d") == (True, [])


@pytest.fixture
def tls_server(tmp_path: Path, request):
    limits = getattr(request, "param", None)
    database = Database(tmp_path / "data", session_limits=limits)
    server = Server(
        database,
        open_listener("127.0.0.1", 0),
        limits=Limits(max_unauthenticated=40, max_unauthenticated_per_source=40),
        tls=load_secret().server_context(),
    )
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    yield server
    server.stop()
    thread.join(timeout=10)
    database.close()


def test_an_idle_flood_never_locks_out_a_client_with_the_secret(tls_server):
    flood = [socket.create_connection(("127.0.0.1", tls_server.port)) for _ in range(300)]
    slow = [socket.create_connection(("127.0.0.1", tls_server.port)) for _ in range(20)]
    try:
        for sock in slow:
            sock.send(b"\x16\x03")  # half a handshake, never finished
        with Wire(tls_server.port, timeout=5) as client:
            assert client.call({"method": "size"}) == {"status": "ok", "result": 0}
        assert tls_server.admission.unauthenticated <= 40
    finally:
        for sock in flood + slow:
            sock.close()


@pytest.mark.parametrize(
    "tls_server",
    [SessionLimits(max_clients=2, max_outcomes_per_client=100, max_outcomes=1000, max_forgotten=2)],
    indirect=True,
)
def test_clients_whose_sessions_a_storm_evicted_keep_writing_without_an_error(tls_server, caplog):
    port = tls_server.port
    honest = [HashTableClient.at("127.0.0.1", port) for _ in range(3)]
    for n, client in enumerate(honest):
        client.insert(f"honest-{n}", 0)
    for storm in range(20):  # each a new client: every honest session is forgotten, twice over
        with HashTableClient.at("127.0.0.1", port) as stranger:
            stranger.insert(f"storm-{storm}", storm)
    for round_ in range(1, 4):
        for n, client in enumerate(honest):
            client.insert(f"honest-{n}", round_)  # no error: a new session, transparently
            with client.pipeline() as p:
                for i in range(5):
                    p.insert(f"honest-{n}-{i}", round_)
                removed = p.remove(f"honest-{n}-0")
            assert removed.result() == round_
    for n, client in enumerate(honest):
        assert client.lookup(f"honest-{n}") == 3
        assert [client.lookup(f"honest-{n}-{i}") for i in range(1, 5)] == [3] * 4
        client.close()
    # They were forgotten, told so (nothing applied), and started new sessions.
    assert caplog.text.count("a new session starts") >= 3
