"""The shared toolkit: framing, backoff, addresses, buffered connections."""

from __future__ import annotations

import socket

import pytest

from netkit.addresses import AddressError, parse_address, parse_address_list
from netkit.backoff import Backoff
from netkit.connection import AuthenticationFailed, Closed, Connection, TlsConnection
from netkit.framing import LineFramer, LineTooLong
from netkit.security import load_secret, require_service_name, service_name
from netkit.tls import TlsSession


class TestLineFramer:
    def test_whole_lines_in_one_piece(self):
        assert LineFramer().feed(b"a\nbb\n") == [b"a", b"bb"]

    def test_line_split_across_feeds(self):
        framer = LineFramer()
        assert framer.feed(b'{"method": ') == []
        assert framer.feed(b'"size"}\n{"x"') == [b'{"method": "size"}']
        assert framer.pending == 4
        assert framer.feed(b"}\n") == [b'{"x"}']
        assert framer.pending == 0

    def test_byte_at_a_time(self):
        framer = LineFramer()
        lines = [line for byte in b"one\ntwo\n" for line in framer.feed(bytes([byte]))]
        assert lines == [b"one", b"two"]

    def test_empty_lines_are_kept(self):
        assert LineFramer().feed(b"\n\nx\n") == [b"", b"", b"x"]

    def test_unterminated_line_over_the_bound_is_refused(self):
        framer = LineFramer(max_line=10)
        framer.feed(b"x" * 10)
        with pytest.raises(LineTooLong):
            framer.feed(b"y")

    def test_complete_line_over_the_bound_is_refused(self):
        with pytest.raises(LineTooLong):
            LineFramer(max_line=4).feed(b"12345\n")
        with pytest.raises(LineTooLong):
            LineFramer(max_line=4).feed(b"ok\n12345\n")

    def test_complete_lines_before_an_over_long_one_are_not_lost(self):
        framer = LineFramer(max_line=4)
        with pytest.raises(LineTooLong) as refused:
            framer.feed(b"a\nbb\n12345\nc\n")
        assert refused.value.lines == [b"a", b"bb"]
        framer = LineFramer(max_line=4)
        with pytest.raises(LineTooLong) as refused:
            framer.feed(b"a\nbb\n123456789")
        assert refused.value.lines == [b"a", b"bb"]

    def test_line_at_the_bound_is_accepted(self):
        framer = LineFramer(max_line=4)
        assert framer.feed(b"12") == []
        assert framer.feed(b"34\n") == [b"1234"]

    def test_crlf_is_left_to_the_protocol(self):
        assert LineFramer().feed(b"a\r\n") == [b"a\r"]


class TestBackoff:
    def test_doubles_up_to_the_cap_and_resets(self):
        backoff = Backoff(initial=1, cap=8, jitter=0)
        assert [backoff.next_delay() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
        backoff.reset()
        assert backoff.next_delay() == 1

    def test_jitter_stays_within_its_fraction(self):
        backoff = Backoff(initial=2, cap=2, jitter=0.25)
        assert all(1.5 <= backoff.next_delay() <= 2.5 for _ in range(200))

    def test_many_attempts_do_not_overflow(self):
        backoff = Backoff(initial=1, cap=30, jitter=0)
        for _ in range(5000):
            delay = backoff.next_delay()
        assert delay == 30

    def test_rejects_nonsense(self):
        with pytest.raises(ValueError):
            Backoff(initial=0)
        with pytest.raises(ValueError):
            Backoff(initial=5, cap=1)


class TestAddresses:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("localhost", ("localhost", 9097)),
            ("localhost:9123", ("localhost", 9123)),
            (" 127.0.0.1:1 ", ("127.0.0.1", 1)),
            ("[::1]:8000", ("::1", 8000)),
            ("[::1]", ("::1", 9097)),
            ("::1", ("::1", 9097)),
        ],
    )
    def test_parses(self, text, expected):
        assert parse_address(text, 9097) == expected

    @pytest.mark.parametrize(
        "text",
        [
            "",
            ":80",
            "host:",
            "host:x",
            "host:0",
            "host:65536",
            "[::1",
            "[::1]x",
            "host:\u0668\u0660",
            "::::",
            "[::::]:80",
            "[1:2]",
        ],
    )
    def test_rejects_with_a_message(self, text):
        with pytest.raises(AddressError, match=r"address"):
            parse_address(text, 9097)

    def test_list_skips_empty_items(self):
        assert parse_address_list("a, b:2,,", 9) == [("a", 9), ("b", 2)]

    def test_empty_list_is_an_error(self):
        with pytest.raises(AddressError):
            parse_address_list(" , ", 9)


class TestConnection:
    def test_reads_framed_lines_and_detects_eof(self):
        left, right = socket.socketpair()
        conn = Connection(left, "peer")
        right.sendall(b"one\ntw")
        assert conn.read_lines() == [b"one"]
        right.sendall(b"o\n")
        assert conn.read_lines() == [b"two"]
        assert conn.read_lines() == []  # nothing to read: no block, no error
        right.close()
        with pytest.raises(Closed):
            conn.read_lines()
        conn.close()

    def test_backlog_when_the_peer_does_not_read(self):
        left, right = socket.socketpair()
        conn = Connection(left, "peer", high_water=64 * 1024)
        chunk = b"x" * 65536
        while not conn.backlogged:
            conn.send(chunk)  # never blocks, however much is queued
        assert conn.wants_write
        queued = conn.buffered
        right.recv(1 << 20)
        conn.flush()
        assert conn.buffered < queued
        right.close()
        conn.close()

    def test_send_to_a_closed_peer_raises_closed(self):
        left, right = socket.socketpair()
        conn = Connection(left, "peer")
        right.close()
        with pytest.raises(Closed):
            for _ in range(100):
                conn.send(b"x" * 65536)
        conn.close()


class TestTlsConnectionBothSides:
    """Both ends on the loop's non-blocking sockets (the LS's link to a TS is a client)."""

    @staticmethod
    def pair(tmp_path, server_project="p", client_project="p", client_secret="secret"):
        server_secret = load_secret(tmp_path / "secret", create=True)
        context = server_secret.server_context()
        require_service_name(context, "hashtable", server_project)
        left, right = socket.socketpair()
        server = TlsConnection(left, "client", TlsSession(context, server_side=True))
        client_context = load_secret(tmp_path / client_secret, create=True).client_context()
        session = TlsSession(
            client_context,
            server_side=False,
            server_hostname=service_name("hashtable", client_project),
        )
        return server, TlsConnection(right, "server", session)

    @staticmethod
    def pump(*conns, rounds=20):
        """Reads on every end in turn; returns the lines each got."""
        got = [[] for _ in conns]
        for _ in range(rounds):
            for i, conn in enumerate(conns):
                got[i] += conn.read_lines()
        return got

    def test_a_client_starts_the_handshake_and_lines_flow_both_ways(self, tmp_path):
        server, client = self.pair(tmp_path)
        assert not client.established
        client.start_handshake()
        self.pump(server, client)
        assert server.established and client.established
        client.send(b"7 name\n")
        server.send(b"7 answer\n")
        assert self.pump(server, client) == [[b"7 name"], [b"7 answer"]]

    def test_a_client_of_another_project_hears_why_it_is_refused(self, tmp_path):
        server, client = self.pair(tmp_path, client_project="other")
        client.start_handshake()
        with pytest.raises(AuthenticationFailed, match="another project's server"):
            server.read_lines()
        with pytest.raises(AuthenticationFailed, match="the server serves another project"):
            client.read_lines()  # the alert arrived, not a bare EOF

    def test_a_client_with_another_secret_is_refused(self, tmp_path):
        server, client = self.pair(tmp_path, client_secret="other")
        client.start_handshake()
        server.read_lines()
        with pytest.raises(AuthenticationFailed, match="does not hold our secret"):
            client.read_lines()

    def test_a_plain_text_peer_fails_a_client_s_handshake(self, tmp_path):
        context = load_secret(tmp_path / "secret", create=True).client_context()
        plain, mine = socket.socketpair()
        client = TlsConnection(mine, "server", TlsSession(context, server_side=False))
        client.start_handshake()
        plain.sendall(b"7 forged 6.6.6.6 A IN\n")
        with pytest.raises(AuthenticationFailed, match="does not speak TLS"):
            client.read_lines()  # an error of the handshake, not NotTls (a server's verdict)
        client.close()
        plain.close()
