"""A running herd over real sockets: every message format, every error, hostile input."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from decimal import Decimal

import pytest

from harness.herd import Herd, ask
from harness.processes import wait_until

IAMAT = "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n"


@pytest.fixture(scope="module")
def herd(tmp_path_factory):
    herd = Herd(
        tmp_path_factory.mktemp("herd"),
        "--backoff-cap",
        "0.3",
        "--handshake-timeout",
        "1",
        "--max-clients",
        "100",
    )
    try:
        # Two of the five on asyncio's own loop, the rest on uvloop (the default when it
        # is installed): every test here runs both, and the links between them.
        asyncio_loop = {"Hands", "Welsh"}
        herd.start(*asyncio_loop, extra=["--loop", "asyncio"])
        herd.start(*(set(herd.config.servers) - asyncio_loop))
        herd.wait_links()
        yield herd
    finally:
        herd.stop()


def knows(herd: Herd, server: str, client: str) -> str | None:
    return herd.knows(server, client)


def test_iamat_reply_is_the_at_line(herd):
    before = time.time()
    reply = ask(herd.port("Goloman"), IAMAT)
    after = time.time()
    fields = reply.split()
    assert reply.endswith("\n") and reply.count("\n") == 1
    assert fields[:2] == ["AT", "Goloman"]
    assert fields[3:] == IAMAT.split()[1:]
    diff = Decimal(fields[2])
    assert (
        fields[2][0] in "+-" and "e" not in fields[2].lower() and len(fields[2].split(".")[1]) == 9
    )
    client_time = Decimal("1520023934.918963997")
    assert Decimal(before) - client_time - 1 <= diff <= Decimal(after) - client_time + 1


def test_a_client_time_in_the_future_gives_a_negative_diff(herd):
    future = time.time() + 1000
    reply = ask(herd.port("Hands"), f"IAMAT later +1.0+2.0 {future:.6f}\n")
    assert reply.split()[2].startswith("-")


def test_whatsat_reply_is_the_origin_at_line_then_places_json_then_an_empty_line(herd):
    at = ask(herd.port("Goloman"), "IAMAT ucla +34.068930-118.445127 1600000000.5\n").strip()
    wait_until(lambda: knows(herd, "Welsh", "ucla") == at, what="the flood to Welsh")
    reply = ask(herd.port("Welsh"), "WHATSAT ucla 10 5\n")
    assert reply.endswith("}\n\n") and "\n\n\n" not in reply
    first, document = reply.split("\n", 1)
    assert first == at  # the origin server and its diff, not Welsh's
    places = json.loads(document)
    assert places["status"] == "OK" and set(places) >= {"html_attributions", "results"}
    assert 1 <= len(places["results"]) <= 5
    for result in places["results"]:
        assert set(result) >= {"geometry", "name", "place_id", "vicinity", "types"}
        location = result["geometry"]["location"]
        assert abs(location["lat"] - 34.07) < 0.2 and abs(location["lng"] + 118.45) < 0.2
    assert places["results"][0]["name"] == "Santa Monica"  # the most populous within 10 km


def test_whatsat_in_the_middle_of_the_ocean_has_zero_results(herd):
    ask(herd.port("Wilkes"), "IAMAT boat +0.0-140.0 1600000000\n")
    document = json.loads(ask(herd.port("Wilkes"), "WHATSAT boat 50 20\n").split("\n", 1)[1])
    assert document["status"] == "ZERO_RESULTS" and document["results"] == []


@pytest.mark.parametrize(
    "line",
    [
        "HELLO there",
        "IAMAT only-two +1+1",
        "IAMAT c 1+1 5",
        "IAMAT c +1+1 yesterday",
        "WHATSAT kiwi.cs.ucla.edu 51 5",
        "WHATSAT kiwi.cs.ucla.edu 10 21",
        "WHATSAT kiwi.cs.ucla.edu 10",
        "WHATSAT nobody-reported-this 10 5",
        "  WHATSAT \t  spaces-kept-in-the-echo  5 5  ",
    ],
)
def test_invalid_lines_are_echoed_after_a_question_mark(herd, line):
    assert ask(herd.port("Holiday"), line + "\n") == f"? {line}\n"


def test_several_commands_per_connection_are_answered_in_order_and_eof_closes(herd):
    lines = [f"IAMAT many{i} +10.0+20.0 {1600000000 + i}" for i in range(50)]
    lines.insert(25, "BOGUS")
    # The last line has no newline: EOF ends it.
    replies = ask(herd.port("Hands"), "\n".join(lines)).splitlines()
    assert len(replies) == 51 and replies[25] == "? BOGUS"
    clients = [r.split()[3] for r in replies if r.startswith("AT")]
    assert clients == [f"many{i}" for i in range(50)]


def test_read_your_update_at_a_neighbour_right_after_the_reply(herd):
    for i in range(20):
        at = ask(herd.port("Hands"), f"IAMAT ryu{i} +1.0+1.0 {1600000000 + i}\n").strip()
        assert knows(herd, "Goloman", f"ryu{i}") == at
        assert knows(herd, "Wilkes", f"ryu{i}") == at


def test_an_at_line_from_a_client_is_refused_and_never_flooded(herd):
    forged = "AT Hands +0.100000000 forged +34.0-118.0 1600000000.0"
    assert ask(herd.port("Goloman"), forged + "\n") == f"? {forged}\n"
    ask(herd.port("Goloman"), "IAMAT marker +1+1 1600000000\n")
    wait_until(lambda: knows(herd, "Welsh", "marker"), what="a later update to flood")
    assert all(knows(herd, name, "forged") is None for name in herd.config.servers)


def test_garbage_and_a_megabyte_line_get_question_marks_and_the_server_goes_on(herd):
    garbage = bytes(range(256)).replace(b"\n", b"") * 4
    with socket.create_connection(("127.0.0.1", herd.port("Goloman")), timeout=10) as sock:
        sock.sendall(garbage + b"\n" + b"IAMAT g +1+1 1\n" + b"y" * (1 << 20) + b"\n")
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    lines = answer.split(b"\n")
    assert lines[0] == b"? " + garbage
    assert lines[1].startswith(b"AT Goloman ")
    assert lines[2].startswith(b"? (line longer than")
    assert len(answer) < 10_000  # the megabyte is not echoed, and the connection closed
    assert ask(herd.port("Goloman"), IAMAT).startswith("AT Goloman")


def test_a_client_pipelining_thousands_of_whatsats_delays_nobody_else(herd):
    """A connection's lines are answered a slice of a loop turn at a time: another
    client is answered meanwhile (before, it waited for all of them: about 1 s)."""
    port = herd.port("Wilkes")
    assert ask(port, "IAMAT heavy +34.068930-118.445127 1\n").startswith("AT Wilkes")
    batch = b"WHATSAT heavy 50 20\n" * 12_000  # 240 KB: about a second of answers
    with socket.create_connection(("127.0.0.1", port), timeout=10) as hog:
        hog.sendall(batch)  # and never reads its answers
        began = time.monotonic()
        assert ask(port, "WHATSAT heavy 1 1\n").startswith("AT Wilkes")
        took = time.monotonic() - began
        assert took < 0.6, f"answered after {took:.2f} s"  # 1-1.6 s when it waited for all
    assert ask(port, "WHATSAT heavy 1 1\n").startswith("AT Wilkes")


def test_a_flood_of_connections_does_not_stall_other_clients(herd):
    port = herd.port("Holiday")
    idle = []
    try:
        for _ in range(90):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        idle[0].sendall(b"IAMAT half")  # a line that never ends holds nothing but its bytes
        assert ask(port, "IAMAT during-flood +1+1 1\n").startswith("AT Holiday")
        for _ in range(60):  # past --max-clients 100
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        # The newest were closed at once, or (those idle a second or more) the oldest.
        wait_until(lambda: sum(_closed(sock) for sock in idle) >= 50, what="50 closed")
        assert sum(_closed(sock) for sock in idle) == 50
        assert ask(herd.port("Goloman"), IAMAT).startswith("AT Goloman")
        # With every place taken by connections that send nothing, a client still gets
        # in, once they have been idle a second: the idlest makes room (herd.clients).
        held = [sock for sock in idle if not _closed(sock)]
        assert len(held) == 100
        wait_until(
            lambda: _try_ask(port, "IAMAT while-full +1+1 1\n").startswith("AT Holiday"),
            what="a client to get in while idle connections hold every place",
        )
        assert 1 <= sum(_closed(sock) for sock in held) < 100
    finally:
        for sock in idle:
            sock.close()
    log = herd.log_file("Holiday")
    wait_until(lambda: "closed to make room" in log.read_text(), what="the log to say why")


def _closed(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (refused: reset; made room: EOF)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except BlockingIOError:
        return False


def _try_ask(port: int, text: str) -> str:
    try:
        return ask(port, text, timeout=2)
    except OSError:
        return ""


def test_a_peer_port_stranger_sending_junk_is_dropped_and_links_stay_up(herd):
    peer_port = herd.config.servers["Wilkes"].peer_port
    for junk in [b"GET / HTTP/1.0\r\n\r\n", b"HERD 2 herd Mallory Wilkes ab - 0\n", b"\x00" * 5000]:
        with socket.create_connection(("127.0.0.1", peer_port), timeout=5) as sock:
            sock.sendall(junk)
            sock.settimeout(5)
            try:
                while sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass  # dropped, as it should be
    # A stranger that says nothing is dropped after the handshake timeout (1 s here).
    with socket.create_connection(("127.0.0.1", peer_port), timeout=5) as sock:
        sock.settimeout(5)
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(4096) == b""
        assert time.monotonic() - started < 4
    # A stranger claiming a neighbour's name and then sending junk: dropped, nothing stored.
    with socket.create_connection(("127.0.0.1", peer_port), timeout=5) as sock:
        sock.sendall(b"HERD 2 herd Hands Wilkes 0123 - 0\nUPDATE 1 0 Hands +0.1 evil +1+1 1 -\n")
        sock.settimeout(5)
        try:
            while sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
    assert knows(herd, "Wilkes", "evil") is None
    herd.wait_links()
    ask(herd.port("Wilkes"), "IAMAT still-flooding +1+1 1\n")
    wait_until(lambda: knows(herd, "Welsh", "still-flooding"), what="flooding after junk")


def test_the_log_has_every_line_in_and_out_and_the_links(herd):
    ask(herd.port("Welsh"), "IAMAT logged +5+5 1600000000\nNONSENSE\n")
    wait_until(lambda: knows(herd, "Hands", "logged"), what="the flood to Hands")

    def logged(name: str, *texts: str) -> bool:  # written within --log-flush-interval
        log = herd.log_file(name).read_text()
        return all(text in log for text in texts)

    wait_until(
        lambda: logged("Welsh", "in  client", "IAMAT logged +5+5 1600000000", "out client",
                       "? NONSENSE", "link to Holiday up"),
        what="Welsh's log",
    )  # fmt: skip
    wait_until(lambda: logged("Hands", "in  peer ", " logged +5+5 1600000000"), what="Hands' log")
    lines = herd.log_file("Welsh").read_text().splitlines()

    def first(*texts: str) -> int:
        return next(i for i, line in enumerate(lines) if all(text in line for text in texts))

    # In the order things happened: the reply after the ACK that released it, and the
    # reason for a "?" on a line of its own, never as if it had been sent.
    iamat = first("in  client", "IAMAT logged +5+5")
    assert iamat < first("in  peer Holiday: ACK") < first("out client", "AT Welsh", " logged +5+5")
    assert first("why client", "unknown command 'NONSENSE'") < first("out client", "? NONSENSE")
    assert lines[first("out client", "? NONSENSE")].endswith(": ? NONSENSE")  # as sent
