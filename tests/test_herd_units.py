"""The herd's sans-IO parts without a network: messages, the table, the peer protocol, places, config."""

from __future__ import annotations

import asyncio
import random
import time
from decimal import Decimal

import pytest

import herd.clients
from herd.clients import ClientProtocol
from herd.config import ConfigError, load_config, parse_config
from herd.locations import Location, LocationTable, TableFull
from herd.messages import (
    At,
    IAmAt,
    Invalid,
    WhatsAt,
    format_diff,
    invalid_reply,
    parse_at_fields,
    parse_client_line,
    whatsat_reply,
)
from herd.options import Options
from herd.peering import (
    BadUpdate,
    Hello,
    Link,
    ProtocolError,
    fanout,
    parse_hello,
)
from herd.places import Place, PlaceIndex, distance_km
from herd.replies import AckWaiters, PendingReply
from herd.server import HerdServer
from herd.traffic import TrafficLog
from netkit.room import IdleOrder

# ---- client messages ------------------------------------------------------------------


def test_iamat_parses_the_assignment_example_with_any_ascii_whitespace():
    line = b"\t IAMAT  kiwi.cs.ucla.edu\x0b+34.068930-118.445127\x0c1520023934.918963997 \r"
    command = parse_client_line(line)
    assert command == IAmAt(
        "kiwi.cs.ucla.edu",
        "+34.068930-118.445127",
        "1520023934.918963997",
        Decimal("1520023934.918963997"),
        34.06893,
        -118.445127,
    )


def test_a_unicode_space_is_part_of_a_client_id():
    command = parse_client_line("IAMAT a\u00a0b +1+2 3".encode())
    assert command.client == "a\u00a0b"


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"   ",
        b"iamat kiwi +34-118 1",  # commands are case-sensitive
        b"IAMAT kiwi +34.1-118.2",
        b"IAMAT kiwi +34.1-118.2 1 extra",
        b"IAMAT kiwi 34.1-118.2 1",  # no sign before latitude
        b"IAMAT kiwi +34.1118.2 1",  # one number
        b"IAMAT kiwi +91.0-118.2 1",  # latitude out of range
        b"IAMAT kiwi +34.0-181.0 1",  # longitude out of range
        b"IAMAT kiwi +34.0-118.0 1e9",  # exponent
        b"IAMAT kiwi +34.0-118.0 nan",
        b"IAMAT kiwi +34.0-118.0 12:00",
        b"IAMAT \xff\xfe +34.0-118.0 1",  # not UTF-8
        b"WHATSAT kiwi 10",
        b"WHATSAT kiwi 51 5",  # radius over 50 km
        b"WHATSAT kiwi 50.0000000000000001 5",  # over, though float() makes it 50.0
        b"IAMAT kiwi +90.0000000000000001+0 1",  # likewise over 90
        b"IAMAT kiwi +0+180.00000000000001 1",  # and over 180
        b"WHATSAT kiwi -1 5",
        b"WHATSAT kiwi 10 21",  # bound over 20
        b"WHATSAT kiwi 10 2.5",
        b"WHATSAT kiwi ten 5",
        b"AT Goloman +0.1 kiwi +34-118 1",  # peers' business, not a client's
        b"IAMAT " + b"x" * 300 + b" +1+1 1",  # client ID over 256 bytes
        b"IAMAT kiwi +1." + b"1" * 260 + b"+1 1",  # location over 256 bytes
        b"IAMAT kiwi +1+1 1." + b"1" * 260,  # time over 256 bytes
        b"IAMAT kiwi +1+1 1" + b"0" * 20,  # 21 digits before the point
        # Digits are ASCII digits: int() and Decimal() would take any script's.
        "WHATSAT kiwi \u0665 5".encode(),
        "WHATSAT kiwi 10 \u0665".encode(),
        "IAMAT kiwi +\u0663\u0664-118 1".encode(),
        "IAMAT kiwi +34-118 \u0661\u0666".encode(),
        "IAMAT kiwi +34-118 \uff11".encode(),  # a fullwidth 1
    ],
)
def test_invalid_lines_are_rejected(line):
    with pytest.raises(Invalid):
        parse_client_line(line)


def test_whatsat_bounds_are_inclusive():
    """ "radius at most 50 (km), bound at most 20 (items)": 0 is in range too."""
    assert parse_client_line(b"WHATSAT kiwi 50 20") == WhatsAt("kiwi", 50.0, 20)
    assert parse_client_line(b"WHATSAT kiwi 0.5 1") == WhatsAt("kiwi", 0.5, 1)
    assert parse_client_line(b"WHATSAT kiwi 0 0") == WhatsAt("kiwi", 0.0, 0)
    assert parse_client_line(b"IAMAT kiwi -90.000+180.0 1").latitude == -90.0


def test_numbers_may_have_leading_zeros():
    assert parse_client_line(b"WHATSAT kiwi 0010 005") == WhatsAt("kiwi", 10.0, 5)
    iamat = parse_client_line(b"IAMAT kiwi +034.5-075.25 1")  # ISO 6709's three-digit longitude
    assert (iamat.latitude, iamat.longitude) == (34.5, -75.25)
    for line in (b"WHATSAT kiwi 0051 5", b"WHATSAT kiwi 10 0021", b"IAMAT kiwi +091-075 1"):
        with pytest.raises(Invalid):
            parse_client_line(line)


def test_decimals_are_taken_as_a_python_clients_float_writes_and_reads_them():
    """A radius or time may be signed, end at its point or begin with it, as float()
    accepts; a count is a whole number, signed or not. Never an exponent."""
    assert parse_client_line(b"WHATSAT kiwi +10 +5") == WhatsAt("kiwi", 10.0, 5)
    assert parse_client_line(b"WHATSAT kiwi 10. 5") == WhatsAt("kiwi", 10.0, 5)
    assert parse_client_line(b"WHATSAT kiwi .5 5") == WhatsAt("kiwi", 0.5, 5)
    for time_text in ("1520023934.", ".5", "+.5", "-1."):
        at = parse_client_line(f"IAMAT kiwi +1+1 {time_text}".encode())
        assert at.time_text == time_text and at.time == Decimal(time_text)
    for line in (b"WHATSAT kiwi 1e1 5", b"WHATSAT kiwi . 5", b"WHATSAT kiwi + 5",
                 b"WHATSAT kiwi 10 5.0", b"IAMAT kiwi +1+1 .", b"IAMAT kiwi +1+1 +"):  # fmt: skip
        with pytest.raises(Invalid):
            parse_client_line(line)


def test_a_difference_of_nothing_is_never_negative_zero():
    assert format_diff(1000, Decimal("0.0000010004")) == "+0.000000000"  # -0.4 ns, rounded


def test_fractions_of_any_length_within_a_field_are_exact():
    """The spec bounds no digits; a field's 256 bytes do. Times stay exact."""
    iamat = parse_client_line(b"IAMAT e4 +34.068930000000000000000001-118.445127 1." + b"0" * 200)
    assert (iamat.latitude, iamat.longitude) == (34.06893, -118.445127)
    late = parse_client_line(b"IAMAT e4 +1+1 1.000000000" + b"0" * 190 + b"1")
    assert format_diff(1_000_000_001, late.time) == "+0.000000001"  # 1.000000001 - 1.0...01
    assert parse_client_line(b"WHATSAT e4 49." + b"9" * 100 + b" 1").radius_km == 50.0  # in range
    with pytest.raises(Invalid):
        parse_client_line(b"WHATSAT e4 50." + b"0" * 100 + b"1 1")


def test_the_at_line_of_any_valid_time_parses_back_for_the_peers():
    """A time of 20 integer digits makes a difference of 21: what a server
    replies with, its neighbours must take (else one client line cut a link)."""
    for time_text in ("-99999999999999999999", "99999999999999999999.999999999"):
        at = parse_client_line(f"IAMAT x +1+1 {time_text}".encode())
        diff = format_diff(1_800_000_000_000_000_000, at.time)
        parsed = parse_at_fields(["Goloman", diff, "x", "+1+1", time_text])
        assert parsed.diff == diff


@pytest.mark.parametrize(
    ("received_ns", "client", "expected"),
    [
        (1520023935182837383, "1520023934.918963997", "+0.263873386"),
        (1520023934918843997, "1520023934.918963997", "-0.000120000"),
        (1520023934918963997, "1520023934.918963997", "+0.000000000"),
        (5, "0.000000000000001", "+0.000000005"),  # rounded to the nanosecond, never 5e-9
        (0, "99999999999999999999.5", "-99999999999999999999.500000000"),
    ],
)
def test_diff_is_signed_fixed_point(received_ns, client, expected):
    assert format_diff(received_ns, Decimal(client)) == expected


def test_whatsat_reply_squeezes_newlines_and_ends_with_an_empty_line():
    reply = whatsat_reply("AT x +0.1 c +1+1 1", '{\n\n\n"a": 1\n}\n\n')
    assert reply == b'AT x +0.1 c +1+1 1\n{\n"a": 1\n}\n\n'
    assert invalid_reply(b"FOO  bar\r") == b"? FOO  bar\r\n"


def test_at_fields_parse_back():
    at = parse_at_fields(["Hands", "+0.500000000", "c", "+1.5-2.5", "10.25"])
    assert at.line == "AT Hands +0.500000000 c +1.5-2.5 10.25"
    with pytest.raises(Invalid):
        parse_at_fields(["Hands", "+0.5", "c", "+1.5-2.5", "10.25"])  # diff not to the ns


# ---- the table: convergence and change order ---------------------------------------------


def location(client: str, time: str, server: str = "A", received_ns: int = 0, place="+1+1"):
    at = At(server, "+0.000000000", client, place, time, Decimal(time), 1.0, 1.0)
    return Location(at, received_ns)


def test_newest_by_client_time_wins_in_any_order_of_arrival():
    updates = [
        location("c", "100", "A", 5),
        location("c", "200", "B", 1),
        location("c", "200", "A", 1),  # tie on time and receive time: the name decides
        location("c", "200", "B", 0),
        location("c", "150", "C", 9),
    ]
    winners = set()
    for seed in range(20):
        shuffled = updates[:]
        random.Random(seed).shuffle(shuffled)
        table = LocationTable()
        for update in shuffled:
            table.offer(Location(update.at, update.received_ns))
        winner = table.get("c")
        winners.add((winner.at.server, winner.at.time_text, winner.received_ns))
    assert winners == {("B", "200", 1)}


def test_an_older_or_repeated_location_is_no_change():
    table = LocationTable()
    assert table.offer(location("c", "2"))
    assert not table.offer(location("c", "1"))
    assert not table.offer(location("c", "2"))
    assert table.lsn == 1


def test_changed_since_walks_back_only_over_new_changes_in_change_order():
    table = LocationTable()
    for client in "abcd":
        table.offer(location(client, "1"))
    table.offer(location("b", "2"))  # b moves to the end with lsn 5
    assert [(x.client, x.lsn) for x in table.changed_since(0)] == [
        ("a", 1),
        ("c", 3),
        ("d", 4),
        ("b", 5),
    ]
    assert [x.client for x in table.changed_since(3)] == ["d", "b"]
    assert table.changed_since(5) == []


def test_a_full_table_refuses_new_clients_but_updates_known_ones():
    table = LocationTable(max_clients=1)
    table.offer(location("a", "1"))
    with pytest.raises(TableFull):
        table.offer(location("b", "1"))
    assert table.offer(location("a", "2"))


# ---- the peer protocol ------------------------------------------------------------------


def test_hello_round_trip_and_rejections():
    hello = Hello("herd", "Goloman", "Hands", "ab12", "-", 0)
    assert parse_hello(hello.line().rstrip()) == hello
    # HERD 1: a server from before UPDATE carried its fanout.
    for bad in [b"HERD 1 herd a b ab - 0", b"HELLO", b"HERD 2 herd a b - - 0", b"\xff"]:
        with pytest.raises(ProtocolError):
            parse_hello(bad)


def test_a_link_streams_changes_in_order_resumes_and_never_echoes():
    sender, receiver = LocationTable(), LocationTable()
    link = Link("B", "e", resume_after=0, table_lsn=0)
    back = Link("A", "e", resume_after=0, table_lsn=0)
    for client in "abc":
        sender.offer(location(client, "1"))
    lines = link.outgoing(sender, limit=2)
    assert [line.split()[5] for line in lines] == ["a", "b"]
    lines += link.outgoing(sender, limit=2)
    assert link.outgoing(sender, limit=2) == []
    for line in lines:
        assert back.receive(line.encode(), receiver) is not None
    assert back.ack_line() == b"ACK 3\n"
    assert back.ack_line() is None
    # What the receiver got over this link is not sent back on it...
    reverse = Link("A", "e", resume_after=0, table_lsn=receiver.lsn)
    for x in receiver.locations():
        x.via = reverse
    assert reverse.outgoing(receiver, 10) == []
    # ...and a second link resuming after lsn 2 gets only what came later.
    resumed = Link("B", "e", resume_after=2, table_lsn=sender.lsn)
    assert [line.split()[5] for line in resumed.outgoing(sender, 10)] == ["c"]


def test_a_link_rejects_junk_and_out_of_order_updates():
    table = LocationTable()
    link = Link("B", "e", 0, 0)
    good = b"UPDATE 5 0 Hands +0.000000000 c +1+1 1 -"
    assert link.receive(good, table) is not None
    for junk in [
        good,
        b"UPDATE 6 0 Hands +0.1 c +1+1 1 -",
        b"UPDATE 6 0 Hands +0.000000000 c +1+1 1",  # no fanout
        "UPDATE \u0669 0 Hands +0.000000000 c +1+1 1 -".encode(),  # an Arabic-Indic 9
        b"UPDATEX 6 0 Hands +0.000000000 c +1+1 1 -",
        b"HERD 1",
        b"GARBAGE",
        b"ACK x",
        b"",
    ]:
        with pytest.raises(ProtocolError):
            link.receive(junk, table)


def test_an_update_whose_location_does_not_parse_is_skipped_and_acknowledged():
    """Dropping the link for it would have it sent again on every redial."""
    table = LocationTable()
    link = Link("B", "e", 0, 0)
    for lsn, bad in enumerate(
        [
            b"Hands +0.1 c +1+1 1",  # not fixed point to the nanosecond
            b"Hands +0.000000000 c\td +1+1 1",  # no client sends an ID with a tab
            b"Hands +0.000000000 " + b"x" * 300 + b" +1+1 1",  # client ID too long
            "Hands +0.000000000 {} +1+1 1".format("\u00e9" * 200).encode(),  # in bytes
            b"Hands +0.000000000 c +91+1 1",
        ],
        start=1,
    ):
        with pytest.raises(BadUpdate, match=f"UPDATE {lsn} skipped"):
            link.receive(b"UPDATE %d 0 %s -" % (lsn, bad), table)
        assert link.received_upto == lsn and link.ack_line() == b"ACK %d\n" % lsn
    assert len(table) == 0
    assert link.receive(b"UPDATE 6 0 Hands +0.000000000 c +1+1 1 -", table) is not None


def test_a_fanout_that_does_not_parse_names_nobody_and_the_update_is_stored():
    table = LocationTable()
    link = Link("B", "e", 0, 0)
    for lsn, field in enumerate([b"a,,b", b"-,x", b"x" * 70, b"\x7f"], start=1):
        line = b"UPDATE %d 0 Hands +0.000000000 c%d +1+1 1 %s" % (lsn, lsn, field)
        location = link.receive(line, table)
        assert location is not None and location.covered == frozenset()
        assert link.ack_line() == b"ACK %d\n" % lsn
    assert len(table) == 4


class Waiter:
    """What AckWaiters resolves (a PendingReply in the server)."""

    result = None

    def done(self):
        return self.result is not None

    def set_result(self, value):
        self.result = "done"


def test_ack_waiters_wait_for_every_live_link_that_is_not_lagging():
    a, b = Link("A", "e", 0, 0), Link("B", "e", 0, 0)
    waiters, first, second = AckWaiters(), Waiter(), Waiter()
    waiters.add(1, first, [a, b])
    waiters.add(2, second, [a, b])
    a.acked = 2
    waiters.release([a, b])
    assert not first.done()
    b.acked = 1
    waiters.release([a, b])
    assert first.done() and not second.done()
    waiters.expire(2, [a, b], table_lsn=7)  # b is slow: not waited for until it acks 7
    assert second.done() and b.lagging
    b.receive(b"ACK 7", LocationTable())
    assert not b.lagging


def test_only_an_update_the_sender_took_from_its_client_is_acknowledged_at_once():
    table, link = LocationTable(), Link("Hands", "e", 0, 0)
    link.receive(b"UPDATE 1 0 Wilkes +0.000000000 a +1+1 1 -", table)  # passed on by Hands
    assert link.ack_due and not link.ack_urgent  # may wait (herd.links: LAZY_DELAY)
    link.receive(b"UPDATE 2 0 Hands +0.000000000 b +1+1 1 -", table)  # Hands' own client
    assert link.ack_urgent
    assert link.ack_line() == b"ACK 2\n"  # cumulative: covers the first one too
    assert not (link.ack_due or link.ack_urgent)


def test_updates_carry_any_client_id_a_client_may_use():
    sender, receiver = LocationTable(), LocationTable()
    odd = location("a\u00a0b", "1")  # a Unicode space belongs to the ID (bytes are split)
    sender.offer(odd)
    (line,) = Link("B", "e", 0, 0).outgoing(sender, 10)
    back = Link("A", "e", 0, 0)
    assert back.receive(line.encode(), receiver).at == odd.at
    with pytest.raises(ProtocolError):  # one space apart, as update_line writes them
        back.receive(b"UPDATE  2 0\tHands +0.000000000 c  +1+1 1 -", receiver)


def test_a_repeated_update_changes_nothing_but_a_changed_one_is_checked_in_full():
    table, a, b = LocationTable(), Link("A", "e", 0, 0), Link("B", "e", 0, 0)
    line = b"UPDATE %d 7 Hands +0.000000000 c +1+1 1 -"
    assert a.receive(line % 1, table) is not None
    assert b.receive(line % 1, table) is None  # the same location over another link
    assert table.lsn == 1 and b.ack_due  # still acknowledged
    with pytest.raises(ProtocolError):  # differs in its diff only, which is malformed
        b.receive(b"UPDATE 2 7 Hands +0.0 c +1+1 1 -", table)


def test_changes_a_neighbours_fanout_names_are_held_until_something_else_goes_that_way():
    table = LocationTable()
    to_b = Link("B", "e", 0, 0)
    covered = location("c1", "1")
    covered.covered = frozenset({"B", "C"})  # the sender told us B gets it promptly
    table.offer(covered)
    assert to_b.outgoing(table, 10, hold=True) == []
    assert to_b.holding(table)
    table.offer(location("c2", "1"))  # B is promised this one by nobody: all go, in order
    lines = to_b.outgoing(table, 10, hold=True)
    assert [line.split()[5] for line in lines] == ["c1", "c2"]
    assert not to_b.holding(table)
    late = location("c3", "1")
    late.covered = frozenset({"B"})
    table.offer(late)
    assert to_b.outgoing(table, 10, hold=True) == []
    assert [line.split()[5] for line in to_b.outgoing(table, 10)] == ["c3"]  # the time is up


def test_the_fanout_names_who_gets_a_change_promptly_and_travels_with_it():
    table, sender, receiver = LocationTable(), LocationTable(), LocationTable()
    from_a = Link("A", "e", 0, 0)
    came = location("c", "1")
    came.covered = frozenset({"B", "Mallory"})
    table.offer(came, via=from_a)
    # Not back to A; B as we were told; C, D as we send it; nobody outside the herd.
    assert fanout(came, ["A", "C", "D"], frozenset("ABCDE")) == {"B", "C", "D"}
    mine = location("d", "1")
    sender.offer(mine)
    mine.fanout = fanout(mine, ["B", "C"], frozenset("ABC"))
    (line,) = Link("B", "e", 0, 0).outgoing(sender, 10)
    assert line.endswith(" B,C")
    back = Link("A", "e", 0, 0)
    assert back.receive(line.encode(), receiver).covered == {"B", "C"}


def test_one_deadline_timer_expires_waiters_in_order():
    slow = Link("A", "e", 0, 0)
    waiters, first, second = AckWaiters(), Waiter(), Waiter()
    waiters.add(1, first, [slow], deadline=10.0)
    waiters.add(2, second, [slow], deadline=10.5)
    assert waiters.next_deadline() == 10.0
    waiters.expire_due(9.9, [slow], table_lsn=2)
    assert not first.done() and not slow.lagging
    waiters.expire_due(10.0, [slow], table_lsn=2)
    # The first expired: A is lagging, so the second is not waited for either.
    assert first.done() and second.done() and slow.lagging and waiters.next_deadline() is None


def test_a_neighbour_that_redials_before_its_old_connection_is_gone_resumes_from_its_cursor():
    class Connection:
        dialed, address, link, dropped = False, "127.0.0.1:1", None, None

        def drop(self, why):
            self.dropped = why

    server = HerdServer("Welsh", load_config(), Options(), places=lambda *args: {})
    hello = Hello("herd", "Holiday", "Welsh", "e1", "-", 0)
    old = Connection()
    old.link = server.link_up(old, hello)
    for lsn in (1, 2, 3):
        old.link.receive(
            b"UPDATE %d 0 Holiday +0.000000000 c%d +1+1 1 -" % (lsn, lsn), server.table
        )
    new = Connection()
    new.link = server.link_up(new, hello)  # before the old connection's close was seen
    assert old.dropped and new.link.received_upto == 3
    assert server.hello_for("Holiday").cursor_lsn == 3  # Holiday resumes after 3, not 0
    server.peer_closed(old, "reset")  # noticed late: changes nothing
    assert server.links["Holiday"] is new and server.cursors["Holiday"] == ("e1", 3)


def test_at_start_a_reply_waits_for_a_link_on_its_way_until_that_link_acknowledges():
    """Welsh has just started: its IAMAT's reply waits for Holiday's link, which comes
    up resuming from nothing (Holiday's cursor is for Welsh's previous run), and is
    still waited for until it acknowledges the update, not taken as lagging."""

    class Connection:
        dialed, address, link = False, "127.0.0.1:1", None

    async def scenario() -> None:
        server = HerdServer("Welsh", load_config(), Options(), places=lambda *args: {})
        server.bind_loop(asyncio.get_running_loop())
        server.expect_links()  # Holiday, its one neighbour
        reply = server.handle_client_line(b"IAMAT c +1+1 1", "127.0.0.1:2")
        assert isinstance(reply, PendingReply) and not reply.done()
        connection = Connection()
        connection.link = server.link_up(
            connection, Hello("herd", "Holiday", "Welsh", "e1", "-", 0)
        )
        server.acks_changed()  # say, Holiday's own UPDATE lines arrive before its ACK
        assert not reply.done()
        connection.link.receive(b"ACK 1", server.table)
        server.acks_changed()
        assert reply.done()

    asyncio.run(scenario())


def test_the_traffic_log_stamps_each_turn_and_writes_within_the_interval(tmp_path):
    timers = []
    path = tmp_path / "t.log"
    log = TrafficLog(path, flush_interval=0.01, call_later=lambda d, f: timers.append(f))
    log.info("in  client %s: %s", "1.2.3.4:5", "IAMAT a +1+1 1")
    log.lines("out peer B: ", ["UPDATE 1", "UPDATE 2"])
    log.end_turn()
    assert path.read_text() == "" and len(timers) == 1  # held for the interval
    log.line("in  peer B: ACK 2")
    log.end_turn()
    assert len(timers) == 1  # one timer for everything held
    timers.pop()()
    lines = path.read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == [
        "in  client 1.2.3.4:5: IAMAT a +1+1 1",
        "out peer B: UPDATE 1",
        "out peer B: UPDATE 2",
        "in  peer B: ACK 2",
    ]
    log.line("closing")
    log.close()  # a stop writes what is held
    assert path.read_text().endswith(" closing\n")
    every_turn = TrafficLog(tmp_path / "u.log", flush_interval=0.0)
    every_turn.line("now")
    every_turn.end_turn()
    assert (tmp_path / "u.log").read_text().endswith(" now\n")


def test_the_traffic_log_escapes_what_could_forge_or_hide_a_line(tmp_path):
    path = tmp_path / "t.log"
    log = TrafficLog(path)
    log.line("in  client 1.2.3.4:5: IAMAT a\x00b\r2026-01-01 00:00:00.000 in  peer X: forged\tok")
    log.line("in  client 1.2.3.4:5: IAMAT c\u2028d\x1be[2J\x85 \u00e9")
    log.end_turn()
    lines = path.read_bytes().decode().split("\n")
    assert [line.split(" ", 2)[2] for line in lines[:2]] == [
        "in  client 1.2.3.4:5: IAMAT a\\x00b\\r2026-01-01 00:00:00.000 in  peer X: forged\tok",
        "in  client 1.2.3.4:5: IAMAT c\\u2028d\\x1be[2J\\x85 \u00e9",
    ]
    assert lines[2:] == [""]


# ---- places -----------------------------------------------------------------------------


def test_nearby_is_exactly_the_most_populous_within_the_radius():
    rng = random.Random(1)
    places = [
        Place(
            f"p{i}", rng.uniform(33, 35), rng.uniform(-119.5, -117.5), rng.randrange(10**6), i, ""
        )
        for i in range(3000)
    ]
    # Near the antimeridian and a pole too: the grid wraps and widens there.
    places += [
        Place("east", -16.5, 179.9, 5, 90001, ""),
        Place("west", -16.5, -179.9, 6, 90002, ""),
    ]
    places += [Place("pole", 89.9, 0.0, 7, 90003, ""), Place("far side", 89.9, 179.0, 8, 90004, "")]
    index = PlaceIndex(places)
    for lat, lon, radius, limit in [
        (34.0, -118.4, 50, 20),
        (34.0, -118.4, 3, 20),
        (-16.5, 180.0, 30, 5),
        (89.95, 90.0, 50, 5),
        (34.0, -118.4, 50, 0),  # a bound of 0: none
    ]:
        expected = sorted(
            (p for p in places if distance_km(lat, lon, p.latitude, p.longitude) <= radius),
            key=lambda p: -p.population,
        )[:limit]
        assert [p.name for p in index.nearby(lat, lon, radius, limit)] == [p.name for p in expected]
    answer = index.nearby_search(-16.5, 180.0, 30, 5)
    assert answer["status"] == "OK" and {r["name"] for r in answer["results"]} == {"east", "west"}
    assert set(answer["results"][0]) >= {"geometry", "name", "place_id", "vicinity", "types"}
    assert index.nearby_search(0.0, 0.0, 1, 5)["status"] == "ZERO_RESULTS"


# ---- configuration ----------------------------------------------------------------------


def test_the_shipped_configuration_is_the_assignments_herd():
    config = load_config()
    assert sorted(config.servers) == ["Goloman", "Hands", "Holiday", "Welsh", "Wilkes"]
    assert config.neighbours("Goloman") == ["Hands", "Holiday", "Wilkes"]
    assert config.neighbours("Welsh") == ["Holiday"]
    assert len(config.links) == 6


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "must be an object"),
        ({"servers": {}}, "at least one server"),
        ({"servers": {"a b": {"port": 1}}}, "server name"),
        ({"servers": {"A": {"port": 70000}}}, "port"),
        ({"servers": {"A": {"port": 5}, "B": {"port": 6}}}, "both use port 6"),
        ({"servers": {"A": {"port": 5}}, "links": [["A", "C"]]}, "not a pair"),
        ({"servers": {"A": {"port": 5}}, "links": [["A", "A"]]}, "to itself"),
        ({"servers": {"A": {"port": 5}}, "links": [["A", ["A"]]]}, "not a pair"),
        ({"servers": {"A": {"port": 5}}, "links": [["A", {"A": 1}]]}, "not a pair"),
        ({"servers": {"A": {"port": 5}}, "extra": 1}, "unknown keys"),
    ],
)
def test_bad_configurations_are_explained(document, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(document)


# ---- the client port's protocol ---------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.reading = True
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> None:
        return None

    def set_write_buffer_limits(self, high: int) -> None:
        pass


class SlowServer:
    """Answers every line with ``?``, each taking 2 ms of the test's clock."""

    def __init__(self, now: list[float]) -> None:
        self.now = now
        self.options = Options()

    def client_opened(self, client) -> bool:
        return True

    def client_heard(self, client, now: float) -> None:
        pass

    def handle_client_line(self, line: bytes, peer: str, received_ns: int) -> bytes:
        self.now[0] += 0.002
        return b"? " + line + b"\n"


def test_a_connection_yields_the_loop_after_its_slice_of_a_turn(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(herd.clients, "_clock", lambda: now[0])

    async def scenario() -> tuple[list[int], bool]:
        protocol, transport = ClientProtocol(SlowServer(now)), FakeTransport()
        protocol.connection_made(transport)
        protocol.data_received(b"".join(b"L%d\n" % n for n in range(10)))
        answered = [sum(chunk.count(b"\n") for chunk in transport.written)]
        paused = not transport.reading  # the rest waits: nothing more is read meanwhile
        while sum(chunk.count(b"\n") for chunk in transport.written) < 10:
            await asyncio.sleep(0)  # another loop turn: the other connections' too
            answered.append(sum(chunk.count(b"\n") for chunk in transport.written))
        assert transport.reading  # all answered: read again
        assert b"".join(transport.written) == b"".join(b"? L%d\n" % n for n in range(10))
        return answered, paused

    answered, paused = asyncio.run(scenario())
    assert answered[:2] == [3, 6] and answered[-1] == 10 and paused  # 5 ms: three lines a turn


def test_a_client_is_not_read_while_too_many_of_its_lines_wait_behind_a_reply():
    waiting = PendingReply(b"AT first\n", 1)

    class Waits(SlowServer):
        def handle_client_line(self, line: bytes, peer: str, received_ns: int):
            return waiting if line == b"IAMAT" else b"? " + line + b"\n"

    async def scenario() -> None:
        protocol, transport = ClientProtocol(Waits([0.0])), FakeTransport()
        protocol.connection_made(transport)
        protocol.data_received(b"IAMAT\n" + b"x\n" * (herd.clients.MAX_QUEUED + 5))
        assert not transport.reading and transport.written == []  # bounded, in order
        waiting.set_result(None)  # its neighbours acknowledged: the reply, then the rest
        while b"".join(transport.written).count(b"\n") < herd.clients.MAX_QUEUED + 6:
            await asyncio.sleep(0)
        assert transport.written[0] == b"AT first\n" and transport.reading

    asyncio.run(scenario())


def test_a_line_behind_a_waiting_reply_keeps_the_time_it_arrived():
    """An IAMAT's receive time is when it came, not when the replies before it left."""
    waiting = PendingReply(b"AT first\n", 1)
    seen: dict[bytes, int] = {}

    class Records(SlowServer):
        def handle_client_line(self, line: bytes, peer: str, received_ns: int):
            seen[line] = received_ns
            return waiting if line == b"FIRST" else b"? " + line + b"\n"

    async def scenario() -> None:
        protocol, transport = ClientProtocol(Records([0.0])), FakeTransport()
        protocol.connection_made(transport)
        before = time.time_ns()
        protocol.data_received(b"FIRST\nSECOND\n")
        arrived = time.time_ns()
        await asyncio.sleep(0.05)  # its neighbours take their time
        waiting.set_result(None)
        while b"".join(transport.written).count(b"\n") < 2:
            await asyncio.sleep(0)
        assert before <= seen[b"SECOND"] <= arrived  # not 50 ms later

    asyncio.run(scenario())


def test_at_max_clients_the_connection_idle_longest_makes_room():
    class Client:
        def __init__(self, idle: bool = True) -> None:
            self._idle = idle

        def idle(self) -> bool:
            return self._idle

    newest, busy, oldest_idle = Client(), Client(idle=False), Client()
    clients: IdleOrder[Client] = IdleOrder()
    for client, heard in ((busy, 5.0), (oldest_idle, 8.0), (newest, 10.0)):
        clients.add(client, heard)
        clients.heard(client, heard)  # each sent a line then
    may_close = Client.idle  # as HerdServer.client_opened asks
    assert clients.idlest(9.5, may_close) is oldest_idle  # a reply waits on the older one
    assert clients.idlest(8.5, may_close) is None  # idle half a second: nobody makes room
    clients.heard(oldest_idle, 11.0)  # it sent something: now the newest is idle longest
    assert clients.idlest(12.0, may_close) is newest
    silent = Client()
    clients.add(silent, 12.0)  # connected, nothing sent yet: while it is young, nobody
    assert clients.idlest(12.1, may_close) is None  # goes (the newcomer is refused);
    assert clients.idlest(12.5, may_close) is silent  # then it goes first
