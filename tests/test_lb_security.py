"""lb under attack, with real processes: impostor TSs in our catalog and in the real
cctools catalog_server (one holding another secret, one not speaking TLS at all,
both answering forged addresses to anything), a TS of a project faced with plain
text, other projects and other secrets, and the user mistakes around secrets."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import ssl
import threading
import time
from pathlib import Path

import orjson
import pytest

import lb.tserver
from catalog.client import query
from harness.processes import free_port, python_module, run_program, wait_until
from lb.cli import SAMPLES
from lb.discovery import TS_TYPE
from lb.protocol import AUTHENTICATION_REQUIRED
from lb.resolver import resolve
from lb.table import load_table
from netkit.security import load_secret, service_name
from tests.lb_support import CATALOG_KINDS, RIGHT, catalog_of_kind, start_ls, start_ts, write_table

PROJECT = "dns-secure"
IMPOSTOR_HOST = "127.0.0.2"  # loopback too, but another address than the real TSs'
FORGED = "6.6.6.6"
NAMES = [*RIGHT, b"nothinghere.com"]


@pytest.fixture(params=CATALOG_KINDS)
def any_catalog(request):
    return catalog_of_kind(request)


class Forger:
    """An impostor that speaks no TLS: it listens on ``ports`` of ``host`` and sends
    every peer forged answers (every sample name, query ids 1 to 300, and the bare
    format) at once, then reads whatever comes until the peer goes."""

    FORGERIES = b"".join(
        b"%d %s %s A IN\n" % (i, name, FORGED.encode()) for i in range(1, 301) for name in RIGHT
    ) + b"".join(b"%s %s A IN\n" % (name, FORGED.encode()) for name in RIGHT)

    def __init__(self, host: str, ports: list[int]) -> None:
        self.listeners = [socket.create_server((host, port)) for port in ports]
        self.first_bytes: list[bytes] = []
        self._threads = [
            threading.Thread(target=self._accept, args=(listener,), daemon=True)
            for listener in self.listeners
        ]

    def __enter__(self) -> Forger:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for listener in self.listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        with sock, contextlib.suppress(OSError):
            sock.settimeout(30)
            sock.sendall(self.FORGERIES)
            first = sock.recv(65536)
            self.first_bytes.append(first)
            while sock.recv(65536):
                pass


class Replayer:
    """Announces ``records`` to a catalog from ``host`` every 0.3 s, as fresh as an
    impostor likes, until stopped."""

    def __init__(self, host: str, catalog_port: int, records: list[dict]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.target = ("127.0.0.1", catalog_port)
        self.records = records
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Replayer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for record in self.records:
                self.sock.sendto(orjson.dumps(record), self.target)
            self._stop.wait(0.3)


def listed_records(catalog_port: int, ports: set[int]) -> list[dict] | None:
    """The catalog's records of the project's TSs on ``ports``, once all are listed."""
    records = [
        record
        for record in query(catalogs=[("127.0.0.1", catalog_port)])
        if record.get("type") == TS_TYPE
        and record.get("project") == PROJECT
        and record.get("port") in ports
    ]
    return records if {record["port"] for record in records} == ports else None


def copied(record: dict, host: str) -> dict:
    """A real TS's signed record as an impostor re-announces it, pointing at ``host``."""
    fields = {k: v for k, v in record.items() if k not in ("lastheardfrom", "name", "address")}
    return {**fields, "address": host}


def check_no_forgery(answers: list[bytes]) -> bool:
    """Every answer is the real one or a time-out, never a forged one; True when
    every name got its real answer."""
    for name, answer in zip(NAMES, answers, strict=True):
        assert answer in (RIGHT.get(name), name + b" - TIMED OUT"), answer
    return answers == [RIGHT.get(name, name + b" - TIMED OUT") for name in NAMES]


def test_impostor_tss_in_the_catalog_never_answer_through_the_ls(
    spawn, tmp_path: Path, any_catalog
) -> None:
    """Two impostors, each behind a copy of a real TS's signed record (re-announced
    from their own address, every 0.3 s) and a record of their own: one a real TS
    holding another secret, one speaking no TLS; both answer forged addresses. The
    LS tries both, in TLS, and skips them; it answers from the real TSs only."""
    try:
        socket.create_server((IMPOSTOR_HOST, 0)).close()
    except OSError:
        pytest.skip(f"{IMPOSTOR_HOST} is not a loopback address here")
    env = {"CATALOG_HOST": any_catalog.host}
    listed = ("--project", PROJECT, "--announce-interval", "0.5")
    _, port1 = start_ts(spawn, SAMPLES / "PROJ2-DNSTS1.txt", *listed, env=env)
    _, port2 = start_ts(spawn, SAMPLES / "PROJ2-DNSTS2.txt", *listed, env=env)
    real = wait_until(
        lambda: listed_records(any_catalog.port, {port1, port2}),
        timeout=20,
        what="the real TSs in the catalog",
    )
    assert all(record.get("signature") for record in real)
    forged_table = write_table(tmp_path / "forged.txt", {n.decode(): FORGED for n in RIGHT})
    other_secret = tmp_path / "other-secret"
    load_secret(other_secret, create=True)
    # Impostor 1: a TS of the project with another secret, on TS1's port at its own
    # address (where the copy of TS1's record points), announcing itself as well.
    impostor, _ = start_ts(
        spawn, forged_table, *listed, "--secret-file", str(other_secret),
        port=port1, env=env, host=IMPOSTOR_HOST,
    )  # fmt: skip
    # Impostor 2: no TLS; behind the copy of TS2's record, and its own unsigned one.
    own_port = free_port()
    unsigned = {"type": TS_TYPE, "project": PROJECT, "port": own_port, "owner": "mallory"}
    records = [copied(record, IMPOSTOR_HOST) for record in real] + [unsigned]
    with (
        Forger(IMPOSTOR_HOST, [port2, own_port]) as forger,
        Replayer(IMPOSTOR_HOST, any_catalog.port, records),
    ):
        ls, port = start_ls(spawn, [], "--project", PROJECT, "--refresh", "0.3", "-v", env=env)

        def failures(impostor_port: int) -> int:
            return ls.output().count(
                f"TS {IMPOSTOR_HOST}:{impostor_port} unavailable (TLS handshake failed"
            )

        # Ask all along: until every name has its real answer, and each impostor has
        # been tried and skipped twice (first attempt and a retry).
        wait_until(
            lambda: (
                check_no_forgery(resolve("127.0.0.1", port, NAMES))
                and failures(port1) >= 2
                and failures(port2) >= 2
            ),
            timeout=40,
            what="the LS to answer from the real TSs, having tried the impostors",
        )
        assert check_no_forgery(resolve("127.0.0.1", port, NAMES))
    output = ls.output()
    assert FORGED not in output and f"answered by TS {IMPOSTOR_HOST}" not in output
    # The no-TLS impostor got a TLS client hello, and nothing it could answer.
    assert forger.first_bytes and all(first[:1] == b"\x16" for first in forger.first_bytes)
    assert (
        f"{IMPOSTOR_HOST}:{port2} unavailable (TLS handshake failed: the peer does not speak TLS"
        in output
    )
    assert "failed TLS handshakes" in impostor.output()  # it refused us, or we it
    # The impostors' own records were never even tried.
    assert re.search(rf"ignoring \d TS records of project '{PROJECT}' that our secret", output)
    assert f"{IMPOSTOR_HOST}:{own_port} is listed" not in output
    # Reported once, not at every attempt: fewer warnings than failures.
    warnings = re.findall(r"WARNING TSs skipped: they did not prove our secret", output)
    assert 1 <= len(warnings) < failures(port1) + failures(port2)
    assert ls.alive()


def read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def ask_over_tls(port: int, context: ssl.SSLContext, project: str) -> bytes:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname=service_name(TS_TYPE, project)) as sock:
        sock.sendall(b"7 rutgers.edu\n")
        return sock.recv(4096)


def ask_plain(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"rutgers.edu\n")
        sock.shutdown(socket.SHUT_WR)
        return read_to_end(sock)


def test_a_ts_with_a_project_serves_only_the_project_s_lss(spawn, tmp_path: Path) -> None:
    env = {"CATALOG_HOST": f"127.0.0.1:{free_port()}"}  # announcements go nowhere
    ts, ts_port = start_ts(spawn, SAMPLES / "PROJ2-DNSTS1.txt", "--project", PROJECT, env=env)
    ours = load_secret().client_context()
    assert ask_over_tls(ts_port, ours, PROJECT) == b"7 rutgers.edu 172.34.4.6 A IN\n"
    assert ask_plain(ts_port) == AUTHENTICATION_REQUIRED  # nc, the assignment's LS
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        ask_over_tls(ts_port, ours, "another-project")
    theirs = load_secret(tmp_path / "other-secret", create=True).client_context()
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        ask_over_tls(ts_port, theirs, PROJECT)
    wait_until(
        lambda: "connections turned away" in ts.output() and "failed TLS handshakes" in ts.output()
    )
    # A pair on the LS's command line is plain text: such a TS cannot be one.
    ls, ls_port = start_ls(spawn, [ts_port])
    assert resolve("127.0.0.1", ls_port, [b"rutgers.edu"]) == [b"rutgers.edu - TIMED OUT"]
    wait_until(lambda: 'not an answer: b"- ERROR authentication required' in ls.output())

    both, both_port = start_ts(
        spawn, SAMPLES / "PROJ2-DNSTS1.txt", "--project", PROJECT, "--also-plain", env=env
    )
    assert ask_plain(both_port) == b"rutgers.edu 172.34.4.6 A IN\n"
    assert ask_over_tls(both_port, ours, PROJECT) == b"7 rutgers.edu 172.34.4.6 A IN\n"
    assert "anyone can read the table" in both.output()


def test_an_ls_with_a_project_links_pairs_in_plain_text_and_catalog_tss_in_tls(
    spawn, catalog
) -> None:
    env = {"CATALOG_HOST": catalog.host}
    plain, plain_port = start_ts(spawn, SAMPLES / "PROJ2-DNSTS1.txt")  # the assignment's TS
    start_ts(
        spawn, SAMPLES / "PROJ2-DNSTS2.txt", "--project", PROJECT, "--announce-interval", "0.5",
        env=env,
    )  # fmt: skip
    ls, port = start_ls(spawn, [plain_port], "--project", PROJECT, "--refresh", "0.3", env=env)
    names = [b"rutgers.edu", b"google.com"]
    wait_until(
        lambda: resolve("127.0.0.1", port, names) == [RIGHT[name] for name in names],
        timeout=20,
        what="the LS to use both TSs",
    )
    output = ls.output()
    assert f"connected to TS 127.0.0.1:{plain_port}\n" in output  # plain, as given
    assert re.search(r"connected to TS 127\.0\.0\.1:\d+ \(TLS: it holds our secret\)", output)
    assert "turned away" not in plain.output() and "TLS" not in plain.output()


def test_an_ls_and_a_ts_holding_different_secrets_say_so(spawn, tmp_path: Path, catalog) -> None:
    env = {"CATALOG_HOST": catalog.host}
    other = tmp_path / "other-secret"
    load_secret(other, create=True)
    ts, ts_port = start_ts(
        spawn, SAMPLES / "PROJ2-DNSTS1.txt", "--project", PROJECT,
        "--announce-interval", "0.5", "--secret-file", str(other), env=env,
    )  # fmt: skip
    ls, port = start_ls(spawn, [], "--project", PROJECT, "--refresh", "0.3", env=env)
    wait_until(
        lambda: (
            f"did not sign (impostors, or TSs with another secret file): 127.0.0.1:{ts_port}"
            in ls.output()
        ),
        timeout=20,
        what="the LS to name the TS whose record it cannot verify",
    )
    assert resolve("127.0.0.1", port, [b"rutgers.edu"]) == [b"rutgers.edu - TIMED OUT"]
    assert " connected" not in ts.output()  # never even tried


def test_secret_mistakes_get_a_clear_message(tmp_path: Path) -> None:
    readable = tmp_path / "readable"
    load_secret(readable, create=True)
    readable.chmod(0o644)
    table = str(SAMPLES / "PROJ2-DNSTS1.txt")
    env = {**os.environ, "CATALOG_HOST": f"127.0.0.1:{free_port()}"}
    cases = [
        (["lb.ts", "0", table, "--project", "p", "--secret-file", str(readable)], 2),
        (["lb.ls", "0", "--project", "p", "--secret-file", str(readable)], 2),
        (["lb.ts", "0", table, "--secret-file", str(readable)], 2),
        (["lb.ts", "0", table, "--also-plain"], 2),
        (["lb.ls", "0", "localhost", "1", "--secret-file", str(readable)], 2),
        (["lb.ls", "0", "--project", "p", "--secret-file", str(tmp_path / "typo")], 2),
    ]
    messages = ["can be read by others", "can be read by others", "go with --project"]
    messages += ["go with --project", "goes with --project", "no secret file"]
    for (args, status), message in zip(cases, messages, strict=True):
        done = run_program(python_module(*args), env=env, timeout=30)
        assert (done.returncode, message in done.stderr) == (status, True), (args, done.stderr)
        assert "Traceback" not in done.stderr
    # A directory given as the secret file, by option or by $DHT_SECRET_FILE.
    for args, extra in [
        (["lb.ls", "0", "--project", "p", "--secret-file", str(tmp_path)], {}),
        (["lb.ts", "0", table, "--project", "p", "--secret-file", str(tmp_path)], {}),
        (["lb.ls", "0", "--project", "p"], {"DHT_SECRET_FILE": str(tmp_path)}),
        (["lb.ts", "0", table, "--project", "p"], {"DHT_SECRET_FILE": str(tmp_path)}),
    ]:
        done = run_program(python_module(*args), env={**env, **extra}, timeout=30)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.strip().endswith(f"the secret file {tmp_path} is a directory")
        assert "Traceback" not in done.stderr


def test_a_half_open_handshake_is_not_held_forever(monkeypatch, caplog) -> None:
    """A TS of a project closes a peer that never completes its handshake (here
    after 0.3 s instead of 10), and goes on serving the others."""
    monkeypatch.setattr(lb.tserver, "HANDSHAKE_TIMEOUT", 0.3)
    context = load_secret().server_context()
    listener = socket.create_server(("127.0.0.1", 0))
    server = lb.tserver.TopLevelServer(
        listener, load_table(SAMPLES / "PROJ2-DNSTS1.txt"), tls=context
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
            started = time.monotonic()
            assert silent.recv(1) == b""  # closed by the TS
            assert 0.2 < time.monotonic() - started < 5
        assert ask_over_tls(port, load_secret().client_context(), PROJECT).endswith(b"A IN\n")
    finally:
        server.stop()
        thread.join(timeout=10)
        server.close()
    assert "no handshake in 0.3 s" in caplog.text


def test_a_plain_ts_closes_a_peer_that_leaves_a_line_unfinished(monkeypatch, caplog) -> None:
    """Here after 0.3 s instead of 10; a peer idle between whole lines (an LS with
    no queries) stays."""
    monkeypatch.setattr(lb.tserver, "PARTIAL_LINE_TIMEOUT", 0.3)
    caplog.set_level(logging.INFO, logger="lb.ts")  # closings are logged at INFO
    listener = socket.create_server(("127.0.0.1", 0))
    server = lb.tserver.TopLevelServer(listener, load_table(SAMPLES / "PROJ2-DNSTS1.txt"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as partial,
            socket.create_connection(("127.0.0.1", port), timeout=10) as idle,
        ):
            idle.sendall(b"1 rutgers.edu\n")
            assert idle.recv(100) == b"1 rutgers.edu 172.34.4.6 A IN\n"
            started = time.monotonic()
            partial.sendall(b"2 amazon.com\n3 rutg")
            assert partial.recv(100) == b"2 amazon.com 94.5.6.7 A IN\n"
            assert partial.recv(100) == b""  # closed by the TS
            assert 0.2 < time.monotonic() - started < 5
            idle.sendall(b"4 amazon.com\n")  # still served
            assert idle.recv(100) == b"4 amazon.com 94.5.6.7 A IN\n"
    finally:
        server.stop()
        thread.join(timeout=10)
        server.close()
    assert "a line left unfinished for 0.3 s" in caplog.text
