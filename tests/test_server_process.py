"""HashTableServer.py as users run it: arguments, signals, logs, crashes and restarts."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
from pathlib import Path

import orjson
import pytest

from harness.processes import ROOT, python_script, run_program, wait_until
from tests.server_support import Wire, start_server

DOCS = ROOT / "docs" / "protocol.md"


def run_server(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_program(python_script("HashTableServer.py", *args), env=env, timeout=30)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["../etc"], "cannot name a project"),
        (["a b"], "cannot name a project"),
        (["p", "--port", "70000"], "is not a port number (0 to 65535)"),
        (["p", "--sync", "sometimes"], "invalid choice: 'sometimes'"),
        (["p", "--compact-after", "0"], "is not a whole number of at least 1"),
        (["p", "--catalog", "localhost:http"], "--catalog: bad address"),
        (["p", "--idle-timeout", "soon"], "is not a number of seconds"),
        # A bound that could be switched off is not one.
        (["p", "--max-request-bytes", "99999999999999999999"], "from 1 to 268435456"),
        (["p", "--max-request-bytes", "268435457"], "is not a whole number from 1 to 268435456"),
        ([], "the following arguments are required: project"),
    ],
)
def test_bad_arguments_are_refused_with_a_message(args, expected):
    result = run_server(*args)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_catalog_host_variable_is_refused(tmp_path: Path):
    result = run_server("p", "--data-dir", str(tmp_path), env={"CATALOG_HOST": "localhost:0"})
    assert result.returncode == 2 and "CATALOG_HOST: bad address" in result.stderr


def test_unrecoverable_data_is_one_clear_message(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "table.ckpt").write_bytes(b"this is not a checkpoint\n")
    result = run_server("p", "--data-dir", str(data), "--catalog", "127.0.0.1:1")
    assert result.returncode == 2
    assert "cannot recover the table" in result.stderr and "table.ckpt" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_it_quietly(spawn, tmp_path: Path, sig):
    server = start_server(spawn, tmp_path / "data")
    with Wire(server.port) as client:
        assert client.call({"method": "insert", "key": "k", "value": 1})["status"] == "ok"
    server.process.signal(sig)
    assert server.process.popen.wait(timeout=10) == 0
    assert f"stopped by {sig.name}" in server.log()
    assert "Traceback" not in server.log()


def test_quiet_logs_nothing_but_still_says_where_it_listens(spawn, tmp_path: Path, catalog):
    # With a catalog that answers: without one the server warns that it cannot
    # check for another server of its project (tests/test_one_server_per_project.py).
    server = start_server(spawn, tmp_path / "data", "--quiet", catalog=catalog.host)
    with Wire(server.port) as client:
        assert client.call({"method": "size"}) == {"status": "ok", "result": 0}
    assert server.log().strip() == f"listening on 127.0.0.1:{server.port}"


def test_the_documented_nc_session_is_what_the_server_says(spawn, tmp_path: Path):
    """docs/protocol.md shows an nc session with a --no-auth server: lines after '> '
    are sent, after '< ' expected."""
    text = DOCS.read_text()
    session = re.search(r"```text\n(?:\$ python .*?--no-auth &\n)(\$ nc .*?)```", text, re.S).group(
        1
    )
    sent = [line[2:] for line in session.splitlines() if line.startswith("> ")]
    expected = [line[2:] for line in session.splitlines() if line.startswith("< ")]
    assert len(sent) == len(expected) >= 8
    server = start_server(spawn, tmp_path / "data", "--no-auth")
    with Wire(server.port, plain=True) as client:
        client.send(*[line.encode() + b"\n" for line in sent])
        for want in expected:
            got = client.reply()
            assert got == orjson.loads(want)


def test_a_client_that_stops_sending_still_gets_every_reply(spawn, tmp_path: Path):
    """Like `nc -N HOST PORT < requests`: all requests, then end of input, then read."""
    server = start_server(spawn, tmp_path / "data")
    value = "v" * 20_000
    with Wire(server.port) as wire:
        assert wire.call({"method": "insert", "key": "big", "value": value})["status"] == "ok"
        wire.send(*[{"method": "lookup", "key": "big"}] * 3000)  # 60 MB of replies
        wire.sock.shutdown(socket.SHUT_WR)
        for _ in range(3000):
            assert wire.reply() == {"status": "ok", "result": value}
        assert wire.closed_by_server()


def test_the_log_shows_clients_coming_going_and_interleaving(spawn, tmp_path: Path):
    server = start_server(spawn, tmp_path / "data", "--summary-interval", "0.3")
    a, b = Wire(server.port), Wire(server.port)
    names = [f"127.0.0.1:{w.sock.getsockname()[1]}" for w in (a, b)]
    for n in range(20):
        a.call({"method": "insert", "key": f"a{n}", "value": n})
        b.call({"method": "lookup", "key": f"a{n}"})
    a.close()
    b.close()

    def summary() -> str | None:
        for line in server.log().splitlines():
            if "served 40 requests" in line:
                return line
        return None

    line = wait_until(summary, what="a summary of both clients")
    assert f"{names[0]}=20" in line and f"{names[1]}=20" in line
    log = server.log()
    for name in names:
        assert f"client {name} connected" in log
        assert f"client {name} left after 20 requests" in log


def test_acknowledged_writes_survive_sigkill_during_writes_and_compactions(spawn, tmp_path):
    data = tmp_path / "data"
    server = start_server(spawn, data, "--compact-after", "50", "--summary-interval", "0.2")
    acknowledged: dict[int, dict[str, int]] = {n: {} for n in range(4)}
    killed = threading.Event()

    def writer(n: int) -> None:
        try:
            with Wire(server.port) as wire:
                for batch in range(10_000):
                    keys = [f"w{n}-{batch}-{i}" for i in range(20)]
                    wire.send(*[{"method": "insert", "key": k, "value": batch} for k in keys])
                    for key in keys:
                        if wire.reply()["status"] == "ok":
                            acknowledged[n][key] = batch
        except OSError:
            assert killed.is_set(), "the connection broke before the server was killed"

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    wait_until(
        lambda: sum(map(len, acknowledged.values())) > 3000 and "compactions" in server.log(),
        timeout=60,
        what="writes and compactions",
    )
    killed.set()
    server.process.kill()
    for thread in threads:
        thread.join(timeout=30)

    restarted = start_server(spawn, data)
    with Wire(restarted.port) as wire:
        everything = {k: v for writes in acknowledged.values() for k, v in writes.items()}
        wire.send(*[{"method": "lookup", "key": key} for key in everything])
        for key, value in everything.items():
            assert wire.reply() == {"status": "ok", "result": value}, key
        assert wire.call({"method": "size"})["result"] >= len(everything)


def test_a_retried_mutation_gets_its_first_answer_even_after_a_crash(spawn, tmp_path):
    data = tmp_path / "data"
    server = start_server(spawn, data)
    remove = {"method": "remove", "key": "k", "client": "c1", "seq": 2, "ack": 1}
    with Wire(server.port) as wire:
        assert wire.call({"method": "insert", "key": "k", "value": "v", "client": "c1", "seq": 1})
        assert wire.call(remove) == {"status": "ok", "result": "v"}
        # Its reply "was lost": the same request again, answered the same, not applied again.
        assert wire.call(remove) == {"status": "ok", "result": "v"}
    server.process.kill()
    restarted = start_server(spawn, data)
    with Wire(restarted.port) as wire:
        assert wire.call(remove) == {"status": "ok", "result": "v"}
        assert wire.call({"method": "lookup", "key": "k"})["error"] == "KeyError"
        # A failed removal is remembered too: its retry fails the same way even
        # after the key has come back.
        missing = {"method": "remove", "key": "k", "client": "c1", "seq": 3, "ack": 2}
        assert wire.call(missing)["error"] == "KeyError"
        wire.call({"method": "insert", "key": "k", "value": "again"})
        assert wire.call(missing)["error"] == "KeyError"
        assert wire.call({"method": "lookup", "key": "k"})["result"] == "again"
