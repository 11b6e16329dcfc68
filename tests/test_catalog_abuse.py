"""Cheap inputs that used to cost the catalog dearly, against the real process:
each asserts what an honest client sees meanwhile (docs/catalog.md, "Bounds")."""

from __future__ import annotations

import socket
import time
import zlib

import orjson

from harness.processes import wait_until
from tests.test_catalog_helpers import (
    OurCatalog,
    get,
    ports,
    records,
    send_tcp,
    send_udp,
    wait_for_records,
)
from tests.test_catalog_journal import journal_bytes, saved

# 326 bytes that expanded to 261 KB of `{}` items: 6.7 ms each to parse, store, journal.
BOMB = b"\x1a" + zlib.compress(
    b'{"type":"amp","port":9000,"a":[' + b",".join([b"{}"] * 87000) + b"]}", 9
)


def test_a_burst_of_expanding_datagrams_does_not_keep_honest_updates_out(spawn, tmp_path):
    catalog = OurCatalog(spawn, tmp_path / "state")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(2000):  # held by the catalog's socket buffer: 13 s of work before
            sock.sendto(BOMB, ("127.0.0.1", catalog.port))
    sent = time.monotonic()

    def listed() -> bool:
        send_udp(catalog.port, {"type": "honest", "port": 1})  # as a service does, again
        return ports(records(catalog), type="honest") == {1}

    wait_until(listed, timeout=3, what="the honest update to be listed")
    assert time.monotonic() - sent < 3
    assert all(r["type"] != "amp" for r in records(catalog))


def test_clients_that_never_read_their_reply_do_not_make_queries_fail(spawn, tmp_path):
    catalog = OurCatalog(spawn, tmp_path / "state")
    for port in range(100):  # /query.json of 21 MB
        send_tcp(catalog.port + 1, {"type": "big", "port": port, "pad": "x" * 210_000})
    wait_for_records(catalog, lambda rs: len(rs) == 100)
    body_size = len(get(catalog, "/query.json").content)
    assert body_size > 20_000_000
    stuck = []
    try:
        for _ in range(20):  # 20 copies of the body would be 420 MB, past the 256 MiB bound
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", catalog.port))
            sock.sendall(b"GET /query.json HTTP/1.0\r\n\r\n")
            stuck.append(sock)
        for _ in range(3):
            answer = get(catalog, "/query.json")
            assert answer.status_code == 200 and len(answer.content) == body_size
        for sock in stuck:  # and each reader that never read got its reply too
            sock.settimeout(5)
            assert sock.recv(12) == b"HTTP/1.1 200"
    finally:
        for sock in stuck:
            sock.close()


def test_a_page_stays_small_whatever_the_records_hold(spawn, tmp_path):
    catalog = OurCatalog(spawn, tmp_path / "state")
    for port in range(20):
        send_tcp(catalog.port + 1, {"type": "t" * 200_000, "port": port, "owner": "o" * 50_000})
    wait_for_records(catalog, lambda rs: len(rs) == 20)
    for path in ("/", "/?q=tt", "/?sort=owner"):
        page = get(catalog, path)
        assert page.status_code == 200 and page.text.count("<tr>") == 21
        assert len(page.content) < 100_000, path  # the values whole: 5 MB
        assert "t" * 99 + "…" in page.text
    detail = get(catalog, "/detail/127.0.0.1:3:localhost")
    assert detail.status_code == 200 and "t" * 200_000 in detail.text  # every field, whole


def test_a_record_sent_again_is_not_written_to_the_journal_again(spawn, tmp_path):
    state = tmp_path / "state"
    catalog = OurCatalog(spawn, state, "--save-interval", "3600")
    send_udp(catalog.port, {"type": "first", "port": 1})
    wait_until(lambda: ports(saved(state)) == {1}, what="the first save")
    update = orjson.dumps({"type": "same", "port": 2, "pad": "x" * 50_000})
    for _ in range(50):
        send_udp(catalog.port, update)
    send_udp(catalog.port, {"type": "last", "port": 3})
    wait_for_records(catalog, lambda rs: ports(rs) == {1, 2, 3})
    # Once, or twice if a second began meanwhile (lastheardfrom changed): not 50 times.
    assert journal_bytes(state) < 2 * len(update) + 1000


def test_an_update_ending_in_a_nul_is_taken_as_cctools_takes_it(spawn, tmp_path):
    catalog = OurCatalog(spawn, tmp_path / "state")
    send_udp(catalog.port, b'{"type":"nul","port":4009}\x00')  # a C client's strlen+1
    send_tcp(catalog.port + 1, b'{"type":"nul","port":4010}\x00\n')
    wait_for_records(catalog, lambda rs: ports(rs, type="nul") == {4009, 4010})
