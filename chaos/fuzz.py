"""Property-based fuzzers (hypothesis) for every server, run as a process of their own:

    python -m chaos.fuzz hashtable PORT [--examples N] [--seed S]
    python -m chaos.fuzz catalog PORT          (UDP updates, TCP port+1 updates, HTTP)
    python -m chaos.fuzz ts PORT --ts 0        (the TS serving chaos.dns table 0)
    python -m chaos.fuzz ls PORT               (an LS over the three chaos.dns TSs)

Each sends random and mutated requests, and checks what comes back against the
documented protocol: every hash table request line gets one well-formed reply
(and what is stored comes back unchanged); the catalog answers every HTTP request
with a status line (never an internal error) and /query.json stays valid JSON
listing a known record; a TS answers exactly the lines that ask for a name of its
table; the LS answers every query line, in order, with the right answer, a
time-out or an error. Exit status 0 when every property held; 1 with the
falsifying example (shrunk) printed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import socket
import ssl
import sys
import zlib
from collections.abc import Callable
from typing import Any

import orjson
import requests
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from chaos import dns
from chaos.wire import LineConn
from harness.processes import wait_until
from hashtable.request import METHODS
from netkit.security import load_secret
from netkit.tls import TlsSession

TIMEOUT = 15.0  # for one reply: generous, the machine is shared and under attack
# A record that must stay listed; on a port of its own, as a record with the same
# address, port and name replaces it (the hostile scenario floods ports 0 to 2999).
PROBE_RECORD = {"type": "chaos-probe", "project": "fuzz", "port": 65002}

# ---------------------------------------------------------------- shared strategies


def _json_leaves(integers: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    return (
        st.none()
        | st.booleans()
        | integers
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20)
    )


def _json_values(leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaf,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=10,
    )


json_leaf = _json_leaves(st.integers())
json_value = _json_values(json_leaf)
# What the table promises to store unchanged: 64-bit integers, finite floats, valid Unicode.
storable = _json_values(_json_leaves(st.integers(min_value=-(2**63), max_value=2**63 - 1)))


def _no_newline(data: bytes) -> bytes:
    return data.replace(b"\n", b" ")


def _encode(obj: object, ascii_only: bool) -> bytes:
    # surrogatepass: a lone surrogate becomes bytes that are not UTF-8, which is fuzz too.
    return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw: st.DrawFn, lines: st.SearchStrategy[bytes]) -> bytes:
    """A valid line with a few bytes flipped, inserted, deleted, or cut short."""
    line = bytearray(draw(lines))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(line)))
        kind = draw(st.sampled_from(("flip", "insert", "delete", "cut")))
        if kind == "flip" and pos < len(line):
            line[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            line[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del line[pos : pos + draw(st.integers(1, 8))]
        else:
            del line[pos:]
    return _no_newline(bytes(line))


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        report_multiple_bugs=False,
    )


# ---------------------------------------------------------------- hash table

fuzz_key = st.text(max_size=20).map(lambda key: "fz:" + key)
valid_request = st.one_of(
    st.builds(lambda k, v: {"method": "insert", "key": k, "value": v}, fuzz_key, json_value),
    st.builds(lambda k: {"method": "lookup", "key": k}, fuzz_key),
    st.builds(lambda k: {"method": "remove", "key": k}, fuzz_key),
    st.builds(lambda r: {"method": "scan", "regex": "^fz:" + r}, st.text(max_size=12)),
    st.just({"method": "size"}),
    st.builds(
        lambda k, v: {"method": "query", "subkey": k, "subvalue": v}, st.text(max_size=8), json_leaf
    ),
)
FIELDS = ("key", "value", "regex", "subkey", "subvalue", "client", "seq", "ack", "other")
any_request = st.builds(
    lambda fields, method: {**fields, "method": method},
    st.dictionaries(st.sampled_from(FIELDS), json_value, max_size=5),
    st.sampled_from(sorted(METHODS)) | json_value,
)
valid_line = st.builds(_encode, valid_request, st.booleans()).map(_no_newline)
request_line = st.one_of(
    valid_line,
    st.builds(_encode, any_request, st.booleans()).map(_no_newline),
    mutated(valid_line),
    st.binary(max_size=300).map(_no_newline),
    st.integers(1, 100_000).map(
        lambda n: b'{"method":"insert","key":"fz:deep","value":' + b"[" * n
    ),
)


def reply_problem(line: bytes) -> str | None:
    """Why ``line`` is not a reply as docs/protocol.md describes one, or None."""
    try:
        reply = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(reply, dict):
        return "not an object"
    status = reply.get("status")
    if status == "ok":
        return None if "result" in reply else "ok without a result"
    if status == "failed":
        # The only failure a request can meet is a missing key; anything else is the server's.
        return None if reply.get("error") == "KeyError" else f"failed with {reply.get('error')}"
    if status == "invalid":
        fine = isinstance(reply.get("message"), str) and isinstance(reply.get("error"), str)
        return None if fine else "invalid without a message"
    return f"unknown status {status!r}"


def fuzz_hashtable(port: int, examples: int, seed_: int) -> None:
    # A connection per example: after a failure its unread replies would be taken
    # for the next example's, and hypothesis would report that instead. Each is
    # authenticated (the server serves nobody else): this fuzzes the protocol.
    tls = load_secret().client_context()

    @_settings(examples)
    @seed(seed_)
    @given(st.lists(request_line, min_size=1, max_size=8))
    def every_line_gets_one_reply(lines: list[bytes]) -> None:
        with LineConn(port, TIMEOUT, tls=tls) as conn:
            conn.send(b"".join(line + b"\n" for line in lines))
            for line in lines:
                reply = conn.read_line()
                problem = reply_problem(reply)
                assert problem is None, f"{line[:200]!r} -> {reply[:200]!r}: {problem}"

    @_settings(examples)
    @seed(seed_)
    @given(fuzz_key, storable)
    def what_is_stored_comes_back(key: str, value: object) -> None:
        with LineConn(port, TIMEOUT, tls=tls) as conn:
            insert = orjson.dumps({"method": "insert", "key": key, "value": value})
            assert orjson.loads(conn.call(insert)) == {"status": "ok", "result": None}
            for method in ("lookup", "remove"):
                reply = orjson.loads(conn.call(orjson.dumps({"method": method, "key": key})))
                assert reply == {"status": "ok", "result": value}, (method, reply)
            reply = orjson.loads(conn.call(orjson.dumps({"method": "lookup", "key": key})))
            assert reply["status"] == "failed" and reply["error"] == "KeyError", reply

    hello, flight = _recorded_handshake(port, tls)

    @_settings(examples)
    @seed(seed_)
    @given(handshake_attack(hello, flight))
    def a_broken_handshake_gets_nothing_and_stalls_nobody(attack: bytes) -> None:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock,
            contextlib.suppress(OSError),
        ):
            sock.sendall(attack)
            sock.settimeout(0.2)
            while sock.recv(1 << 16):  # an alert, an AuthenticationRequired line: not data
                pass
        with LineConn(port, TIMEOUT, tls=tls) as honest:  # the next client is served at once
            assert orjson.loads(honest.call(b'{"method": "size"}'))["status"] == "ok"

    every_line_gets_one_reply()
    what_is_stored_comes_back()
    a_broken_handshake_gets_nothing_and_stalls_nobody()


def _recorded_handshake(port: int, tls: ssl.SSLContext) -> tuple[bytes, bytes]:
    """A real client's hello, and its whole first flight with a request after it:
    the material for truncated and replayed handshakes."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        session = TlsSession(tls, server_side=False)
        session.handshake()
        hello = session.take_output()
        sock.sendall(hello)
        while not session.established:
            session.feed(sock.recv(1 << 16))
            session.handshake()
        session.send(b'{"method": "insert", "key": "fz:replayed", "value": 1}\n')
        flight = hello + session.take_output()
        sock.sendall(flight[len(hello) :])
    return hello, flight


def handshake_attack(hello: bytes, flight: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, TLS-looking random records, truncated or corrupted real hellos,
    a replayed handshake with its request, and oversized records."""
    record = st.builds(
        lambda kind, body: bytes([kind, 3, 3]) + len(body).to_bytes(2, "big") + body,
        st.sampled_from([0x16, 0x14, 0x15, 0x17]),
        st.binary(max_size=300),
    )
    truncated = st.integers(1, len(hello) - 1).map(lambda n: hello[:n])
    corrupted = st.tuples(st.integers(0, len(hello) - 1), st.integers(1, 255)).map(
        lambda flip: hello[: flip[0]] + bytes([hello[flip[0]] ^ flip[1]]) + hello[flip[0] + 1 :]
    )
    oversized = st.integers(1, 64).map(lambda n: (b"\x16\x03\x01\xff\xff" + b"\x01" * 65535) * n)
    return st.one_of(
        st.binary(min_size=1, max_size=500),
        st.lists(record, min_size=1, max_size=5).map(b"".join),
        truncated,
        corrupted,
        st.just(flight),
        oversized,
    )


# ---------------------------------------------------------------- catalog

update_record = st.dictionaries(st.text(max_size=20), json_value, max_size=8)
update = st.one_of(
    st.builds(_encode, update_record, st.booleans()),
    st.builds(
        _encode, update_record.map(lambda r: {**r, "type": "fuzz", "port": 7}), st.booleans()
    ),
    st.binary(max_size=500),
    mutated(st.builds(_encode, update_record, st.just(True))),
    st.builds(lambda d: b"\x1a" + zlib.compress(d), st.binary(max_size=500)),
    st.integers(1, 40_000_000).map(lambda n: b"\x1a" + zlib.compress(b"{" * min(n, 3_000_000))),
    st.integers(1, 5_000).map(lambda n: b'{"a":' * n),
)
METHOD_WORDS = ("GET", "HEAD", "POST", "PUT", "OPTIONS", "get", "G\x00T", "")
PATHS = ("/", "/query.json", "/query.text", "/query.html", "/query/", "/detail/", "/?sort=", "")
http_request = st.one_of(
    st.builds(
        lambda method, path, tail, version, headers: (
            f"{method} {path}{tail} {version}\r\n{headers}\r\n".encode("utf-8", "surrogatepass")
        ),
        st.sampled_from(METHOD_WORDS) | st.text(max_size=8),
        st.sampled_from(PATHS),
        st.text(max_size=60),
        st.sampled_from(("HTTP/1.0", "HTTP/1.1", "HTTP/2", "HTTP/1.1x", "")),
        st.lists(st.text(max_size=40), max_size=5).map(lambda hs: "".join(h + "\r\n" for h in hs)),
    ),
    st.builds(
        lambda expression: b"GET /query/" + expression + b" HTTP/1.0\r\n\r\n",
        st.binary(max_size=80).map(base64.b64encode),
    ),
    st.binary(max_size=400),
)


def fuzz_catalog(port: int, examples: int, seed_: int) -> None:
    url = f"http://127.0.0.1:{port}/query.json"

    def catalog_serves() -> None:
        response = requests.get(url, timeout=TIMEOUT)
        assert response.status_code == 200, response.status_code
        records = orjson.loads(response.content)
        assert isinstance(records, list) and all(isinstance(r, dict) for r in records)
        assert any(r.get("project") == PROBE_RECORD["project"] for r in records), "probe gone"

    @_settings(examples)
    @seed(seed_)
    @given(update)
    def updates_never_break_it(data: bytes) -> None:
        if len(data) <= 65507:
            _send_udp(port, data)
        with socket.create_connection(("127.0.0.1", port + 1), timeout=TIMEOUT) as sock:
            sock.sendall(data)
        catalog_serves()

    @_settings(examples)
    @seed(seed_)
    @given(http_request)
    def every_request_gets_a_status_line(data: bytes) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # the request is all there is
            head = _read_all(sock)[:64]
        if head:  # closing without a word is allowed for garbage
            assert head.startswith((b"HTTP/1.0 ", b"HTTP/1.1 ")), head
            status = int(head.split()[1])
            assert status != 500, f"{data[:200]!r} -> {head!r}"  # 500: the catalog's own fault
        catalog_serves()

    def probe_listed() -> bool:
        # Sent again each time: under the UDP flood of the attack a datagram may be lost.
        _send_udp(port, orjson.dumps(PROBE_RECORD))
        return PROBE_RECORD["project"].encode() in requests.get(url, timeout=TIMEOUT).content

    wait_until(probe_listed, what="the fuzzer's probe record to be listed")
    updates_never_break_it()
    every_request_gets_a_status_line()


def _send_udp(port: int, data: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, ("127.0.0.1", port))


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(1 << 16):
        chunks.append(data)
    return b"".join(chunks)


# ---------------------------------------------------------------- TS and LS


@st.composite
def any_case(draw: st.DrawFn, name: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c for c in name)


name_text = st.one_of(
    st.builds(dns.known, st.integers(0, dns.NAMES - 1)).flatmap(any_case),
    st.builds(dns.unknown, st.integers(0, 50)),
    st.text(max_size=40),
)
blank = st.sampled_from(("", " ", "\t", "  "))


def _line(parts: list[str]) -> bytes:
    return _no_newline("".join(parts).encode("utf-8", "surrogatepass"))


id_query = st.builds(
    lambda pre, qid, sep, name, post: _line([pre, qid, sep, name, post]),
    blank,
    st.text("0123456789", min_size=1, max_size=24),
    st.sampled_from((" ", "\t", "  ")),
    name_text,
    st.sampled_from(("", " ", "\r")),
)
ts_line = st.one_of(
    id_query,
    st.builds(lambda pre, name, post: _line([pre, name, post]), blank, name_text, blank),
    st.binary(max_size=120).map(_no_newline),
    mutated(st.builds(lambda n: f"7 {dns.known(n)}".encode(), st.integers(0, dns.NAMES - 1))),
)


def ts_answer(line: bytes, table: dict[bytes, bytes]) -> bytes | None:
    """The TS's documented reply to one line: ``ID ANSWER`` for ``ID NAME`` (ID up
    to 20 decimal digits), ``ANSWER`` for a bare ``NAME``, when the table holds
    NAME (ASCII case ignored); nothing otherwise."""
    fields = line.split()
    if len(fields) == 1:
        prefix, name = b"", fields[0]
    elif len(fields) == 2 and fields[0].isdigit() and len(fields[0]) <= 20:
        prefix, name = fields[0] + b" ", fields[1]
    else:
        return None
    answer = table.get(name.lower())
    return None if answer is None else prefix + answer


def fuzz_ts(port: int, examples: int, seed_: int, index: int) -> None:
    table = {
        dns.known(n).encode(): dns.expected(dns.known(n)).encode()
        for n in range(dns.NAMES)
        if index in dns.homes(n)
    }
    sentinel_name = next(iter(table))

    @_settings(examples)
    @seed(seed_)
    @given(st.lists(ts_line, min_size=1, max_size=12))
    def answers_exactly_its_names(lines: list[bytes]) -> None:
        sentinel = b"99999999999999999999 " + sentinel_name
        with LineConn(port, TIMEOUT) as conn:  # one per example: see fuzz_ls
            conn.send(b"".join(line + b"\n" for line in [*lines, sentinel]))
            wanted = [a for a in (ts_answer(line, table) for line in lines) if a is not None]
            got = []
            while (line := conn.read_line()) != ts_answer(sentinel, table):
                got.append(line)
        assert got == wanted

    answers_exactly_its_names()


def ls_answer_problem(name: bytes, answer: bytes) -> str | None:
    """Whether ``answer`` is a right answer to the query line ``name`` (stripped)."""
    try:
        text = name.decode()
    except UnicodeDecodeError:
        text = None
    valid = (
        text is not None
        and 0 < len(name) <= 253
        and text.isprintable()
        and not any(c.isspace() for c in text)
    )
    if not valid:
        return None if b" - ERROR invalid host name: " in answer else "no error for a bad name"
    right = dns.expected(name.lower().decode())
    if right.endswith("TIMED OUT"):
        return None if answer == name + b" - TIMED OUT" else "not a time-out"
    return None if answer == right.encode() else f"not {right!r}"


def fuzz_ls(port: int, examples: int, seed_: int) -> None:
    sentinel = dns.known(0).encode()

    @_settings(examples)
    @seed(seed_)
    @given(st.lists(ts_line, min_size=1, max_size=12))
    def every_query_gets_its_answer(lines: list[bytes]) -> None:
        # A connection per example: after a failure its unread answers would be
        # taken for the next example's, and hypothesis would report that instead.
        with LineConn(port, TIMEOUT) as conn:
            conn.send(b"".join(line + b"\n" for line in [*lines, sentinel]))
            for line in lines:
                name = line.strip()
                if not name:
                    continue  # not a query: no answer
                answer = conn.read_line()
                problem = ls_answer_problem(name, answer)
                assert problem is None, f"{line!r} -> {answer!r}: {problem}"
            assert conn.read_line() == dns.expected(sentinel.decode()).encode()

    every_query_gets_its_answer()


# ---------------------------------------------------------------- command line

TARGETS: dict[str, Callable[..., None]] = {
    "hashtable": fuzz_hashtable,
    "catalog": fuzz_catalog,
    "ts": fuzz_ts,
    "ls": fuzz_ls,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chaos.fuzz", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("port", type=int)
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ts", type=int, default=0, help="which chaos.dns table the TS serves")
    args = parser.parse_args(argv)
    extra = (args.ts,) if args.target == "ts" else ()
    try:
        TARGETS[args.target](args.port, args.examples, args.seed, *extra)
    except Exception as exc:  # the falsifying example is printed above by hypothesis
        print(f"fuzz {args.target}: FAILED: {type(exc).__name__}: {exc}"[:2000], flush=True)
        return 1
    print(f"fuzz {args.target}: {args.examples} examples per property, every property held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
