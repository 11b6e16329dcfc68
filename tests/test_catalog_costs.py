"""What an update, a waiting update and a page may cost the catalog, without sockets:
bounded by what the sender sent (docs/catalog.md, "Bounds")."""

from __future__ import annotations

import tracemalloc
import zlib

import orjson
import pytest

import catalog.ingest
from catalog.app import CatalogApp
from catalog.ingest import Ingest, Stats
from catalog.records import RecordStore
from catalog.shown import MAX_SHOWN
from catalog.updates import MAX_RATIO, UpdateError, decode_update
from tests.test_catalog_units import Clock, FakeNames, answer, stamped

# The tester's datagram: 326 bytes that expand to 261 KB of `{}` items (800 times).
BOMB = b"\x1a" + zlib.compress(
    b'{"type":"amp","port":9000,"a":[' + b",".join([b"{}"] * 87000) + b"]}", 9
)


def work_queue_like() -> dict:
    """A record as repetitive as real ones get: 60 workers with the same fields
    (catalog_update sends its own 231-byte record, which compresses 1.4 times)."""
    workers = {
        f"worker-{i}.crc.nd.edu": {
            "cores": 8,
            "memory": 16000,
            "disk": 100000,
            "tasks_running": i % 9,
        }
        for i in range(60)
    }
    return {"type": "wq_master", "project": "p", "port": 9123, "workers": workers}


def test_a_small_datagram_may_not_expand_into_a_large_update():
    assert len(BOMB) < 400
    with pytest.raises(UpdateError, match=f"expands more than {MAX_RATIO} times"):
        decode_update(BOMB)
    record = work_queue_like()
    data = orjson.dumps(record)
    packed = b"\x1a" + zlib.compress(data, 9)
    assert len(data) / len(packed) > 8  # as repetitive as records get, and still taken
    assert decode_update(packed) == record


@pytest.mark.parametrize("ending", [b"\x00", b"\x00\x00", b"\n\x00", b" \r\n"])
def test_trailing_nuls_and_white_space_are_accepted_as_cctools_does(ending):
    # C clients that send strlen+1 bytes end their update with a NUL.
    assert decode_update(b'{"type":"nul","port":4009}' + ending) == {"type": "nul", "port": 4009}
    packed = b"\x1a" + zlib.compress(b'{"port":1}' + ending)
    assert decode_update(packed) == {"port": 1}
    with pytest.raises(UpdateError, match="not valid JSON"):
        decode_update(b'{"port":1}\x00x')


def test_the_same_record_again_within_its_second_is_not_journaled_again():
    clock, names = Clock(), FakeNames()
    names.known["127.0.0.1"] = "localhost"
    ingest = Ingest(RecordStore(clock=clock), names, clock, journaling=True)
    update = orjson.dumps({"type": "big", "port": 1, "pad": "x" * 50_000})
    for _ in range(100):
        ingest.receive(update, "127.0.0.1")
        clock.now += 0.001
    assert len(ingest.take_accepted()) == 1 and ingest.stats.updates == 100
    version = ingest.store.version
    clock.now += 1  # a second later its lastheardfrom is new: written again, once
    for _ in range(3):
        ingest.receive(update, "127.0.0.1")
    assert len(ingest.take_accepted()) == 1 and ingest.store.version == version + 1
    # Refreshed all the same: it expires a lifetime after the last one.
    (entry,) = ingest.store.entries()
    assert entry.expires == clock.now + ingest.store.lifetime


def test_updates_waiting_for_a_name_are_held_as_their_bytes_and_bounded(monkeypatch):
    names = FakeNames()  # never answers
    clock = Clock()
    ingest = Ingest(RecordStore(clock=clock), names, clock)
    # Uncompressed (as over TCP): 100 KB of `{}` items each, which parsed are 3 MB.
    update = b'{"port":1,"a":[' + b",".join([b"{}"] * 33_000) + b"]}"
    tracemalloc.start()
    try:
        for _ in range(10):
            ingest.receive(update, "192.0.2.1")
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ingest.waiting == 10 and ingest.waiting_bytes == 10 * len(update)
    assert held < 3 * 10 * len(update)  # parsed, they held 30 MB
    names.answer("192.0.2.1", "host.example")
    ingest.names_arrived()
    assert [e.key for e in ingest.store.entries()] == ["192.0.2.1:1:host.example"]
    assert ingest.waiting == 0 and ingest.waiting_bytes == 0

    # Past MAX_WAITING_BYTES an update waits no more: the address stands for the name.
    monkeypatch.setattr(catalog.ingest, "MAX_WAITING_BYTES", 3 * len(update))
    for port in range(2, 6):
        ingest.receive(update.replace(b'"port":1', b'"port":%d' % port), "192.0.2.9")
    assert ingest.waiting == 3 and ingest.waiting_bytes == 3 * len(update)
    assert [e.key for e in ingest.store.entries()][1:] == ["192.0.2.9:5:192.0.2.9"]


def test_the_minute_summary_says_the_catalog_is_full_only_when_it_was():
    quiet = Stats(updates=12, new=10)
    assert (
        quiet.report(10, 0)
        == "10 records live; in the last minute 12 updates (10 new records), 0 rejected"
    )
    full = Stats(updates=5, new=5, rejected=1, last_rejection="from 10.0.0.1: bad")
    assert full.report(100, 3) == (
        "100 records live; in the last minute 5 updates (5 new records, 3 of them in the "
        "place of others: the catalog is full), 1 rejected (last from 10.0.0.1: bad)"
    )


def test_a_page_shows_cut_values_whatever_the_records_hold():
    store = RecordStore(clock=Clock())
    now = store.clock()
    for port in range(100):
        huge = {"type": "t" * 250_000, "project": ["p"] * 50_000, "port": port, "a": [{}] * 80_000}
        store.put(stamped(huge, heard=now), now)
    app = CatalogApp(store, "test catalog")
    for target in (
        "/",
        "/?q=ttt",
        "/?sort=project",
        "/?type=" + "t" * (MAX_SHOWN - 1) + "%E2%80%A6",
    ):
        status, _, body = answer(app, target)
        assert status == 200, target
        assert len(body) < 200_000, target  # whole values made a 25 MB page
        assert body.count(b"<tr>") == 101, target
        assert ("t" * (MAX_SHOWN - 1) + "…").encode() in body
    tracemalloc.start()
    try:
        answer(app, "/?sort=owner")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000  # parsing each row's whole record: 600 MB
