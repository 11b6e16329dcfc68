"""The client when things go wrong: lost replies, silent servers, discovery, failover.

A retried request must never be applied twice nor answer differently: each test
uses ``remove``, whose second application would answer ``KeyError`` instead of
the value removed the first time.
"""

from __future__ import annotations

import contextlib
import getpass
import socket
import sys
import threading
from pathlib import Path

import pytest

from catalog.client import catalog_addresses, query
from harness.processes import free_port, wait_until
from HashTableClient import HashTableClient
from netkit.framing import LineFramer
from tests.server_support import Wire, start_server

FAST_RETRY = {"backoff_initial": 0.01, "backoff_cap": 0.05}


class LossyProxy:
    """Forwards requests to the server, but loses every ``every``-th reply.

    It reads the replies' lines, so it stands between a plain-text client and a
    ``--no-auth`` server: what is tested is the client's retrying, which is the
    same code over TLS (a TLS proxy could only cut records, not replies).

    ``cut``: the connection is closed instead of delivering it (the server has
    executed the request). ``stall``: nothing more is delivered on that
    connection, which stays open, so the client must time out.
    """

    def __init__(self, target: int, every: int, mode: str) -> None:
        self.target, self.every, self.mode = target, every, mode
        self.replies = self.lost = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
                self._sockets += [client, upstream]
                threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
                threading.Thread(target=self._replies, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def _replies(self, upstream: socket.socket, client: socket.socket) -> None:
        framer = LineFramer(1 << 30)
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                for line in framer.feed(data):
                    self.replies += 1
                    if self.replies % self.every == 0:
                        self.lost += 1
                        if self.mode == "cut":
                            # shutdown, not just close: it wakes the pump thread's recv
                            # and sends the FIN at once.
                            for sock in (client, upstream):
                                sock.shutdown(socket.SHUT_RDWR)
                        return  # stall: deliver nothing more
                    client.sendall(line + b"\n")

    def close(self) -> None:
        self.listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture
def server(spawn, tmp_path: Path):
    return start_server(spawn, tmp_path / "data", "--no-auth")


def exercise(table: HashTableClient, prefix: str, n: int) -> None:
    """Mutations whose double application would show, single and pipelined."""
    for i in range(n):
        table.insert(f"{prefix}{i}", i)
        assert table.remove(f"{prefix}{i}") == i
        table.insert(f"{prefix}{i}", {"i": i})
    with table.pipeline() as p:
        for i in range(n):
            p.remove(f"{prefix}{i}")
        for i in range(n):
            p.insert(f"{prefix}p{i}", i)
        for i in range(n):
            p.remove(f"{prefix}p{i}")
    assert p.results() == [{"i": i} for i in range(n)] + [None] * n + list(range(n))
    assert table.scan(f"^{prefix}") == []


def test_replies_lost_with_the_connection_are_retried_exactly_once(server, caplog):
    proxy = LossyProxy(server.port, every=7, mode="cut")
    try:
        with HashTableClient.at("127.0.0.1", proxy.port, auth=False, **FAST_RETRY) as table:
            exercise(table, "cut-", 100)
        assert proxy.lost >= 40
        assert "retrying in" in caplog.text
    finally:
        proxy.close()


def test_a_server_that_stops_answering_is_timed_out_and_retried(server, caplog):
    proxy = LossyProxy(server.port, every=40, mode="stall")
    try:
        with HashTableClient.at(
            "127.0.0.1", proxy.port, timeout=0.3, auth=False, **FAST_RETRY
        ) as table:
            exercise(table, "stall-", 20)
        assert proxy.lost >= 2
        assert "no answer in time" in caplog.text
    finally:
        proxy.close()


def discovery(spawn, tmp_path: Path, catalog: str, caplog) -> None:
    project = f"disc-{tmp_path.name[-20:]}"
    results: list = []

    def early_client() -> None:
        # Starts before the server exists: the catalog does not list it yet.
        with HashTableClient(project, catalog=catalog, **FAST_RETRY) as table:
            table.insert("k", "v")
            results.append(table.remove("k"))

    thread = threading.Thread(target=early_client)
    thread.start()
    wait_until(lambda: "lists no hashtable server" in caplog.text, what="a retry")
    server = start_server(spawn, tmp_path / "data", project=project, catalog=catalog)
    thread.join(timeout=30)
    assert results == ["v"]
    [record] = [
        r for r in query(catalogs=catalog_addresses(catalog)) if r.get("project") == project
    ]
    assert record["type"] == "hashtable" and record["port"] == server.port
    assert record["owner"] == getpass.getuser()
    for field in ("keys", "requests", "uptime", "version", "sync"):
        assert field in record


def test_discovery_through_our_catalog(spawn, tmp_path, catalog, caplog):
    discovery(spawn, tmp_path, catalog.host, caplog)


@pytest.mark.cctools
def test_discovery_through_the_real_cctools_catalog(spawn, tmp_path, cctools_catalog, caplog):
    discovery(spawn, tmp_path, cctools_catalog.host, caplog)


CLIENT_PROGRAM = """
import sys
from HashTableClient import HashTableClient

project, catalog, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with HashTableClient(project, catalog=catalog) as table:
    for i in range(n):
        table.insert(f"k{i}", i)
        if i % 2:
            removed = table.remove(f"k{i}")
            if removed != i:
                sys.exit(f"remove k{i} returned {removed!r}")
        print("step", i, flush=True)
    print("size", table.size(), flush=True)
"""


def test_a_server_killed_and_restarted_on_a_new_port_is_invisible_to_a_client(
    spawn, tmp_path, catalog
):
    data = tmp_path / "data"
    first = start_server(spawn, data, project="failover", catalog=catalog.host)
    program = tmp_path / "client.py"
    program.write_text(CLIENT_PROGRAM)
    n = 1500
    client = spawn([sys.executable, str(program), "failover", catalog.host, str(n)], name="client")
    wait_until(lambda: "step 300\n" in client.output(), timeout=30, what="the client to run")
    first.process.kill()
    wait_until(lambda: "retrying in" in client.output(), what="the client to notice")
    new_port = free_port()
    assert new_port != first.port
    second = start_server(spawn, data, project="failover", catalog=catalog.host, port=new_port)
    assert client.popen.wait(timeout=60) == 0, client.output()
    output = client.output()
    assert f"size {n // 2}\n" in output
    assert "retrying in" in output  # it did notice, and said so
    with Wire(second.port) as wire:
        wire.send(*[{"method": "lookup", "key": f"k{i}"} for i in range(n)])
        for i in range(n):
            reply = wire.reply()
            if i % 2:
                assert reply["error"] == "KeyError", i
            else:
                assert reply == {"status": "ok", "result": i}, i
