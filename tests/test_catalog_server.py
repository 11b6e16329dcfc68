"""The catalog server as users meet it: a real process, real sockets, real files."""

from __future__ import annotations

import base64
import os
import signal
import socket
import stat
import threading
import time
import zlib

import orjson
import pytest
import requests

from catalog.client import CatalogUnavailable, query
from harness.processes import free_port, python_module, run_program, tcp_open, wait_until
from netkit.interfaces import host_name, network_address
from tests.test_catalog_helpers import (
    OurCatalog,
    fill,
    get,
    ports,
    records,
    send_tcp,
    send_udp,
    wait_for_records,
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_updates_over_udp_and_tcp_are_listed_and_stamped_by_the_catalog(catalog):
    lie = {"address": "6.6.6.6", "name": "liar", "lastheardfrom": 1}
    send_udp(catalog.port, {"type": "hashtable", "port": 1001, "owner": "u", **lie})
    pad = os.urandom(50_000).hex()  # compresses as real records do: 2 times, not 1000
    send_tcp(catalog.port + 1, {"type": "hashtable", "port": 1002, "pad": pad}, True)
    send_tcp(catalog.port + 1, {"type": "hashtable", "port": 1003, **lie})
    found = wait_for_records(catalog, lambda rs: ports(rs) >= {1001, 1002, 1003})
    for record in found:
        assert record["address"] == "127.0.0.1"
        assert record["name"] == "localhost"  # loopback senders, without any DNS lookup
        assert abs(record["lastheardfrom"] - time.time()) < 60
    assert [r["pad"] for r in found if r["port"] == 1002] == [pad]


def test_a_new_update_replaces_the_record_and_uuids_keep_records_apart(catalog):
    send_udp(catalog.port, {"type": "t", "port": 5, "version": 1, "old": True})
    wait_for_records(catalog, lambda rs: ports(rs, version=1) == {5})
    send_udp(catalog.port, {"type": "t", "port": 5, "version": 2})
    found = wait_for_records(catalog, lambda rs: ports(rs, version=2) == {5})
    assert len(found) == 1 and "old" not in found[0]
    send_udp(catalog.port, {"type": "t", "port": 5, "uuid": "A"})
    send_udp(catalog.port, {"type": "t", "port": 5, "uuid": "B"})
    found = wait_for_records(catalog, lambda rs: len(rs) == 3)
    detail = get(catalog, "/detail/127.0.0.1:5:localhost:A")
    assert detail.status_code == 200 and "127.0.0.1:5:localhost:A" in detail.text


def test_query_formats_filters_and_pages(catalog):
    send_udp(catalog.port, {"type": "hashtable", "port": 2001, "owner": "ann", "project": "p"})
    send_udp(catalog.port, {"type": "chirp", "port": 2002, "owner": "<script>x</script>"})
    wait_for_records(catalog, lambda rs: len(rs) == 2)

    text = get(catalog, "/query.text")
    assert text.status_code == 200 and text.text.count("\n\n") == 2
    assert "type hashtable\n" in text.text and "port 2002\n" in text.text

    filtered = get(catalog, "/query/" + b64('type=="hashtable" && owner=="ann"'))
    assert [r["port"] for r in filtered.json()] == [2001]
    bad = get(catalog, "/query/" + b64("type = 1"))
    assert bad.status_code == 400 and "invalid expression" in bad.text

    page = get(catalog, "/")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "<script>x" not in page.text and "&lt;script&gt;x" in page.text
    assert "href='/detail/127.0.0.1:2001:localhost'" in page.text
    assert get(catalog, "/query.html?sort=owner").status_code == 200
    detail = get(catalog, "/detail/127.0.0.1:2001:localhost")
    assert detail.status_code == 200 and "ann" in detail.text

    missing = get(catalog, "/no/%3Cscript%3E")
    assert missing.status_code == 404 and "<script>" not in missing.text
    head = requests.head(catalog.url + "/query.json", timeout=5)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["Content-Length"]) == len(get(catalog, "/query.json").content)
    assert requests.post(catalog.url + "/", timeout=5).status_code == 405


def test_the_client_reports_a_refused_expression_in_one_line(catalog):
    with pytest.raises(CatalogUnavailable) as caught:
        query("port = 1", [("127.0.0.1", catalog.port)])
    message = str(caught.value)
    assert "HTTP 400 Bad Request: invalid expression: use ==" in message
    assert "\n" not in message


def test_hostile_updates_are_refused_and_every_reply_stays_valid(catalog):
    hostile = [
        b'{1:"x"}',  # what a JX-ish sender produces: not JSON
        b'{"type":"dup","port":3001,"port":3002}',  # duplicate keys: the last one counts
        b'{"type":"bad","port":3003,"name":"\xff\xfe"}',  # invalid UTF-8
        b'{"type":"bad","port":3004,"s":"\\udc00"}',  # lone surrogate
        b'{"type":"bad","port":3005,"name":"' + b"n" * 60_000 + b'"}',  # a huge (sent) name
        b"\x1a" + zlib.compress(b" " * 50_000_000),  # a zlib bomb
        b"\x1a" + b"\x78\x9c garbage",
        b"[" * 5000,
        bytes(range(256)) * 100,
        b"",
    ]
    for data in hostile:
        send_udp(catalog.port, data)
        send_tcp(catalog.port + 1, data)
    send_tcp(catalog.port + 1, b"{" + b'"k":"' + b"v" * 400_000 + b'"}')  # over the size bound
    send_udp(catalog.port, {"type": "marker", "port": 3999})
    found = wait_for_records(catalog, lambda rs: 3999 in ports(rs))
    assert ports(found, type="dup") == {3002}
    assert [r["name"] for r in found if r["port"] == 3005] == ["localhost"]
    assert not ports(found, type="bad") - {3005}
    for path in ("/", "/query.text", "/query/" + b64("true")):
        assert get(catalog, path).status_code == 200
    assert catalog.process.alive()


def test_idle_and_half_finished_peers_never_delay_anyone_else(catalog):
    idle = []
    for port, opening in (
        (catalog.port, b""),
        (catalog.port, b"GET /query.json HTTP/1.1\r\nHost: x\r\n"),  # never finished
        (catalog.port + 1, b""),
        (catalog.port + 1, b'{"type": "half", "po'),  # an update never finished
    ):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(opening)
        idle.append(sock)
    slow = socket.create_connection(("127.0.0.1", catalog.port), timeout=5)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        fill(catalog, 3000, pad="p" * 200)  # a reply of about 1 MB...
        slow.sendall(b"GET /query.json HTTP/1.1\r\n\r\n")  # ...that this client never reads
        send_udp(catalog.port, {"type": "fresh", "port": 4001})
        send_tcp(catalog.port + 1, {"type": "fresh", "port": 4002})
        # requests' own timeout is 5 s: each answer comes back while the others wait.
        found = wait_for_records(catalog, lambda rs: ports(rs, type="fresh") == {4001, 4002})
        assert len(found) == 3002
        assert get(catalog, "/").status_code == 200
    finally:
        for sock in [*idle, slow]:
            sock.close()


def test_peers_that_take_too_long_are_timed_out(spawn, tmp_path):
    catalog = OurCatalog(spawn, tmp_path / "state", "--request-timeout", "0.5")
    partial = socket.create_connection(("127.0.0.1", catalog.port), timeout=5)
    partial.sendall(b"GET / HTTP/1.1\r\n")
    idle_update = socket.create_connection(("127.0.0.1", catalog.port + 1), timeout=5)
    try:
        reply = partial.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert idle_update.recv(1) == b""  # closed by the catalog
    finally:
        partial.close()
        idle_update.close()


def test_a_reply_arrives_whole_even_when_the_client_sent_more_than_a_request(catalog):
    fill(catalog, 2000, pad="q" * 100)
    with socket.create_connection(("127.0.0.1", catalog.port), timeout=5) as sock:
        sock.sendall(b"GET /query.json HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n" + b"x" * 10_000)
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Connection: close" in head
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert len(body) == length and len(orjson.loads(body)) == 2000


def test_twenty_thousand_records(catalog):
    fill(catalog, 20_000)
    found = records(catalog)
    assert len(found) == 20_000
    assert len(get(catalog, "/query/" + b64("port > 19990")).json()) == 10
    assert get(catalog, "/query.text").text.count("\n\n") == 20_000
    # The table is paged: the last page of the default order, straight from its index,
    # and the deepest page a re-sorted table serves.
    page = get(catalog, "/?page=200")
    assert page.status_code == 200 and page.text.count("<tr>") == 101
    assert "page 200 of 200" in page.text and "<td>20000</td>" in page.text
    page = get(catalog, "/?sort=port&page=100")
    assert page.status_code == 200 and "<td>9901</td>" in page.text
    assert get(catalog, "/?sort=port&page=101").status_code == 400


def test_a_flood_of_datagrams_does_not_stop_queries(catalog):
    stop = threading.Event()

    def flood():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            n = 0
            while not stop.is_set():
                n += 1
                sock.sendto(
                    orjson.dumps({"type": "flood", "port": n % 500}), ("127.0.0.1", catalog.port)
                )

    thread = threading.Thread(target=flood)
    thread.start()
    try:
        answered = 0
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            assert get(catalog, "/query.json").status_code == 200  # within requests' 5 s
            answered += 1
        assert answered >= 1
    finally:
        stop.set()
        thread.join()
    assert ports(wait_for_records(catalog, lambda rs: len(rs) == 500), type="flood")


def test_records_expire_and_a_record_may_only_shorten_its_lifetime(spawn, tmp_path):
    catalog = OurCatalog(spawn, tmp_path / "state", "--lifetime", "2")
    send_udp(catalog.port, {"type": "short", "port": 1, "lifetime": 1})
    send_udp(catalog.port, {"type": "long", "port": 2, "lifetime": 3600})
    send_udp(catalog.port, {"type": "marker", "port": 3})
    wait_for_records(catalog, lambda rs: ports(rs) == {1, 2, 3})
    # Never served once expired: all go within a few seconds, the longer-lived
    # one no later than the catalog's own lifetime allows.
    wait_for_records(catalog, lambda rs: not rs, what="records to expire")


def test_records_survive_a_restart_and_a_crash(spawn, tmp_path):
    state = tmp_path / "state"
    first = OurCatalog(spawn, state)
    send_udp(first.port, {"type": "kept", "port": 1})
    before = wait_for_records(first, lambda rs: ports(rs) == {1})
    assert first.process.stop() == 0
    assert "saved 1 records" in first.process.log_path.read_text()

    second = OurCatalog(spawn, state, port=first.port)
    assert records(second) == before
    send_udp(second.port, {"type": "kept", "port": 2})
    wait_for_records(second, lambda rs: ports(rs) == {1, 2})
    # The catalog also saves as it goes (every few seconds), and journals what
    # arrives between saves: a SIGKILL loses nothing (tests/test_catalog_journal.py).
    wait_until(lambda: b'"port":2' in (state / "records.json").read_bytes(), what="a save")
    second.process.kill()

    third = OurCatalog(spawn, state, port=first.port)
    assert ports(records(third)) == {1, 2}


def test_a_corrupt_state_file_means_a_clear_message_and_an_empty_start(spawn, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "records.json").write_bytes(b'[{"type": "half-writ')
    catalog = OurCatalog(spawn, state)
    assert records(catalog) == []
    send_udp(catalog.port, {"type": "new", "port": 1})
    wait_for_records(catalog, lambda rs: ports(rs) == {1})
    assert "unreadable" in catalog.process.output()
    assert "Traceback" not in catalog.process.output()
    assert list(state.glob("records.json.corrupt-*"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--port", "0"], "not a port"),
        (["--port", "65535"], "not a port"),
        (["--lifetime", "-5"], "greater than 0"),
        (["--max-records", "many"], "not a whole number"),
        (["--host", "no.such.host.invalid"], "cannot listen"),
    ],
)
def test_command_line_mistakes_get_one_clear_message(spawn, tmp_path, options, message):
    process = spawn(python_module("catalog", "--state-dir", str(tmp_path), *options))
    wait_until(lambda: not process.alive(), what="catalog to refuse")
    assert process.popen.returncode in (1, 2)
    assert message in process.output() and "Traceback" not in process.output()


def test_a_busy_port_or_state_directory_is_refused_clearly(catalog, spawn, tmp_path):
    busy = spawn(
        python_module(
            "catalog", "--port", str(catalog.port), "--state-dir", str(tmp_path / "other")
        )
    )
    shared = spawn(
        python_module(
            "catalog", "--port", str(free_port()), "--state-dir", str(tmp_path / "catalog-state")
        )
    )
    for process, message in ((busy, "cannot listen"), (shared, "in use by another catalog")):
        wait_until(lambda p=process: not p.alive(), what="catalog to refuse")
        assert process.popen.returncode == 1
        assert message in process.output() and "Traceback" not in process.output()


def test_sigterm_and_ctrl_c_stop_the_catalog_cleanly(spawn, tmp_path):
    for sig in (signal.SIGTERM, signal.SIGINT):
        catalog = OurCatalog(spawn, tmp_path / sig.name)
        catalog.process.signal(sig)
        wait_until(lambda c=catalog: not c.process.alive(), what="catalog to stop")
        assert catalog.process.popen.returncode == 0
        assert "stopped; saved 0 records" in catalog.process.output()


def test_the_state_directory_is_private_whatever_the_umask(spawn, tmp_path):
    """0700 and 0600 under umask 000 for a new directory (its new parents too). An
    existing one keeps its mode and the files that are not the catalog's: one an
    earlier version left open to read gets its state file made 0600, with a warning."""
    fresh = tmp_path / "new" / "deeper" / "state"
    readable = tmp_path / "readable"
    readable.mkdir()
    (readable / "records.json").write_bytes(b"[]")
    (readable / "README").write_text("the catalog's state\n")
    readable.chmod(0o755)
    (readable / "records.json").chmod(0o666)
    for state in (fresh, readable):
        port = free_port()
        args = ["--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state)]
        process = spawn(
            ["sh", "-c", 'umask 000 && exec "$@"', "sh", *python_module("catalog", *args)]
        )
        wait_until(lambda p=port: tcp_open("127.0.0.1", p), what="catalog to listen")
        send_udp(port, {"type": "private", "port": 1})
        saved = state / "records.json"
        wait_until(lambda f=saved: f.exists() and b'"private"' in f.read_bytes(), what="a save")
        said = process.output()
        assert process.stop() == 0
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in state.iterdir()}
        if state == readable:
            assert stat.S_IMODE(state.stat().st_mode) == 0o755 and modes.pop("README") == 0o644
            assert "can be read by other users (mode 0755)" in said
        else:
            assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert set(modes) >= {"records.json", "lock"} and set(modes.values()) == {0o600}, modes
    for parent in (tmp_path / "new", tmp_path / "new" / "deeper"):
        assert stat.S_IMODE(parent.stat().st_mode) == 0o700


def test_an_unfit_existing_state_directory_is_refused_and_left_as_it_was(tmp_path):
    """Others can write in it (they could plant records), or it holds other files and
    none of a catalog's (--state-dir ~ by mistake): the catalog used to chmod it 0700
    and every file in it 0600. Now it refuses, and changes nothing."""
    open_to_all = tmp_path / "open-to-all"
    open_to_all.mkdir()
    open_to_all.chmod(0o1777)
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "tool.sh").write_text("#!/bin/sh\n")
    (tools / "tool.sh").chmod(0o755)
    tools.chmod(0o755)
    for state, message in (
        (open_to_all, "other users can write in it (mode 1777)"),
        (tools, "it already holds other files (1, e.g. 'tool.sh') and none of a catalog's"),
    ):
        before = [(p.name, p.stat().st_mode) for p in (state, *state.iterdir())]
        args = ["--host", "127.0.0.1", "--port", str(free_port()), "--state-dir", str(state)]
        done = run_program(python_module("catalog", *args), timeout=30)
        assert done.returncode == 1, done.stderr
        assert f"cannot use state directory {state}: {message}" in done.stderr
        assert "Traceback" not in done.stderr
        assert [(p.name, p.stat().st_mode) for p in (state, *state.iterdir())] == before


def raw_get(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    return data


def test_methods_in_any_case_and_numbers_of_any_length(catalog):
    send_udp(catalog.port, {"type": "case", "port": 1})
    wait_for_records(catalog, lambda rs: len(rs) == 1)
    assert raw_get(catalog.port, b"get /query.json HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    assert raw_get(catalog.port, b"Head / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    huge = get(catalog, "/query/" + b64("port < " + "9" * 5000))
    assert huge.status_code == 200 and [r["port"] for r in huge.json()] == [1]


def test_idle_connections_make_room_for_a_new_client_and_are_closed_soon(spawn, tmp_path):
    catalog = OurCatalog(spawn, tmp_path / "state", "--max-connections", "40")
    idle = [socket.create_connection(("127.0.0.1", catalog.port), timeout=5) for _ in range(60)]
    try:
        send_udp(catalog.port, {"type": "room", "port": 1})
        started = time.monotonic()
        assert [r["port"] for r in query('type=="room"', [("127.0.0.1", catalog.port)])] == [1]
        assert time.monotonic() - started < 2  # not a time-out's worth
        # Those that were not closed to make room are closed once silent for 2 s.
        for sock in idle:
            sock.settimeout(5)
            assert sock.recv(1) == b""
        assert time.monotonic() - started < 5
    finally:
        for sock in idle:
            sock.close()
    assert "idle connections closed to make room" in catalog.process.output()


def test_one_address_filling_the_catalog_leaves_room_for_a_new_server(spawn, tmp_path):
    catalog = OurCatalog(spawn, tmp_path / "state", "--max-records", "300")
    fill(catalog, 300, type="flood")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.2", 0))  # another address on this machine
        sock.sendto(orjson.dumps({"type": "honest", "port": 7}), ("127.0.0.1", catalog.port))
    wait_for_records(catalog, lambda rs: ports(rs, type="honest") == {7})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # the flood goes on
        for port in range(1000, 1400):
            sock.sendto(orjson.dumps({"type": "flood", "port": port}), ("127.0.0.1", catalog.port))
    found = wait_for_records(catalog, lambda rs: 1399 in ports(rs))
    assert len(found) == 300 and ports(found, type="honest") == {7}


def test_a_catalog_serving_the_network_lists_local_servers_under_a_reachable_address(
    spawn, tmp_path
):
    """Listening on every interface for the few seconds of the test; only loopback is
    used to talk to it."""
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        expected = network_address(probe)
    if expected is None:
        pytest.skip("this machine has no address but loopback ones")
    port = free_port()
    args = ["--host", "0.0.0.0", "--port", str(port), "--state-dir", str(tmp_path / "state")]
    process = spawn(python_module("catalog", *args), name="catalog")
    wait_until(lambda: tcp_open("127.0.0.1", port), what="catalog to listen")
    send_udp(port, {"type": "local", "port": 4})
    catalog = type("Handle", (), {"url": f"http://127.0.0.1:{port}"})
    (record,) = wait_for_records(catalog, lambda rs: len(rs) == 1)
    assert record["address"] == expected and record["address"] != "127.0.0.1"
    assert record["name"] == (host_name() or expected)
    assert f"listed as {expected}" in process.output()
