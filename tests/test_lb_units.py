"""lb's sans-IO parts without a network: wire formats, tables, the TS's replies,
and the LS's balancer (matching, ordering, time-outs)."""

from __future__ import annotations

import select
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.processes import free_port
from lb.balancer import Balancer
from lb.cli import SAMPLES
from lb.discovery import TS_TYPE, CatalogWatcher, listed_endpoints, ts_record
from lb.protocol import (
    decode_ts_answer,
    decode_ts_query,
    encode_ts_answer,
    encode_ts_query,
    name_problem,
    shown,
)
from lb.table import DnsTable, TableError, load_table
from lb.tserver import reply
from lb.tslink import (
    CONNECTING,
    DOWN,
    LOOKUP_POLL,
    RESOLVING,
    RETRY_INITIAL,
    STABLE_AFTER,
    UP,
    TsLink,
)
from netkit.security import load_secret

SAMPLE_TS2 = b"www.princeton.edu 128.1.1.4 A\nGOOGLE.com 46.1.3.7 A\n"

host_names = st.from_regex(r"\A[a-zA-Z0-9][a-zA-Z0-9.-]{0,60}\Z")


# Protocol


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        (b"www.princeton.edu", None),
        (b"xn--bcher-kva.example", None),
        ("bücher.example".encode(), None),
        (b"a" * 253, None),
        (b"a" * 254, "longer than 253 bytes"),
        (b"bad\x01name", "contains blanks or control characters"),
        (b"two words", "contains blanks or control characters"),
        ("c1\u0085control".encode(), "contains blanks or control characters"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b"", "empty"),
    ],
)
def test_name_problem(name: bytes, problem: str | None) -> None:
    assert name_problem(name) == problem


def test_shown_escapes_and_truncates_what_it_echoes() -> None:
    assert shown(b"bad\x01\xffname") == b"bad\\x01\\xffname"
    assert shown(b"x" * 100) == b"x" * 64 + b"..."


@given(st.integers(min_value=0, max_value=2**64), host_names)
def test_ts_query_round_trip(query_id: int, name: str) -> None:
    line = encode_ts_query(query_id, name.encode())
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_ts_query(line[:-1]) == (str(query_id).encode(), name.encode())


@given(st.integers(min_value=0, max_value=2**64), host_names)
def test_ts_answer_round_trip(query_id: int, name: str) -> None:
    answer = name.encode() + b" 1.2.3.4 A IN"
    line = encode_ts_answer(str(query_id).encode(), answer)
    assert decode_ts_answer(line[:-1]) == (query_id, answer)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"google.com", (None, b"google.com")),
        (b"  google.com\r", (None, b"google.com")),
        (b"17 google.com", (b"17", b"google.com")),
        (b"x17 google.com", None),
        (b"1 2 3", None),
        (b"1" * 21 + b" google.com", None),
        (b"", None),
    ],
)
def test_decode_ts_query(line: bytes, expected) -> None:
    assert decode_ts_query(line) == expected


@pytest.mark.parametrize("line", [b"", b"17", b"17 ", b"abc GOOGLE.com 1.2.3.4 A IN", b"-1 x"])
def test_decode_ts_answer_rejects_what_is_not_an_answer(line: bytes) -> None:
    assert decode_ts_answer(line) is None


# Tables


def test_sample_tables_load() -> None:
    ts1 = load_table(SAMPLES / "PROJ2-DNSTS1.txt")
    ts2 = load_table(SAMPLES / "PROJ2-DNSTS2.txt")
    assert len(ts1) == len(ts2) == 2
    assert ts1.lookup(b"rutgers.edu") == b"rutgers.edu 172.34.4.6 A IN"
    assert ts2.lookup(b"google.com") == b"GOOGLE.com 46.1.3.7 A IN"


def test_lookup_is_case_insensitive_exact_and_keeps_the_table_spelling() -> None:
    table = DnsTable.parse(SAMPLE_TS2, "t")
    assert table.lookup(b"gOoGlE.CoM") == b"GOOGLE.com 46.1.3.7 A IN"
    assert table.lookup(b"www.google.com") is None  # no suffix match
    assert table.lookup(b"google.co") is None  # no prefix match
    assert table.lookup(b"princeton.edu") is None


def test_table_tolerates_crlf_blank_lines_extra_blanks_and_a_bom() -> None:
    data = b"\xef\xbb\xbf\r\n  amazon.com \t 94.5.6.7  A \r\n\n\nrutgers.edu 172.34.4.6 A"
    table = DnsTable.parse(data, "t")
    assert table.lookup(b"AMAZON.COM") == b"amazon.com 94.5.6.7 A IN"
    assert table.lookup(b"rutgers.edu") == b"rutgers.edu 172.34.4.6 A IN"


def test_first_entry_of_a_repeated_name_wins() -> None:
    table = DnsTable.parse(b"a.com 1.1.1.1 A\nA.COM 2.2.2.2 A\n", "t")
    assert table.lookup(b"a.com") == b"a.com 1.1.1.1 A IN"


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        (b"google.com 46.1.3.7", "expected 'DomainName IPaddress A', found 2 field(s)"),
        (b"google.com 46.1.3.7 A IN", "found 4 field(s)"),
        (b"google.com 46.1.3 A", "'46.1.3' is not an IPv4 address"),
        (b"google.com 46.1.3.7 MX", "record type 'MX' is not A"),
        (b"goo\xffgle.com 46.1.3.7 A", "domain name 'goo\\xffgle.com' is not valid UTF-8"),
    ],
)
def test_malformed_table_line_names_file_and_line(tmp_path, line: bytes, complaint: str) -> None:
    path = tmp_path / "table.txt"
    path.write_bytes(b"amazon.com 94.5.6.7 A\n\n" + line + b"\n")
    with pytest.raises(TableError) as caught:
        load_table(path)
    assert f"{path}, line 3: " in str(caught.value)
    assert complaint in str(caught.value)


def test_missing_table_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(TableError, match=r"cannot read table file .*nope\.txt: No such file"):
        load_table(tmp_path / "nope.txt")


# The TS's replies


def test_ts_reply() -> None:
    table = DnsTable.parse(SAMPLE_TS2, "t")
    assert reply(table, b"42 google.com") == b"42 GOOGLE.com 46.1.3.7 A IN\n"
    assert reply(table, b"google.com\r") == b"GOOGLE.com 46.1.3.7 A IN\n"
    assert reply(table, b"42 nothinghere.com") is None
    assert reply(table, b"what is google.com") is None
    assert reply(table, b"") is None


# Discovery


def test_ts_record_and_which_records_the_ls_uses() -> None:
    record = ts_record(port=5000, project="p", entries=2, interval=60)
    assert record["type"] == TS_TYPE == "dns-ts"
    assert (record["project"], record["port"], record["lifetime"]) == ("p", 5000, 180)
    records = [
        {**record, "address": "127.0.0.1"},
        {**record, "address": "127.0.0.2", "port": 5001},
        {**record, "address": "127.0.0.3", "project": "q"},
        {**record, "address": "127.0.0.4", "type": "hashtable"},
        {**record, "address": "127.0.0.5", "port": "5000"},  # unusable: ignored
    ]
    assert listed_endpoints(records, "p") == ({("127.0.0.1", 5000), ("127.0.0.2", 5001)}, set())


def test_the_ls_lists_only_the_records_its_secret_signed(tmp_path) -> None:
    ours, theirs = (
        load_secret(tmp_path / "ours", create=True),
        load_secret(tmp_path / "theirs", create=True),
    )
    record = ts_record(port=5000, project="p", entries=2, interval=60)
    records = [
        {**ours.sign_record(record), "address": "127.0.0.1"},
        # A copy of our record announced from elsewhere: listed; the handshake tells.
        {**ours.sign_record(record), "address": "127.0.0.9"},
        {**theirs.sign_record(record), "address": "127.0.0.2"},
        {**record, "address": "127.0.0.3"},  # unsigned
        {**ours.sign_record(record), "address": "127.0.0.4", "port": 5001},  # port altered
        {**ours.sign_record(record), "address": "127.0.0.5", "project": "q"},  # not p at all
    ]
    assert listed_endpoints(records, "p", ours.record_signed_by_us) == (
        {("127.0.0.1", 5000), ("127.0.0.9", 5000)},
        {("127.0.0.2", 5000), ("127.0.0.3", 5000), ("127.0.0.4", 5001)},
    )


def test_an_unreachable_catalog_keeps_the_current_tss() -> None:
    watcher = CatalogWatcher("p", 1.0, [("127.0.0.1", free_port())], timeout=0.5)
    try:
        assert watcher.poll() is None  # None: keep what we have; an empty set would drop all
    finally:
        watcher.stop()


# The balancer

TS1, TS2, C1, C2 = "ts1", "ts2", "c1", "c2"


def sent_ids(balancer: Balancer) -> dict[str, list[tuple[int, bytes]]]:
    """What the balancer queued, with TS lines decoded to (id, name)."""
    out = {}
    for peer, data in balancer.take_output().items():
        lines = data.splitlines()
        if peer in (TS1, TS2):
            out[peer] = [(int(i), n) for i, n in (line.split() for line in lines)]
        else:
            out[peer] = lines
    return out


def new_balancer(timeout: float = 5.0) -> Balancer:
    balancer = Balancer(timeout)
    balancer.open_server(TS1)
    balancer.open_server(TS2)
    balancer.open_client(C1)
    balancer.open_client(C2)
    return balancer


def test_each_query_goes_to_every_ts_with_its_own_id() -> None:
    balancer = new_balancer()
    balancer.client_lines(C1, [b"a.com", b"", b"B.com\r"], now=0.0)
    out = sent_ids(balancer)
    assert out[TS1] == out[TS2] == [(1, b"a.com"), (2, b"B.com")]
    assert C1 not in out  # nothing answered yet; the blank line is not a query


def test_first_answer_wins_and_answers_leave_in_query_order() -> None:
    balancer = new_balancer()
    balancer.client_lines(C1, [b"a.com", b"b.com"], now=0.0)
    balancer.take_output()
    balancer.server_lines(TS2, [b"2 B.COM 2.2.2.2 A IN"], now=0.1)
    assert sent_ids(balancer) == {}  # b.com waits for a.com
    balancer.server_lines(TS1, [b"1 a.com 1.1.1.1 A IN", b"2 b.com 9.9.9.9 A IN"], now=0.2)
    assert sent_ids(balancer) == {C1: [b"a.com 1.1.1.1 A IN", b"B.COM 2.2.2.2 A IN"]}
    assert balancer.stats.answered == 2 and balancer.stats.ignored == 1
    assert balancer.unanswered(C1) == 0


def test_time_out_uses_the_clients_spelling_and_a_late_answer_is_dropped() -> None:
    balancer = new_balancer(timeout=1.0)
    balancer.client_lines(C1, [b"GOOGLE.com"], now=0.0)
    assert balancer.next_deadline() == 1.0
    balancer.expire(0.99)
    assert sent_ids(balancer)[TS1] == [(1, b"GOOGLE.com")]
    balancer.expire(1.0)
    assert sent_ids(balancer) == {C1: [b"GOOGLE.com - TIMED OUT"]}
    assert balancer.next_deadline() is None
    # The same name asked again; the frozen TS's answer to the first query arrives:
    balancer.client_lines(C1, [b"google.com"], now=2.0)
    balancer.server_lines(TS2, [b"1 GOOGLE.com 46.1.3.7 A IN"], now=2.1)
    assert C1 not in sent_ids(balancer)
    balancer.server_lines(TS2, [b"2 GOOGLE.com 46.1.3.7 A IN"], now=2.2)
    assert sent_ids(balancer) == {C1: [b"GOOGLE.com 46.1.3.7 A IN"]}


def test_clients_are_independent() -> None:
    balancer = new_balancer(timeout=1.0)
    balancer.client_lines(C1, [b"slow.com"], now=0.0)
    balancer.client_lines(C2, [b"fast.com"], now=0.0)
    balancer.server_lines(TS1, [b"2 fast.com 1.1.1.1 A IN"], now=0.1)
    assert sent_ids(balancer) == {
        TS1: [(1, b"slow.com"), (2, b"fast.com")],
        TS2: [(1, b"slow.com"), (2, b"fast.com")],
        C2: [b"fast.com 1.1.1.1 A IN"],
    }


def test_invalid_names_are_answered_at_once_in_order() -> None:
    balancer = new_balancer()
    balancer.client_lines(C1, [b"bad\x01name", b"ok.com", b"\xff"], now=0.0)
    out = sent_ids(balancer)
    assert out[TS1] == [(2, b"ok.com")]
    assert out[C1] == [
        b"bad\\x01name - ERROR invalid host name: contains blanks or control characters"
    ]
    balancer.server_lines(TS1, [b"2 ok.com 1.1.1.1 A IN"], now=0.1)
    assert sent_ids(balancer)[C1] == [
        b"ok.com 1.1.1.1 A IN",
        b"\\xff - ERROR invalid host name: not valid UTF-8",
    ]
    assert balancer.stats.invalid == 2


def test_a_ts_that_connects_later_gets_the_waiting_queries() -> None:
    balancer = Balancer(5.0)
    balancer.open_client(C1)
    balancer.client_lines(C1, [b"a.com", b"b.com"], now=0.0)
    assert sent_ids(balancer) == {}
    balancer.open_server(TS1)
    assert sent_ids(balancer) == {TS1: [(1, b"a.com"), (2, b"b.com")]}
    balancer.close_server(TS1)
    balancer.client_lines(C1, [b"c.com"], now=0.0)
    assert sent_ids(balancer) == {}


def test_answers_about_another_name_and_garbage_are_ignored() -> None:
    balancer = new_balancer(timeout=1.0)
    balancer.client_lines(C1, [b"a.com"], now=0.0)
    balancer.server_lines(TS1, [b"1 b.com 1.1.1.1 A IN", b"garbage", b"1"], now=0.1)
    balancer.expire(1.0)
    assert sent_ids(balancer)[C1] == [b"a.com - TIMED OUT"]


def test_a_closed_clients_queries_are_forgotten() -> None:
    balancer = new_balancer()
    balancer.client_lines(C1, [b"a.com"], now=0.0)
    balancer.close_client(C1)
    balancer.server_lines(TS1, [b"1 a.com 1.1.1.1 A IN"], now=0.1)
    assert C1 not in sent_ids(balancer)
    assert balancer.next_deadline() is None
    assert balancer.stats.ignored == 1


def test_client_error_comes_after_the_pending_answers() -> None:
    balancer = new_balancer(timeout=1.0)
    balancer.client_lines(C1, [b"a.com"], now=0.0)
    balancer.client_error(C1, b"- ERROR line too long")
    assert C1 not in sent_ids(balancer)
    balancer.expire(1.0)
    assert sent_ids(balancer)[C1] == [b"a.com - TIMED OUT", b"- ERROR line too long"]


known = {f"n{i}.com".encode(): f"N{i}.com 10.0.0.{i} A IN".encode() for i in range(6)}


@settings(max_examples=200, deadline=None)
@given(
    names=st.lists(st.sampled_from([*known, b"gone.com"]), min_size=1, max_size=12),
    events=st.lists(
        st.tuples(
            st.sampled_from(["answer", "tick"]), st.integers(0, 30), st.sampled_from([TS1, TS2])
        ),
        max_size=40,
    ),
)
def test_every_query_gets_one_right_answer_in_order(names, events) -> None:
    """Whatever the interleaving of answers, duplicates, late answers and time
    passing: one line per query, in order, each the right answer or a time-out."""
    balancer = new_balancer(timeout=1.0)
    balancer.client_lines(C1, names, now=0.0)
    balancer.take_output()
    received: list[bytes] = []
    now = 0.0
    for kind, number, server in events:
        if kind == "tick":
            now += number / 20
            balancer.expire(now)
        elif 1 <= number <= len(names) and names[number - 1] in known:
            balancer.server_lines(server, [b"%d %s" % (number, known[names[number - 1]])], now)
        received += balancer.take_output().get(C1, b"").splitlines()
    balancer.expire(now + 1.0)
    received += balancer.take_output().get(C1, b"").splitlines()
    assert len(received) == len(names)
    for name, line in zip(names, received, strict=True):
        assert line in (known.get(name), name + b" - TIMED OUT")


# ---------------------------------------------------------------- TS links


def _link_until(link: TsLink, states: set[str], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while link.state not in states:
        assert time.monotonic() < deadline, f"link stuck in {link.state}"
        time.sleep(LOOKUP_POLL)
        link.connect(time.monotonic())


def test_a_ts_given_by_ip_address_is_connected_at_once() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        link = TsLink("127.0.0.1", listener.getsockname()[1], connect_timeout=5.0)
        link.connect(time.monotonic())
        assert link.state == CONNECTING
        link.close()


def test_a_ts_name_is_looked_up_off_the_loop(monkeypatch) -> None:
    # No DNS server here: a lookup that takes 0.3 s stands in for a slow one.
    real = socket.getaddrinfo

    def slow(host, *args, **kwargs):
        if kwargs.get("flags", 0) & socket.AI_NUMERICHOST:
            return real(host, *args, **kwargs)
        time.sleep(0.3)
        return real("127.0.0.1", *args, **kwargs)  # the name "resolves" to loopback

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        link = TsLink("ts.example", listener.getsockname()[1], connect_timeout=5.0)
        started = time.monotonic()
        link.connect(started)
        assert time.monotonic() - started < 0.1  # the loop was not held
        assert link.state == RESOLVING and link.due <= started + 2 * LOOKUP_POLL
        _link_until(link, {CONNECTING, DOWN})
        assert link.state == CONNECTING  # connecting to the address the lookup gave
        link.close()


def test_a_lookup_that_never_answers_fails_the_attempt_at_the_connect_timeout(
    monkeypatch, caplog
) -> None:
    real = socket.getaddrinfo

    def stuck(host, *args, **kwargs):
        if kwargs.get("flags", 0) & socket.AI_NUMERICHOST:
            return real(host, *args, **kwargs)
        time.sleep(3)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", stuck)
    link = TsLink("ts.example", 9, connect_timeout=0.2)
    link.connect(time.monotonic())
    _link_until(link, {DOWN})
    assert "cannot resolve: no answer in 0.2 s" in caplog.text
    assert link.due > time.monotonic()  # the next attempt is backed off


def _bring_up(link: TsLink, now: float) -> None:
    link.connect(now)
    select.select([], [link.sock], [], 5)
    assert link.finish_connect(now) is None and link.state == UP


def test_the_retry_schedule_restarts_only_once_a_link_has_proved_itself() -> None:
    with socket.create_server(("127.0.0.1", 0), backlog=8) as listener:
        link = TsLink("127.0.0.1", listener.getsockname()[1], connect_timeout=5.0)
        link.backoff.jitter = 0
        _bring_up(link, 0.0)
        link.fail(0.1, "closed at once")  # up, but it proved nothing
        assert link.due == 0.1 + RETRY_INITIAL
        _bring_up(link, 1.0)
        link.fail(1.1, "closed at once again")
        assert link.due == 1.1 + 2 * RETRY_INITIAL  # the schedule goes on
        _bring_up(link, 2.0)
        link.answered()  # it answered a waiting query: the link works
        link.fail(2.5, "went away")
        assert link.due == 2.5 + RETRY_INITIAL
        _bring_up(link, 3.0)
        link.fail(3.1, "closed at once")
        assert link.due == 3.1 + 2 * RETRY_INITIAL
        _bring_up(link, 4.0)
        link.fail(4.0 + STABLE_AFTER, "went away after a long time up")
        assert link.due == 4.0 + STABLE_AFTER + RETRY_INITIAL
        link.close()
