"""catalog.client's choice among a project's records, and what servers announce for it.

Found by the chaos battery (server moves): a server that restarted within the
same second as its dead predecessor's last announcement left two records with
the same lastheardfrom (whole seconds), clients picked the dead one, and kept
picking it until the live one announced again a minute later.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

import catalog.client as catalog_client
from catalog.client import CatalogUnavailable, matching, query, resolve
from harness.processes import wait_until
from tests.server_support import start_server
from tests.test_catalog_helpers import OurCatalog


def hashtable(port: int, heard: object, **fields: object) -> dict:
    return {"type": "hashtable", "project": "p", "port": port, "lastheardfrom": heard, **fields}


def test_the_record_heard_from_last_comes_first():
    records = [hashtable(1, 100), hashtable(2, 102), hashtable(3, 101), {"type": "x", "port": 4}]
    assert [r["port"] for r in matching(records, "hashtable", "p")] == [2, 3, 1]


def test_between_records_heard_from_in_the_same_second_the_one_started_last_wins():
    dead = hashtable(1, 100, starttime=99.8)
    live = hashtable(2, 100, starttime=100.2)
    for records in ([dead, live], [live, dead]):
        assert matching(records, "hashtable", "p")[0]["port"] == 2


def test_odd_fields_count_as_oldest():
    records = [hashtable(1, "soon", starttime=True), hashtable(2, 5), hashtable(3, None)]
    assert matching(records, "hashtable", "p")[0]["port"] == 2


def test_a_server_announces_its_start_to_the_millisecond(spawn, catalog, tmp_path):
    before = time.time()
    server = start_server(spawn, tmp_path / "data", project="starts", catalog=catalog.host)
    after = time.time()
    record = wait_until(
        lambda: resolve("hashtable", "starts", [("127.0.0.1", catalog.port)]),
        what="the server's record",
    )
    assert record["port"] == server.port
    assert before - 0.001 <= record["starttime"] <= after
    assert isinstance(record["starttime"], float)  # whole seconds would tie again
    assert len(query(catalogs=[("127.0.0.1", catalog.port)])) == 1


def test_a_catalog_that_lost_its_records_lists_a_server_at_its_next_announcement(spawn, tmp_path):
    """The chaos battery restarts catalogs without their state; servers announce
    every --announce-interval seconds (60 by default) and are found again."""
    first = OurCatalog(spawn, tmp_path / "state")
    catalogs = [("127.0.0.1", first.port)]
    server = start_server(
        spawn, tmp_path / "data", "--announce-interval", "0.5", project="again", catalog=first.host
    )
    wait_until(lambda: resolve("hashtable", "again", catalogs), what="the server's record")
    first.process.kill()
    OurCatalog(spawn, tmp_path / "empty-state", port=first.port)
    record = wait_until(lambda: resolve("hashtable", "again", catalogs), what="the record again")
    assert record["port"] == server.port


class OneRequest:
    """Takes one HTTP request on a port of its own and answers it (``answer``) from
    a thread; ``done`` once the answer is over or the client has hung up."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError), self.listener:
            peer, _ = self.listener.accept()
            with peer:
                while b"\r\n\r\n" not in peer.recv(65536):
                    pass
                self.answer(peer)
        self.done.set()

    def answer(self, peer: socket.socket) -> None:
        raise NotImplementedError


class FakeCatalog(OneRequest):
    """Answers one HTTP request with 200 and ``body_size`` bytes of a valid JSON
    array of records (made as it is sent, so that the test holds none of it);
    ``sent`` counts the bytes the kernel took before the client hung up."""

    RECORD = b'{"type": "filler", "pad": "' + b"x" * 1000 + b'"},'

    def __init__(self, body_size: int, pause: float = 0.0) -> None:
        self.body_size = body_size
        self.pause = pause  # seconds between pieces: a catalog trickling its reply
        self.sent = 0
        super().__init__()

    def answer(self, peer: socket.socket) -> None:
        peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        peer.sendall(b"Connection: close\r\n\r\n[")
        chunk = self.RECORD * 64
        for _ in range(self.body_size // len(chunk)):
            peer.sendall(chunk)
            self.sent += len(chunk)
            time.sleep(self.pause)
        peer.sendall(b'{"port": 1}]')

    @property
    def records(self) -> int:
        return self.body_size // len(self.RECORD * 64) * 64 + 1


def test_a_catalog_reply_past_the_size_bound_is_not_read_whole(catalog, monkeypatch):
    """A catalog (or anyone at its address) answering with more than
    MAX_REPLY_BYTES (64 MiB; 1 MiB here, to keep the test light): the client
    stops reading there, counts that catalog as not answering, and asks the next."""
    assert catalog_client.MAX_REPLY_BYTES == 64 << 20
    monkeypatch.setattr(catalog_client, "MAX_REPLY_BYTES", 1 << 20)
    huge = FakeCatalog(64 << 20)
    with pytest.raises(CatalogUnavailable, match=r"reply larger than 1 MiB$"):
        query(catalogs=[("127.0.0.1", huge.port)], timeout=10)
    assert huge.done.wait(10)
    assert huge.sent < 32 << 20  # the rest was never read (the socket buffers hold a few MiB)
    second = FakeCatalog(64 << 20)
    records = query(catalogs=[("127.0.0.1", second.port), ("127.0.0.1", catalog.port)], timeout=10)
    assert not any(record.get("type") == "filler" for record in records)  # the real catalog's


def test_a_catalog_trickling_its_reply_is_given_up_on_after_the_time_out():
    """A time-out per read (requests'): each piece on time, the whole took for ever."""
    slow = FakeCatalog(4 << 20, pause=0.1)  # 64 pieces, 6.4 s
    started = time.monotonic()
    with pytest.raises(CatalogUnavailable, match="no answer in time"):
        query(catalogs=[("127.0.0.1", slow.port)], timeout=1.0)
    assert time.monotonic() - started < 3


class Trickler(OneRequest):
    """Answers one HTTP request with ``reply``, one byte every ``pause`` seconds."""

    def __init__(self, reply: bytes, pause: float = 0.05) -> None:
        self.reply, self.pause = reply, pause
        super().__init__()

    def answer(self, peer: socket.socket) -> None:
        for byte in self.reply:
            peer.sendall(bytes([byte]))
            time.sleep(self.pause)


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"x" * 200 + b"\r\n\r\n[]",  # the head
        b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n[" + b" " * 198 + b"]",  # the body
    ],
    ids=["head", "body"],
)
def test_a_catalog_trickling_a_byte_at_a_time_is_given_up_on_after_the_time_out(reply):
    """Each byte well within any per-read time-out; the whole given up at 1 s."""
    slow = Trickler(reply)  # about 10 s at 20 bytes a second
    started = time.monotonic()
    with pytest.raises(CatalogUnavailable, match="no answer in time"):
        query(catalogs=[("127.0.0.1", slow.port)], timeout=1.0)
    took = time.monotonic() - started
    assert 0.9 < took < 2, f"gave up after {took:.2f} s"


def test_a_catalog_answering_with_no_http_is_said_so_and_the_next_one_asked(catalog):
    junk = Trickler(b"SSH-2.0-OpenSSH\r\n\r\n", pause=0)
    with pytest.raises(CatalogUnavailable, match=r"127\.0\.0\.1:\d+: not an HTTP reply"):
        query(catalogs=[("127.0.0.1", junk.port)], timeout=5)
    again = Trickler(b"SSH-2.0-OpenSSH\r\n\r\n", pause=0)
    records = query(catalogs=[("127.0.0.1", again.port), ("127.0.0.1", catalog.port)], timeout=5)
    assert isinstance(records, list)


def test_a_catalog_not_listening_is_said_so():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    with pytest.raises(
        CatalogUnavailable, match=rf"127\.0\.0\.1:{port}: cannot connect: Connection refused"
    ):
        query(catalogs=[("127.0.0.1", port)], timeout=5)


def test_a_catalog_reply_within_the_bound_is_read_whole():
    fake = FakeCatalog(2 << 20)  # many reads
    records = query(catalogs=[("127.0.0.1", fake.port)], timeout=10)
    assert len(records) == fake.records and records[-1] == {"port": 1}
