"""Security (docs/security.md): each threat of the spec, tried as an attacker would, on real processes.

The server and the honest clients share the tests' secret (tests/conftest.py);
the attackers hold another one, or none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import threading
import time
from pathlib import Path

import orjson
import pytest

from catalog.client import announce, query
from harness.processes import python_module, python_script, run_program, wait_until
from hashtable.client import AuthenticationError, HashTableClient, ServiceUnavailable
from netkit.security import load_secret
from tests.server_support import Wire, start_server

FAST = {"backoff_initial": 0.05, "backoff_cap": 0.2, "timeout": 2.0}


@pytest.fixture
def other_secret(tmp_path: Path) -> Path:
    """An attacker's secret: valid, but not the service's."""
    path = tmp_path / "attacker" / "secret"
    load_secret(path, create=True)
    return path


def stored(port: int, key: str) -> bool:
    with HashTableClient.at("127.0.0.1", port, **FAST) as table:
        try:
            table.lookup(key)
        except KeyError:
            return False
        return True


# ---------------------------------------------------------------- no secret, wrong secret


def test_without_the_secret_nothing_is_read_or_written(spawn, tmp_path):
    server = start_server(spawn, tmp_path / "data")
    with HashTableClient.at("127.0.0.1", server.port) as table:
        table.insert("password", "hunter2")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as plain:
        plain.sendall(
            b'{"method": "scan", "regex": ""}\n{"method": "insert", "key": "x", "value": 1}\n'
        )
        reply = plain.makefile("rb").read()  # one line, then the server closes
    assert b"hunter2" not in reply
    [line] = reply.splitlines()
    assert orjson.loads(line)["error"] == "AuthenticationRequired"
    assert not stored(server.port, "x")


def test_a_wrong_secret_fails_at_once_with_one_clear_message(
    spawn, tmp_path, catalog, other_secret
):
    server = start_server(spawn, tmp_path / "data", project="guarded", catalog=catalog.host)
    with HashTableClient("guarded", catalog=catalog.host, **FAST) as table:
        table.insert("k", 1)  # the honest client, through the catalog
    started = time.monotonic()
    with pytest.raises(AuthenticationError, match="another secret"):
        HashTableClient("guarded", catalog=catalog.host, secret_file=other_secret).lookup("k")
    with pytest.raises(AuthenticationError, match="does not hold our secret"):
        HashTableClient.at("127.0.0.1", server.port, secret_file=other_secret).lookup("k")
    assert time.monotonic() - started < 5  # no retry loop
    assert wait_until(lambda: "failed TLS handshakes" in server.log(), what="the failure logged")


def test_a_client_its_server_has_served_waits_out_records_signed_with_another_secret(
    spawn, tmp_path, catalog
):
    """Anyone who can send the catalog a datagram can withdraw the server's record and
    list one "signed" with a secret nobody holds. A new client says the secret does not
    match, at once; one the server has already taken (so its secret is right) waits for
    the server's own record, as for a server not listed, instead of failing."""
    catalogs = [("127.0.0.1", catalog.port)]
    server = start_server(spawn, tmp_path / "data", project="forged", catalog=catalog.host)
    table = HashTableClient("forged", catalog=catalog.host, **FAST)
    table.insert("k", "v")
    [real] = [r for r in query(catalogs=catalogs) if r.get("project") == "forged"]
    server.process.kill()
    announce({"type": "hashtable", "project": "forged", "port": real["port"],
              "name": real["name"], "lifetime": 1}, catalogs)  # fmt: skip
    announce({"type": "hashtable", "project": "forged", "port": 1, "auth": "tls-secret-v1",
              "signed": "type,project", "signature": "v1:" + "0" * 64}, catalogs)  # fmt: skip
    wait_until(
        lambda: (
            [r.get("port") for r in query(catalogs=catalogs) if r.get("project") == "forged"] == [1]
        ),
        what="the catalog to list only the forged record",
    )
    with pytest.raises(AuthenticationError, match="another secret"):
        HashTableClient("forged", catalog=catalog.host, **FAST).lookup("k")
    found: list = []
    waiting = threading.Thread(target=lambda: found.append(_lookup(table, "k")))
    waiting.start()
    waiting.join(timeout=3)  # it used to raise AuthenticationError within a second
    assert waiting.is_alive(), found
    start_server(spawn, tmp_path / "data", project="forged", catalog=catalog.host)
    waiting.join(timeout=30)
    assert found == ["v"]
    table.close()


def _lookup(table: HashTableClient, key: str) -> object:
    try:
        return table.lookup(key)
    except Exception as error:  # shown by the assertion
        return error


def test_a_secret_file_others_can_read_is_refused(spawn, tmp_path):
    leaky = tmp_path / "leaky"
    leaky.write_text("0123456789abcdef0123456789abcdef\n")
    leaky.chmod(0o644)
    done = run_program(
        python_script(
            "HashTableServer.py",
            "p",
            "--secret-file",
            str(leaky),
            "--data-dir",
            str(tmp_path / "d"),
        ),
        timeout=30,
    )
    assert done.returncode == 2
    assert "can be read by others" in done.stderr and "chmod 600" in done.stderr
    assert "Traceback" not in done.stderr
    with pytest.raises(AuthenticationError, match="can be read by others"):
        HashTableClient.at("127.0.0.1", 1, secret_file=leaky)


def test_a_directory_as_the_secret_file_gets_one_line(tmp_path):
    done = run_program(
        python_script(
            "HashTableServer.py",
            "p",
            "--secret-file",
            str(tmp_path),
            "--data-dir",
            str(tmp_path / "d"),
        ),
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.strip().endswith(f"the secret file {tmp_path} is a directory")
    assert "Traceback" not in done.stderr
    client = run_program(
        python_module("hashtable.cli", "--at", "127.0.0.1:1", "size"),
        env={**os.environ, "DHT_SECRET_FILE": str(tmp_path)},
        timeout=30,
    )
    assert client.returncode == 2
    assert client.stderr.strip().endswith(f"the secret file {tmp_path} is a directory")
    assert "Traceback" not in client.stderr
    with pytest.raises(AuthenticationError, match="is a directory"):
        HashTableClient.at("127.0.0.1", 1, secret_file=tmp_path)


def test_the_secret_is_created_private_when_first_needed(tmp_path):
    path = tmp_path / "config" / "dht" / "secret"
    old = os.umask(0)
    try:
        secret = load_secret(path, create=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_secret(path).fingerprint == secret.fingerprint  # read back, not made anew


# ---------------------------------------------------------------- the handshake


class Recorder:
    """A TCP relay that records what the client sends, and can tamper with the replies."""

    def __init__(self, target: int, tamper_after: int | None = None) -> None:
        self.target, self.tamper_after = target, tamper_after
        self.sent = bytearray()  # client -> server
        self.received = bytearray()  # server -> client
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                self.connections += 1
                upstream = socket.create_connection(("127.0.0.1", self.target))
                for source, sink, log, tamper_after in (
                    (client, upstream, self.sent, None),
                    (upstream, client, self.received, self.tamper_after),
                ):
                    threading.Thread(
                        target=self._pump, args=(source, sink, log, tamper_after), daemon=True
                    ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, log: bytearray, tamper_after: int | None
    ) -> None:
        with contextlib.suppress(OSError), source, sink:
            while data := source.recv(65536):
                log += data
                if tamper_after is not None and len(log) > tamper_after:
                    data = data[:-1] + bytes([data[-1] ^ 1])  # one bit flipped
                sink.sendall(data)

    def close(self) -> None:
        self.listener.close()


def test_a_relay_in_the_middle_sees_no_key_and_no_value(spawn, tmp_path):
    server = start_server(spawn, tmp_path / "data")
    relay = Recorder(server.port)
    try:
        with HashTableClient.at("127.0.0.1", relay.port) as table:
            table.insert("the-key-1234", {"the-value": "secret-5678"})
            assert table.lookup("the-key-1234") == {"the-value": "secret-5678"}
        wire = bytes(relay.sent + relay.received)
        assert len(wire) > 500  # it saw the whole conversation...
        for text in (b"the-key-1234", b"secret-5678", b"insert", b"lookup"):
            assert text not in wire  # ...encrypted
    finally:
        relay.close()


@pytest.mark.parametrize("after", [600, 4000])  # in the handshake; in the replies
def test_a_relay_that_alters_bytes_is_detected_and_nothing_wrong_is_returned(
    spawn, tmp_path, after
):
    server = start_server(spawn, tmp_path / "data")
    with HashTableClient.at("127.0.0.1", server.port) as table:
        table.insert("k", "the true value" * 500)  # a reply long enough to pass 4000 bytes
    relay = Recorder(server.port, tamper_after=after)
    try:
        with (
            HashTableClient.at("127.0.0.1", relay.port, give_up_after=1.5, **FAST) as table,
            pytest.raises((AuthenticationError, ServiceUnavailable), match="altered"),
        ):
            table.lookup("k")  # every attempt is altered: never accepted
    finally:
        relay.close()


def test_a_replayed_handshake_and_request_execute_nothing(spawn, tmp_path):
    server = start_server(spawn, tmp_path / "data")
    relay = Recorder(server.port)
    try:
        with HashTableClient.at("127.0.0.1", relay.port) as table:
            table.insert("once", 1)
            table.remove("once")
        recorded = bytes(relay.sent)
    finally:
        relay.close()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as attacker:
        attacker.sendall(recorded)  # the same handshake and the same encrypted requests
        with contextlib.suppress(OSError):
            while attacker.recv(65536):
                pass
    assert not stored(server.port, "once")  # the replayed insert was not executed
    assert wait_until(lambda: "failed TLS handshakes" in server.log(), what="the replay refused")


def test_a_client_of_one_project_never_talks_to_the_same_owners_other_project(spawn, tmp_path):
    from hashtable.transport import Transport

    other = start_server(spawn, tmp_path / "b", project="project-b")
    transport = Transport("project-a", secret=load_secret(), catalog="127.0.0.1:1")
    transport.address = ("127.0.0.1", other.port)  # as if a forged record pointed here
    with pytest.raises(AuthenticationError, match="another project"):
        transport.connected()


# ---------------------------------------------------------------- discovery


class Impostor:
    """A server on loopback that records every byte sent to it and answers like
    a hash table server (plain text: it has no secret)."""

    def __init__(self, port: int = 0) -> None:
        self.heard = bytearray()
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                sock, _ = self.listener.accept()
                self.connections += 1
                with sock:
                    sock.settimeout(2)
                    with contextlib.suppress(OSError):
                        while data := sock.recv(65536):
                            self.heard += data
                            sock.sendall(b'{"status":"ok","result":"forged"}\n')

    def record(self, project: str, **fields) -> dict:
        return {
            "type": "hashtable", "project": project, "owner": "victim", "port": self.port,
            "starttime": time.time() + 10**6,  # fresher than anything real
            **fields,
        }  # fmt: skip


@pytest.mark.parametrize("which", ["ours", "cctools"])
def test_impostor_records_never_get_a_connection(spawn, tmp_path, which, request):
    catalog = request.getfixturevalue("catalog" if which == "ours" else "cctools_catalog")
    catalogs = [("127.0.0.1", catalog.port)]
    start_server(spawn, tmp_path / "data", project="victim", catalog=catalog.host)
    impostor = Impostor()
    forged_signature = "v1:" + "0" * 64
    for n, fields in enumerate(
        ({}, {"auth": "none"}, {"auth": "tls-secret-v1", "signature": forged_signature})
    ):
        announce(impostor.record("victim", uuid=f"impostor-{n}", **fields), catalogs)
    wait_until(
        lambda: len([r for r in query(catalogs=catalogs) if r.get("project") == "victim"]) >= 4,
        what="the real record and the impostors' in the catalog",
    )
    with HashTableClient("victim", catalog=catalog.host, **FAST) as table:
        table.insert("password", "hunter2")
        assert table.lookup("password") == "hunter2"
    assert impostor.connections == 0 and not impostor.heard


def test_a_replayed_record_and_a_taken_port_get_an_impostor_nothing(spawn, tmp_path, catalog):
    # The signature covers the port: a replay that changes it is ignored. One that
    # keeps it, after the real server died and an impostor took its port, leads
    # the client to the impostor's port, where the handshake stops it.
    catalogs = [("127.0.0.1", catalog.port)]
    server = start_server(spawn, tmp_path / "data", project="gone", catalog=catalog.host)
    wait_until(lambda: query(catalogs=catalogs), what="the server's record")
    [record] = [r for r in query(catalogs=catalogs) if r.get("project") == "gone"]
    server.process.kill()
    squatter = Impostor(record["port"])  # the dead server's port, taken
    elsewhere = Impostor()
    replay = {k: v for k, v in record.items() if k not in ("address", "name", "lastheardfrom")}
    announce({**replay, "port": elsewhere.port, "uuid": "moved"}, catalogs)
    with (
        HashTableClient("gone", catalog=catalog.host, give_up_after=2, **FAST) as table,
        pytest.raises(ServiceUnavailable),
    ):
        table.insert("password", "hunter2")
    assert elsewhere.connections == 0
    assert squatter.connections > 0  # it was tried...
    assert b"hunter2" not in squatter.heard and b"password" not in squatter.heard  # ...in vain


# ---------------------------------------------------------------- browsers, plain mode


def test_an_http_post_is_closed_without_executing_anything(spawn, tmp_path):
    secure = start_server(spawn, tmp_path / "secure")
    plain = start_server(spawn, tmp_path / "plain", "--no-auth")
    body = b'{"method": "insert", "key": "from-a-web-page", "value": 1}\n'
    post = (
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    for server in (secure, plain):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as browser:
            browser.sendall(post)
            assert browser.recv(65536) == b""  # closed, nothing said
    with HashTableClient.at("127.0.0.1", plain.port, auth=False) as table, pytest.raises(KeyError):
        table.lookup("from-a-web-page")
    assert not stored(secure.port, "from-a-web-page")


def test_no_auth_is_for_loopback_only_and_never_a_silent_fallback(spawn, tmp_path):
    done = run_program(
        python_script(
            "HashTableServer.py",
            "p",
            "--no-auth",
            "--host",
            "0.0.0.0",
            "--data-dir",
            str(tmp_path / "d"),
        ),
        timeout=30,
    )
    assert done.returncode == 2 and "only on loopback" in done.stderr
    plain = start_server(spawn, tmp_path / "plain", "--no-auth")
    secure = start_server(spawn, tmp_path / "secure")
    with pytest.raises(AuthenticationError, match=r"does not speak TLS|does not authenticate"):
        HashTableClient.at("127.0.0.1", plain.port, **FAST).size()  # the client wants TLS
    with pytest.raises(AuthenticationError, match="requires authentication"):
        HashTableClient.at("127.0.0.1", secure.port, auth=False, **FAST).size()
    assert Wire(plain.port, plain=True).call({"method": "size"}) == {"status": "ok", "result": 0}


@pytest.mark.skipif(shutil.which("nc") is None, reason="nc is not installed")
def test_by_hand_with_nc_on_a_no_auth_server(spawn, tmp_path):
    server = start_server(spawn, tmp_path / "data", "--no-auth")
    session = b'{"method": "insert", "key": "k", "value": 1}\n{"method": "lookup", "key": "k"}\n'
    done = run_program(["nc", "-N", "127.0.0.1", str(server.port)], input=session, text=False)
    assert done.stdout.splitlines()[-1] == b'{"status":"ok","result":1}'


def test_impostor_claiming_no_auth_gets_nothing(spawn, tmp_path, catalog):
    start_server(spawn, tmp_path / "data", project="p1", catalog=catalog.host)
    impostor = Impostor()
    announce(impostor.record("p1", auth="none"), [("127.0.0.1", catalog.port)])
    with HashTableClient("p1", catalog=catalog.host, **FAST) as table:
        table.insert("k", 1)
    assert impostor.connections == 0


def test_the_interactive_client_over_tls_and_the_secret_tool(spawn, tmp_path, test_secret):
    server = start_server(spawn, tmp_path / "data")
    typed = 'insert zebra {"weight": 100}\nlookup zebra\nbogus\n{"method": "remove", "key": "zebra"}\nlookup zebra\n'
    done = run_program(
        [*python_script("hashtable/cli.py"), "--at", f"127.0.0.1:{server.port}"], input=typed
    )
    assert done.returncode == 0, done.stderr
    replies = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert replies == [
        {"status": "ok", "result": None},
        {"status": "ok", "result": {"weight": 100}},
        {"status": "ok", "result": {"weight": 100}},
        {"status": "failed", "error": "KeyError", "message": "no such key: 'zebra'"},
    ]
    assert "unknown method 'bogus'" in done.stderr
    shown = run_program(
        python_script("netkit/secret_cli.py", "show", str(test_secret)),
        timeout=30,
    )
    assert shown.returncode == 0 and load_secret(test_secret).fingerprint in shown.stdout
    rotated = tmp_path / "rotated"
    load_secret(rotated, create=True)
    before = load_secret(rotated).fingerprint
    assert (
        run_program(python_script("netkit/secret_cli.py", "rotate", str(rotated))).returncode == 0
    )
    assert load_secret(rotated).fingerprint != before
    assert load_secret(rotated.with_name("rotated.old")).fingerprint == before
