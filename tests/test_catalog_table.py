"""The catalog's bounded parts, sans-IO: fair shares when full, the paged table,
scans a slice at a time, the order of values, local senders, peers making room."""

from __future__ import annotations

import socket

import orjson
import pytest

from catalog.ingest import Ingest
from catalog.jx import compile_expression
from catalog.listing import MAX_SCANNED_ROWS, PAGE_ROWS, IndexedPage, PageError, PageJob, PageQuery
from catalog.order import sort_text
from catalog.peers import LINGERING, RENDERING, WRITING, Peer, Peers
from catalog.records import RecordStore
from catalog.scans import QueryScan
from catalog.shares import Shares, source_of
from netkit.interfaces import network_address
from tests.test_catalog_units import START, Clock, FakeNames, stamped


def ports(store: RecordStore, address: str | None = None) -> set[int]:
    records = [orjson.loads(entry.data) for entry in store.entries()]
    return {r["port"] for r in records if address is None or r["address"] == address}


# ---------------------------------------------------------------------------- shares


def test_one_address_flooding_a_full_catalog_only_displaces_its_own_records():
    store = RecordStore(max_records=100, clock=Clock())
    now = store.clock()
    for port in range(10):  # honest services elsewhere, each heard twice
        for _ in range(2):
            store.put(stamped({"port": port}, address=f"10.0.1.{port}"), now)
    for port in range(1000, 1500):  # the flood: 500 one-off records from one address
        store.put(stamped({"port": port}, address="10.6.6.6"), now)
    assert len(store) == 100 and store.displaced == 410
    assert ports(store) >= set(range(10))
    store.put(stamped({"port": 7777}, address="10.0.2.1"), now)  # a newcomer, at once
    for port in range(2000, 2500):  # and the flood goes on
        store.put(stamped({"port": port}, address="10.6.6.6"), now)
    assert 7777 in ports(store) and ports(store) >= set(range(10))
    assert store.share_of("10.6.6.6") == 89


def test_records_heard_again_outlast_a_flood_from_their_own_address():
    store = RecordStore(max_records=50, clock=Clock())
    now = store.clock()
    for port in range(5):
        store.put(stamped({"port": port}), now)
        store.put(stamped({"port": port}), now)  # announced again: established
    for port in range(100, 1000):
        store.put(stamped({"port": port}), now)
    assert ports(store) >= set(range(5)) and len(store) == 50


def test_a_refresh_never_displaces_and_a_record_too_large_displaces_nothing():
    store = RecordStore(max_records=10, max_bytes=2000, clock=Clock())
    now = store.clock()
    for port in range(5):
        store.put(stamped({"port": port}), now)
    before = ports(store)
    with pytest.raises(Exception, match="bytes"):
        store.put(stamped({"port": 1, "pad": "x" * 1900}), now)
    with pytest.raises(Exception, match="bytes"):
        store.put(stamped({"port": 99, "pad": "x" * 5000}), now)
    assert ports(store) == before and store.displaced == 0


def test_shares_choose_the_largest_source_and_its_once_heard_records_first():
    shares = Shares()
    shares.add("a1", "A")
    shares.add("a2", "A", heard_before=True)
    shares.add("a3", "A")
    shares.add("b1", "B")
    assert shares.victim("C") == "a1"  # A holds most; a1 is its oldest heard once
    shares.heard_again("a1", "A")
    assert shares.victim("C") == "a3"
    shares.remove("a3", "A")
    shares.remove("a2", "A")
    assert shares.victim("B") == "b1"  # a tie: B makes room from its own
    shares.remove("a1", "A")
    shares.remove("b1", "B")
    assert shares.victim("B") is None and len(shares) == 0


def test_sources_are_addresses_and_ipv6_64s():
    assert source_of("10.1.2.3") == "10.1.2.3"
    assert source_of("2001:db8:1:2:3::4") == source_of("2001:db8:1:2:ffff::9")
    assert source_of("2001:db8:1:2::1") != source_of("2001:db8:1:3::1")


def test_restored_records_count_as_heard_again():
    clock = Clock()
    first = RecordStore(max_records=3, clock=clock)
    for port in range(3):
        first.put(stamped({"port": port}, heard=clock.now), clock.now)
    second = RecordStore(max_records=3, clock=clock)
    second.load(first.json_body())
    second.put(stamped({"port": 10}), clock.now)  # displaces one restored record...
    second.put(stamped({"port": 11}), clock.now)  # ...then its own newcomer, heard once
    assert ports(second) == {1, 2, 11}


# ---------------------------------------------------------------------------- order


def test_values_sort_numbers_then_text_then_missing():
    values = [None, "b", "A", 10, -3.5, 2, 2.5, [1], True, 2**70, -(2**70)]
    ordered = sorted(values, key=sort_text)
    # Text by what the page shows ("[1]", "a", "b", "true"), case-insensitively.
    assert ordered == [-(2**70), -3.5, 2, 2.5, 10, 2**70, [1], "A", "b", True, None]


# ---------------------------------------------------------------------------- pages


@pytest.fixture
def big_store() -> RecordStore:
    store = RecordStore(clock=Clock())
    now = store.clock()
    for port in range(1, 1001):
        kind = "hashtable" if port % 10 else "chirp"
        owner = "José" if port == 500 else f"owner-{port % 7}"
        store.put(stamped({"type": kind, "port": port, "owner": owner}), now)
    return store


def run(job, budget: float = float("inf")):
    while not job.step(budget):
        pass
    return job.listing()


def test_the_default_order_is_served_a_page_at_a_time_from_the_index(big_store):
    listing = run(IndexedPage(big_store, PageQuery(page=2)))
    assert listing.matched == listing.total == 1000 and listing.pages == 10
    assert [r["port"] for _, r in listing.rows][:3] == [1, 2, 3]  # after the 100 chirps
    assert listing.first_row == 101 and len(listing.rows) == PAGE_ROWS
    last = run(IndexedPage(big_store, PageQuery(page=99)))  # past the end: the last page
    assert last.page == 10 and len(last.rows) == 100
    assert dict(last.types) == {"chirp": 100, "hashtable": 900}


def test_scanned_pages_sort_filter_and_read_current_values(big_store):
    listing = run(PageJob(big_store, PageQuery(sort="port", page=3)))
    assert [r["port"] for _, r in listing.rows] == list(range(201, 301))
    chirps = run(PageJob(big_store, PageQuery(type="chirp", sort="port")))
    assert chirps.matched == 100 and [r["port"] for _, r in chirps.rows][:2] == [10, 20]
    texts = run(PageJob(big_store, PageQuery(text="OWNER-3")))
    assert texts.matched == len([p for p in range(1, 1001) if p % 7 == 3 and p != 500])
    accented = run(PageJob(big_store, PageQuery(text="josé")))  # non-ASCII: no byte prefilter
    assert [r["port"] for _, r in accented.rows] == [500]
    job = PageJob(big_store, PageQuery(text="owner-1", sort="port"))
    run(job)
    fresh = {"type": "hashtable", "port": 1, "owner": "owner-1", "project": "fresh"}
    big_store.put(stamped(fresh), START)
    assert job.listing().rows[0][1].get("project") == "fresh"


def test_a_scan_stops_at_its_deadline_and_goes_on_where_it_stopped(big_store):
    scan = QueryScan(big_store, compile_expression('type=="chirp"'))
    steps = 1
    while not scan.step(deadline=3, clock=iter(range(100)).__next__):
        steps += 1  # each step looks at the clock 3 times: 3 slices of records
    assert steps > 5 and len(orjson.loads(scan.body())) == 100


def test_a_scan_skips_records_that_expired_since_it_began():
    clock = Clock()
    store = RecordStore(lifetime=100, clock=clock)
    store.put(stamped({"port": 1}), clock.now)
    scan = QueryScan(store, compile_expression("port == 1"))
    clock.now += 200
    scan.step(float("inf"))
    assert orjson.loads(scan.body()) == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"page": ["0"]}, "not a page number"),
        ({"page": ["two"]}, "not a page number"),
        ({"page": ["²"]}, "not a page number"),
        ({"page": ["9" * 20]}, "not a page number"),
        ({"q": ["x" * 201]}, "longer than 200"),
    ],
)
def test_page_queries_no_one_could_mean_are_refused(params, message):
    with pytest.raises(PageError, match=message):
        PageQuery.parse(params)


def test_deep_pages_of_a_scan_are_refused_and_unknown_sorts_fall_back(big_store):
    with pytest.raises(PageError, match="narrow the filter"):
        PageJob(big_store, PageQuery(sort="port", page=MAX_SCANNED_ROWS // PAGE_ROWS + 1))
    assert PageQuery.parse({"sort": ["<nope>"]}).indexed


# ---------------------------------------------------------------------------- local senders


def test_loopback_senders_are_listed_under_the_network_address_when_serving_it():
    store = RecordStore(clock=Clock())
    Ingest(store, FakeNames(), store.clock, ("192.0.2.7", "catalog-host")).receive(
        orjson.dumps({"type": "t", "port": 9}), "127.0.0.1"
    )
    (entry,) = store.entries()
    assert entry.key == "192.0.2.7:9:catalog-host"


def test_the_network_address_of_a_socket():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        assert network_address(sock) is None  # serves this machine only
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))  # bound, never listening: nothing can connect
        address = network_address(sock)
        assert address is None or not address.startswith("127.")


# ---------------------------------------------------------------------------- peers


def test_the_peer_idle_for_longest_makes_room_and_busy_peers_never_do():
    peers = Peers()
    made = []
    for n in range(4):
        sock = socket.socket()
        made.append(Peer(sock, "127.0.0.1", n, n + 2))
        peers.add(made[-1])
    try:
        peers.set_state(made[0], RENDERING)
        peers.set_state(made[1], WRITING)
        assert peers.longest_idle() is made[2]
        peers.set_state(made[2], LINGERING)  # idle again, from now
        assert peers.longest_idle() is made[3]
        peers.remove(made[3])
        assert peers.longest_idle() is made[2]
        peers.remove(made[2])
        assert peers.longest_idle() is None and len(peers) == 2
    finally:
        for peer in made:
            peer.sock.close()


@pytest.mark.parametrize(
    "text",
    [
        'owner == "José"',
        'owner == "a\\"b" and port > 0',
        '"line\\nbreak" == owner',
        'owner == "owner-3" and type == "hashtable"',
        'owner == "owner-3" or owner == "José"',
        'not (owner == "owner-3")',
    ],
)
def test_a_filtered_query_answers_what_evaluating_every_record_answers(text):
    """Its byte test first (field == "text" needs the JSON of "text") changes nothing."""
    store = RecordStore(clock=Clock())
    for port, owner in enumerate(["José", 'a"b', "line\nbreak", "owner-3", "Owner-3", "x"]):
        for kind, offset in (("hashtable", 0), ("chirp", 100)):
            store.put(stamped({"type": kind, "port": port + offset, "owner": owner}), START)
    expression = compile_expression(text)
    scan = QueryScan(store, expression)
    scan.step(float("inf"))
    expected = [e.data for e in store.entries() if expression.matches(orjson.loads(e.data))]
    assert expected and orjson.loads(scan.body()) == [orjson.loads(d) for d in expected]
