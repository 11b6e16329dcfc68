"""The hash table server's scheduling, sans-IO (hashtable.scheduler): no sockets, no clock but a fake one."""

from __future__ import annotations

import orjson
import pytest

import hashtable.scheduler as scheduler_module
from hashtable.request import Outcome, Request
from hashtable.scheduler import READ, WRITE, Client, Limits, Phase, Scheduler
from hashtable.table import Table


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table() -> Table:
    return Table({f"k{n}": n for n in range(50)})


def make(table: Table, **limits) -> tuple[Scheduler, Clock]:
    def start(request: Request):
        if request.method == "lookup":
            return table.lookup(request.key)
        if request.method == "insert":
            return table.insert(request.key, request.value)
        if request.method == "scan":
            return table.scan(request.regex, 60.0)
        if request.method == "size":
            return table.size()
        raise AssertionError(request)

    clock = Clock()
    return Scheduler(start, Limits(**limits), clock=clock), clock


def line(**request) -> bytes:
    return orjson.dumps(request)


def replies(client: Client) -> list[dict]:
    out = [orjson.loads(reply) for reply in bytes(client.replies).splitlines()]
    client.replies = bytearray()
    return out


def run_until_idle(scheduler: Scheduler, limit: int = 1000) -> int:
    for turn in range(1, limit + 1):
        scheduler.run()
        if not scheduler.busy:
            return turn
    raise AssertionError("still busy")


def test_each_turn_runs_every_busy_client_and_keeps_each_ones_order(table):
    scheduler, _ = make(table)
    a, b = Client("a"), Client("b")
    scheduler.received(a, [line(method="lookup", key="k1"), line(method="size")])
    scheduler.received(
        b, [line(method="insert", key="new", value=1), line(method="lookup", key="new")]
    )
    replied = scheduler.run()
    assert replied == [a, b]
    assert replies(a) == [{"status": "ok", "result": 1}, {"status": "ok", "result": 50}]
    assert replies(b) == [{"status": "ok", "result": None}, {"status": "ok", "result": 1}]
    assert not scheduler.busy and scheduler.requests == 4


def test_a_client_gets_one_slice_per_turn_then_the_others_run(table, monkeypatch):
    monkeypatch.setattr(scheduler_module, "TURN_SLICE", 0.0)  # one request per turn
    scheduler, _ = make(table)
    slow, quick = Client("slow"), Client("quick")
    scheduler.received(slow, [line(method="size")] * 5)
    scheduler.received(quick, [line(method="size")])
    scheduler.run()
    assert len(replies(slow)) == 1 and len(replies(quick)) == 1
    assert slow in scheduler.busy and quick not in scheduler.busy
    assert run_until_idle(scheduler) == 4


def test_replies_stop_at_the_high_water_mark(table):
    table.insert("big", "x" * 1000)
    scheduler, _ = make(table, high_water=3000)
    hog = Client("hog")
    scheduler.received(hog, [line(method="lookup", key="big")] * 10)
    scheduler.run()
    assert len(replies(hog)) == 3  # the third passed the mark: the rest waits
    hog.queued = 3000  # the socket has not taken them yet: backlogged
    interest = scheduler.interest(hog, wants_write=True, backlogged=True)
    assert interest.events == WRITE and hog not in scheduler.busy  # no reading, no running
    hog.queued = 0
    interest = scheduler.interest(hog, wants_write=False, backlogged=False)
    assert interest.events == 0 and hog in scheduler.busy  # work left: still not reading


def test_a_scan_runs_in_slices_and_the_clients_next_lines_wait_for_it(table, monkeypatch):
    monkeypatch.setattr(scheduler_module, "TURN_SLICE", 0.0)
    scheduler, _ = make(table)
    scanner, other = Client("scanner"), Client("other")
    scheduler.received(scanner, [line(method="scan", regex="^k1"), line(method="size")])
    scheduler.run()
    assert scanner.job is not None and not replies(scanner)
    scheduler.received(other, [line(method="insert", key="k1x", value=0)])
    scheduler.run()
    assert replies(other) == [{"status": "ok", "result": None}]  # served between slices
    run_until_idle(scheduler)
    scan, size = replies(scanner)
    assert sorted(key for key, _ in scan["result"]) == sorted(
        f"k{n}" for n in range(50) if str(n).startswith("1")
    )  # the snapshot: k1x, written during the scan, is not in it
    assert size == {"status": "ok", "result": 51}


def test_scans_past_the_limit_park_first_come_first_served(table, monkeypatch):
    monkeypatch.setattr(scheduler_module, "TURN_SLICE", 0.0)
    scheduler, _ = make(table, max_scans=1)
    first, second, third, reader = (Client(name) for name in ("1", "2", "3", "r"))
    scheduler.received(first, [line(method="scan", regex="k")])
    scheduler.run()
    scheduler.received(second, [line(method="scan", regex="k"), line(method="size")])
    scheduler.received(third, [line(method="scan", regex="k")])
    scheduler.received(reader, [line(method="lookup", key="k3")])
    scheduler.run()
    assert second.parked and third.parked and list(scheduler.parked) == [second, third]
    assert replies(reader) == [{"status": "ok", "result": 3}]  # not held up by the parking
    most = 0
    while scheduler.busy:
        scheduler.run()
        most = max(most, scheduler.jobs)
    assert most == 1  # never two at once
    assert [len(replies(c)) for c in (first, second, third)] == [1, 2, 1]
    assert not scheduler.parked and scheduler.jobs == 0


def test_a_client_that_leaves_frees_its_job_slot_and_its_place_in_line(table, monkeypatch):
    monkeypatch.setattr(scheduler_module, "TURN_SLICE", 0.0)
    scheduler, _ = make(table, max_scans=1)
    first, gone, last = Client("1"), Client("gone"), Client("last")
    scheduler.received(first, [line(method="scan", regex="k")])
    scheduler.run()
    scheduler.received(gone, [line(method="scan", regex="k")])
    scheduler.received(last, [line(method="scan", regex="k")])
    scheduler.run()
    scheduler.left(gone)
    scheduler.left(first)  # its running job ends with it
    assert scheduler.jobs == 0 and last in scheduler.busy  # next in line, past the one gone
    run_until_idle(scheduler)
    assert len(replies(last)) == 1 and not replies(gone)


def test_end_of_input_answers_everything_then_closes(table):
    scheduler, _ = make(table)
    client = Client("c")
    scheduler.received(client, [line(method="size")])
    scheduler.end_of_input(client)
    assert scheduler.interest(client, False, False).close is None  # work left
    scheduler.run()
    assert replies(client) == [{"status": "ok", "result": 50}]
    assert scheduler.interest(client, wants_write=True, backlogged=False) == (WRITE, False, None)
    assert scheduler.interest(client, False, False).close == "peer closed the connection"


def test_a_refused_line_comes_after_the_lines_before_it_then_a_half_close(table):
    scheduler, clock = make(table)
    client = Client("c")
    scheduler.refuse_line(client, [line(method="size")], "line longer than 10 bytes")
    assert client.phase is Phase.REFUSING
    scheduler.received(client, [line(method="size")])  # nothing after it is framed: ignored
    scheduler.run()
    answered, refused = replies(client)
    assert answered == {"status": "ok", "result": 50}
    assert refused["status"] == "invalid" and "closing the connection" in refused["message"]
    interest = scheduler.interest(client, wants_write=False, backlogged=False)
    assert interest.shut_down and interest.events == READ and client.phase is Phase.LINGERING
    assert scheduler.overstayed(client, clock.now + 1, 0, 0, 0) is None
    assert scheduler.overstayed(client, clock.now + 3, 0, 0, 0) == "closed after its last answer"


def test_no_request_before_the_handshake_and_none_from_a_browser(table):
    scheduler, clock = make(table, handshake_timeout=5.0)
    client = Client("c", Phase.HANDSHAKING, since=clock.now)
    assert scheduler.received(client, [line(method="size")]) is None and not client.lines
    assert scheduler.overstayed(client, clock.now + 4, 0, 0, 4) is None
    assert "handshake in 5 s" in scheduler.overstayed(client, clock.now + 6, 0, 0, 6)
    scheduler.authenticated(client)
    assert client.phase is Phase.OPEN
    browser = Client("b")
    assert scheduler.received(browser, [b"POST / HTTP/1.1", line(method="size")]) == (
        "sent an HTTP request"
    )
    assert not browser.lines and browser not in scheduler.busy
    later = Client("l")
    scheduler.received(later, [line(method="size")])
    assert scheduler.received(later, [b"GET / HTTP/1.1"]) is None  # only the first line counts


@pytest.mark.parametrize(
    ("queued", "partial", "silent", "elapsed", "reason"),
    [
        (0, 0, 10, 10, None),
        (0, 5, 61, 61, "sent part of a request, then nothing for 60 s"),
        (100, 0, 0, 61, "did not read its replies for 60 s"),
        (0, 0, 301, 301, "idle for 300 s"),
    ],
)
def test_time_bounds(table, queued, partial, silent, elapsed, reason):
    scheduler, clock = make(table)
    client = Client("c")
    assert scheduler.overstayed(client, clock.now, queued, partial, 0) is None  # starts the clock
    assert scheduler.overstayed(client, clock.now + elapsed, queued, partial, silent) == reason


def test_an_engine_failure_on_a_read_is_answered_and_on_a_mutation_raised(table):
    def start(request: Request) -> Outcome:
        raise RuntimeError("engine bug")

    scheduler = Scheduler(start, Limits())
    reader, writer = Client("r"), Client("w")
    scheduler.received(reader, [line(method="size")])
    scheduler.run()
    assert replies(reader)[0]["error"] == "ServerError"
    scheduler.received(writer, [line(method="insert", key="k", value=1)])
    with pytest.raises(RuntimeError):
        scheduler.run()
