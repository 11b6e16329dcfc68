"""The catalog's sans-IO parts, without sockets: updates, records, HTTP, pages, names, state."""

from __future__ import annotations

import base64
import random
import threading
import zlib
from pathlib import Path

import orjson
import pytest

from catalog.app import CatalogApp, Pending
from catalog.formats import format_age, text_listing
from catalog.http import MAX_HEAD_BYTES, HttpError, RequestReader
from catalog.ingest import NAME_WAIT, Ingest
from catalog.names import LOOPBACK_NAME, Resolver
from catalog.persist import Saver, StateDir, StateDirError, restore
from catalog.records import RecordRejected, RecordStore, record_key
from catalog.updates import MAX_UPDATE_BYTES, UpdateError, decode_update, stamp

START = 1_000_000.0
# Base64 of random bytes, more than an update may hold: it compresses only 1.3 times.
NOISE = base64.b64encode(random.Random(1).randbytes(MAX_UPDATE_BYTES * 3 // 4 + 1000))


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def stamped(record: dict, address: str = "10.0.0.1", name: str = "host", heard: float = START):
    return stamp(dict(record), address, name, heard)


# ---------------------------------------------------------------------------- updates


def test_plain_and_compressed_updates_decode_alike():
    record = {"type": "hashtable", "port": 1, "project": "p" * 3000}
    plain = orjson.dumps(record)
    assert decode_update(plain) == record
    assert decode_update(b"\x1a" + zlib.compress(plain)) == record


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{1:"x"}', "not valid JSON"),  # a JX object with a non-string key
        (b"type hashtable\nport 9", "not valid JSON"),
        (b'{"name":"\xff\xfe"}', "not valid JSON"),  # invalid UTF-8
        (b'{"name":"\\ud800"}', "not valid JSON"),  # a lone surrogate
        (b"[1, 2]", "not an object"),
        (b'"text"', "not an object"),
        (b"", "not valid JSON"),
        (b"[" * 2000 + b"]" * 2000, "not valid JSON"),
        (b"\x1a" + b"not zlib", "not valid zlib"),
        (b"\x1a" + zlib.compress(b'{"a": 1}')[:-3], "truncated"),
        (b"\x1a" + zlib.compress(b"[" + NOISE + b"]"), "expands past"),  # 1.3 times
        (b"\x1a" + zlib.compress(b" " * (MAX_UPDATE_BYTES + 1)), "expands more than 32 times"),
        (b" " * (MAX_UPDATE_BYTES + 1), "larger than"),
    ],
)
def test_bad_updates_are_rejected_with_a_reason(data, reason):
    with pytest.raises(UpdateError, match=reason):
        decode_update(data)


def test_stamping_overrides_the_senders_own_values_once():
    record = decode_update(b'{"address":"6.6.6.6","lastheardfrom":1,"name":"liar","port":5}')
    data = orjson.dumps(stamp(record, "10.0.0.1", "real", 1234.9))
    assert data.count(b'"address"') == data.count(b'"name"') == 1
    assert orjson.loads(data) == {
        "address": "10.0.0.1",
        "lastheardfrom": 1234,
        "name": "real",
        "port": 5,
    }


# ---------------------------------------------------------------------------- records


def test_keys_are_address_port_name_and_uuid():
    assert record_key(stamped({"port": 9})) == "10.0.0.1:9:host"
    assert record_key(stamped({"port": 9, "uuid": "U-1"})) == "10.0.0.1:9:host:U-1"
    assert record_key(stamped({"port": "9"})) == "10.0.0.1:0:host"
    assert record_key(stamped({"port": True})) == "10.0.0.1:0:host"


def test_a_new_update_replaces_the_record_whole():
    store = RecordStore(clock=Clock())
    store.put(stamped({"port": 1, "a": 1}), START)
    key, new = store.put(stamped({"port": 1, "b": 2}), START)
    assert not new and len(store) == 1
    assert orjson.loads(store.get(key).data) == stamped({"port": 1, "b": 2})


def test_records_expire_after_the_lifetime_which_a_record_may_only_shorten():
    clock = Clock()
    store = RecordStore(lifetime=100, clock=clock)
    heard = clock.now
    store.put(stamped({"port": 1}, heard=heard), heard)
    store.put(stamped({"port": 2, "lifetime": 10}, heard=heard), heard)
    store.put(stamped({"port": 3, "lifetime": 1000}, heard=heard), heard)
    store.put(stamped({"port": 4, "lifetime": "5"}, heard=heard), heard)
    clock.now += 50
    assert sorted(orjson.loads(e.data)["port"] for e in store.entries()) == [1, 3, 4]
    clock.now += 51
    assert store.entries() == []
    assert orjson.loads(store.json_body()) == []


def test_a_refreshed_record_does_not_expire_on_its_old_schedule():
    clock = Clock()
    store = RecordStore(lifetime=100, clock=clock)
    for _ in range(5000):  # many refreshes: stale expiry entries are compacted away
        clock.now += 30
        store.put(stamped({"port": 1}), clock.now)
    clock.now += 90
    assert len(store.entries()) == 1
    assert len(store._expiry) < 2 * len(store) + 1100


def test_the_json_body_is_valid_and_cached_until_something_changes():
    store = RecordStore(clock=Clock())
    assert orjson.loads(store.json_body()) == []
    for port in range(3):
        store.put(stamped({"port": port, "text": 'quote " and \\ newline \n'}), store.clock())
    body = store.json_body()
    assert [r["port"] for r in orjson.loads(body)] == [0, 1, 2]
    assert store.json_body() is body
    store.put(stamped({"port": 3}), store.clock())
    assert store.json_body() is not body


def test_bounds_on_records_bytes_and_keys():
    store = RecordStore(max_records=2, max_bytes=600, clock=Clock())
    now = store.clock()
    store.put(stamped({"port": 1}), now)
    store.put(stamped({"port": 2}), now)
    store.put(stamped({"port": 3}), now)  # full: it takes the place of the oldest
    assert [orjson.loads(e.data)["port"] for e in store.entries()] == [2, 3]
    store.put(stamped({"port": 2, "more": "x" * 100}), now)  # an existing key may refresh
    with pytest.raises(RecordRejected, match="bytes"):
        store.put(stamped({"port": 2, "more": "x" * 1000}), now)
    with pytest.raises(RecordRejected, match="key"):
        RecordStore().put(stamped({"port": 1, "uuid": "u" * 1000}), now)
    with pytest.raises(RecordRejected, match="JSON"):
        RecordStore().put(stamped({"port": 1, "big": 2**70}), now)


def test_a_saved_body_loads_back_without_the_expired_and_the_malformed():
    clock = Clock()
    store = RecordStore(lifetime=100, clock=clock)
    store.put(stamped({"port": 1}, heard=clock.now - 90), clock.now - 90)
    store.put(stamped({"port": 2}, heard=clock.now), clock.now)
    body = store.json_body()
    extra = body.replace(b"\n]", b',\n"junk",\n{"no":"lastheardfrom"}\n]')
    clock.now += 20
    fresh = RecordStore(lifetime=100, clock=clock)
    assert fresh.load(extra) == (1, 3)
    assert [orjson.loads(e.data)["port"] for e in fresh.entries()] == [2]
    with pytest.raises(ValueError, match="JSON"):
        fresh.load(b"[{")
    with pytest.raises(ValueError, match="array"):
        fresh.load(b"{}")


# ---------------------------------------------------------------------------- HTTP


def read(data: bytes, pieces: int = 1):
    reader = RequestReader()
    step = max(1, len(data) // pieces)
    request = None
    for start in range(0, len(data), step):
        request = reader.feed(data[start : start + step]) or request
    return request


def test_requests_parse_whole_or_in_pieces():
    data = b"GET /query.json HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n"
    for pieces in (1, 3, len(data)):
        request = read(data, pieces)
        assert (request.method, request.path) == ("GET", "/query.json")
    assert read(b"HEAD /detail/a%20b?sort=port HTTP/1.0\n\n").path == "/detail/a b"
    assert read(b"GET /?sort=port HTTP/1.0\n\n").query == {"sort": ["port"]}
    assert read(b"GET http://h:9097/query.text HTTP/1.1\r\n\r\n").path == "/query.text"
    assert read(b"GET / HTTP/1.1\r\nHost: x\r\n") is None  # head not finished yet


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"POST / HTTP/1.1\r\n\r\n", 405),
        (b"GET x HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431),
        (b"GET /" + b"a" * MAX_HEAD_BYTES + b" HTTP/1.1\r\n\r\n", 431),
    ],
)
def test_bad_requests_get_error_statuses(data, status):
    with pytest.raises(HttpError) as caught:
        read(data)
    assert caught.value.status == status


def respond(app: CatalogApp, target: str, method: str = "GET") -> list[bytes]:
    """The reply, as the server makes it: a pending one once its scan is done."""
    answer = app.respond(read(f"{method} {target} HTTP/1.1\r\n\r\n".encode()))
    if isinstance(answer, Pending):
        while not answer.scan.step(float("inf")):
            pass
        return answer.reply()
    return answer


def answer(app: CatalogApp, target: str, method: str = "GET") -> tuple[int, str, bytes]:
    parts = respond(app, target, method)
    head, _, body = b"".join(parts).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body) or method == "HEAD"
    return int(lines[0].split()[1]), headers["Content-Type"], body


@pytest.fixture
def app() -> CatalogApp:
    store = RecordStore(clock=Clock())
    now = store.clock()
    store.put(stamped({"type": "hashtable", "port": 1, "owner": "<b>me</b>"}, heard=now), now)
    store.put(stamped({"type": "chirp", "port": 2, "project": "x'y\""}, heard=now), now)
    return CatalogApp(store, "test catalog")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_query_routes(app):
    status, kind, body = answer(app, "/query.json")
    assert (status, kind) == (200, "application/json") and len(orjson.loads(body)) == 2
    status, _, body = answer(app, "/query/" + b64('type=="chirp"'))
    assert status == 200 and [r["port"] for r in orjson.loads(body)] == [2]
    status, _, body = answer(app, "/query/" + b64("true"))
    assert body == app.store.json_body()
    urlsafe = base64.urlsafe_b64encode(b"port>1").decode().rstrip("=")
    assert [r["port"] for r in orjson.loads(answer(app, "/query/" + urlsafe)[2])] == [2]
    status, _, body = answer(app, "/query.text")
    assert status == 200 and body.count(b"\n\n") == 2 and b"type hashtable\n" in body
    assert answer(app, "/query.json", "HEAD")[2] == b""


def test_query_errors_are_400_with_a_message(app):
    status, kind, body = answer(app, "/query/" + b64("port = 1"))
    assert status == 400 and kind.startswith("text/plain") and b"use ==" in body
    status, _, body = answer(app, "/query/not*base64")
    assert status == 400 and b"base64" in body


def test_pages_escape_everything_they_show(app):
    status, kind, body = answer(app, "/")
    assert status == 200 and kind.startswith("text/html")
    assert b"<b>me</b>" not in body and b"&lt;b&gt;me&lt;/b&gt;" in body
    assert b"x&#x27;y&quot;" in body
    assert body.count(b"<a href='/detail/10.0.0.1:") == 2
    status, _, body = answer(app, "/detail/10.0.0.1:1:host")
    assert status == 200 and b"&lt;b&gt;me&lt;/b&gt;" in body
    status, _, body = answer(app, "/nothing/%3Cscript%3Ealert(1)%3C/script%3E")
    assert status == 404 and b"<script>" not in body and b"&lt;script&gt;" in body
    status, _, body = answer(app, "/detail/%3Cimg%20src=x%3E")
    assert status == 404 and b"<img" not in body


def test_pages_sort_and_filter(app):
    _, _, body = answer(app, "/?sort=port")
    assert body.index(b"hashtable</td>") < body.index(b"chirp</td>")
    _, _, body = answer(app, "/?sort=type")
    assert body.index(b"chirp</td>") < body.index(b"hashtable</td>")
    _, _, body = answer(app, "/query.html?type=chirp")
    assert b"hashtable</td>" not in body and b"chirp</td>" in body
    assert answer(app, "/?sort=%3Cnope%3E")[0] == 200


def test_text_listing_keeps_one_field_per_line():
    body = text_listing([{"a": "one\ntwo", "b": [1, "x"], "c\r": "\x1b[2J"}, {"d": None}])
    assert body == b'a one\\ntwo\nb [1,"x"]\nc\\r \\u001b[2J\n\nd null\n\n'


def test_ages():
    assert [format_age(s) for s in (0, 59, 60, 3599, 3600, 86400 * 3, -5)] == [
        "0s", "59s", "1m", "59m", "1h", "3d", "0s",
    ]  # fmt: skip


# ---------------------------------------------------------------------------- names


class FakeNames:
    """Names looked up "later": ``answer()`` plays the resolver finishing."""

    def __init__(self) -> None:
        self.known: dict[str, str] = {}
        self.finished: list[str] = []
        self.abandoned: list[str] = []

    def name_of(self, address):
        return self.known.get(address)

    def give_up(self, address):
        self.abandoned.append(address)
        self.known[address] = address

    def collect(self):
        finished, self.finished = self.finished, []
        return finished

    def answer(self, address, name):
        self.known[address] = name
        self.finished.append(address)


def test_updates_wait_for_their_senders_name_so_the_key_is_stable():
    clock, names = Clock(), FakeNames()
    ingest = Ingest(RecordStore(clock=clock), names, clock)
    ingest.receive(b'{"port": 1}', "10.0.0.1")
    ingest.receive(b'{"port": 1, "again": true}', "10.0.0.1")
    assert len(ingest.store) == 0 and ingest.waiting == 2
    names.answer("10.0.0.1", "server.example")
    ingest.names_arrived()
    assert [e.key for e in ingest.store.entries()] == ["10.0.0.1:1:server.example"]
    assert ingest.waiting == 0 and ingest.stats.updates == 2 and ingest.stats.new == 1


def test_an_unanswered_name_lookup_leaves_the_address_as_the_name():
    clock, names = Clock(), FakeNames()
    ingest = Ingest(RecordStore(clock=clock), names, clock)
    ingest.receive(b'{"port": 1}', "10.0.0.2")
    ingest.stop_waiting()
    assert len(ingest.store) == 0
    clock.now += NAME_WAIT + 0.1
    ingest.stop_waiting()
    assert [e.key for e in ingest.store.entries()] == ["10.0.0.2:1:10.0.0.2"]
    assert names.abandoned == ["10.0.0.2"]


def test_rejected_updates_are_counted_with_the_reason():
    ingest = Ingest(RecordStore(), FakeNames())
    ingest.receive(b"{1:2}", "127.0.0.1")
    assert ingest.stats.rejected == 1 and "not valid JSON" in ingest.stats.last_rejection


def test_resolver_answers_loopback_at_once_and_others_off_the_calling_thread():
    release = threading.Event()
    callers = []

    def slow_lookup(address):
        callers.append(threading.current_thread())
        release.wait(10)
        return "far.example"

    resolver = Resolver(lookup=slow_lookup)
    try:
        assert resolver.name_of("127.0.0.1") == LOOPBACK_NAME
        assert resolver.name_of("::1") == LOOPBACK_NAME
        assert resolver.name_of("192.0.2.7") is None  # returns while the lookup hangs
        assert resolver.collect() == []
        release.set()
        from harness.processes import wait_until

        assert wait_until(resolver.collect, what="the lookup") == ["192.0.2.7"]
        assert resolver.name_of("192.0.2.7") == "far.example"
        assert callers and callers[0] is not threading.current_thread()
    finally:
        resolver.close()


# ---------------------------------------------------------------------------- state


def test_state_is_written_atomically_and_restored(tmp_path: Path):
    state = StateDir(tmp_path / "state")
    state.open()
    store = RecordStore(clock=Clock())
    store.put(stamped({"port": 7}), store.clock())
    saver = Saver(state)
    assert saver.close(store.json_body())
    assert not list(state.path.glob(".*.tmp"))
    again = RecordStore(clock=Clock())
    restore(again, state)
    assert again.json_body() == store.json_body()
    state.close()


def test_a_corrupt_state_file_is_set_aside_and_the_catalog_starts_empty(tmp_path, caplog):
    state = StateDir(tmp_path)
    state.open()
    state.file.write_bytes(b'[{"port": 1, "lastheard')
    store = RecordStore()
    restore(store, state)
    assert len(store) == 0
    assert "unreadable" in caplog.text and "starting empty" in caplog.text
    kept = list(tmp_path.glob("records.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b'[{"port"')
    state.close()


def test_one_state_directory_serves_one_catalog(tmp_path):
    first = StateDir(tmp_path)
    first.open()
    with pytest.raises(StateDirError, match="in use"):
        StateDir(tmp_path).open()
    first.close()
    (tmp_path / "file").write_text("")
    with pytest.raises(StateDirError, match="cannot use"):
        StateDir(tmp_path / "file" / "sub").open()
