"""Hostile clients, run as a process of their own for a while:

    python -m chaos.attacks TARGET PORT --seconds S [--only KIND,...]

TARGET is hashtable, catalog, ts or ls. The kinds, all at once unless --only:

- slowloris: 30 connections that send a request one byte at a time, never ending it;
- never-reading: 8 connections that send requests with big replies as fast as the
  server takes them and never read a byte;
- flood: 300 connections held open doing nothing, and more opened and closed
  as fast as possible;
- oversized: messages beyond the server's bound (a 9 MiB request line, a 1 MiB
  TS/LS query, a 1 MiB HTTP head or TCP update), over and over;
- udp (catalog only): a flood of datagrams, valid updates and garbage;
- pages, idle, records (catalog only): page reloads, 2,000 idle connections, a
  flood of distinct records from one address (chaos/catalog_attacks.py);
- regex (hash table only, not in the default mix): scans with a pattern that
  backtracks catastrophically, four always waiting (pipelined).

It prints what it did as one JSON object and exits 0; connections the server
refuses or closes are counted, not errors.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from chaos import catalog_attacks, dns, hashtable_attacks
from netkit.security import load_secret

HOST = "127.0.0.1"
SLOWLORIS = 30
NEVER_READING = 8
FLOOD = 300
PIPELINED_SCANS = 4
EVIL_KEYS = 40  # each costs the pattern below about 0.5 s
CATALOG_RECORDS = 3000  # the catalog's /query.json is then about a megabyte
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


@dataclass(frozen=True)
class Payloads:
    """What each kind sends to one kind of server."""

    partial: bytes  # a request start, trickled and never finished
    request: bytes  # a complete request with a big (or many) reply
    oversized: int  # bytes of one message beyond the server's bound
    terminator: bytes = b"\n"  # what would end a message


BIG_KEY = "chaos-big"
BIG_VALUE = "x" * (256 * 1024)
PAYLOADS = {
    "hashtable": Payloads(
        b'{"method":"lookup","key":"', orjson.dumps({"method": "lookup", "key": BIG_KEY}) + b"\n",
        9 * 1024 * 1024,
    ),
    "catalog": Payloads(
        b"GET /query.json HTTP/1.1\r\nX-Slow: ", b"GET /query.json HTTP/1.1\r\n\r\n",
        1024 * 1024, b"\r\n\r\n",
    ),
    "ts": Payloads(b"1 host", f"1 {dns.known(0)}\n".encode() * 64, 1024 * 1024),
    "ls": Payloads(b"host", f"{dns.known(0)}\n".encode() * 64, 1024 * 1024),
}  # fmt: skip


class Attack:
    """The kinds against one server until ``deadline``; counts what happened."""

    def __init__(self, target: str, port: int, deadline: float) -> None:
        self.target = target
        self.port = port
        # The hash table serves only the secret's holders: the attacks that need a
        # session (never-reading, scans) are made by one; the others come from outside.
        self.tls = load_secret().client_context() if target == "hashtable" else None
        self.payloads = PAYLOADS[target]
        self.deadline = deadline
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.counts[what] += n

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def connect(self, port: int | None = None, session: bool = False) -> socket.socket | None:
        """A connection; with ``session``, an authenticated one (TLS with the secret)
        where the target requires it."""
        try:
            sock = socket.create_connection((HOST, port or self.port), timeout=5)
            if session and self.tls is not None:
                sock = self.tls.wrap_socket(sock)
        except OSError:
            self.count("connections refused")
            return None
        self.count("connections")
        return sock

    # ---------------------------------------------------------------- kinds

    def slowloris(self) -> None:
        ports = [self.port] + ([self.port + 1] if self.target == "catalog" else [])
        socks = [s for s in (self.connect(ports[i % len(ports)]) for i in range(SLOWLORIS)) if s]
        partial = self.payloads.partial + b"a" * 100_000  # never reaches a terminator
        sent = 0
        while self.running() and socks:
            for sock in list(socks):
                try:
                    sock.send(partial[sent : sent + 1])
                except OSError:
                    self.count("slowloris closed by server")
                    socks.remove(sock)
            sent += 1
            self.count("slowloris bytes", len(socks))
            time.sleep(0.2)
        _close(socks)

    def never_reading(self) -> None:
        if self.target == "hashtable":
            self._store_big_value()
        socks = [s for s in (self.connect(session=True) for _ in range(NEVER_READING)) if s]
        for sock in socks:
            sock.setblocking(False)
        while self.running() and socks:
            for sock in list(socks):
                try:
                    self.count("never-reading bytes", sock.send(self.payloads.request))
                except _WOULD_BLOCK:
                    pass  # the server stopped reading from it: what should happen
                except OSError:
                    self.count("never-reading closed by server")
                    socks.remove(sock)
                    if self.running() and (sock := self.connect(session=True)):
                        sock.setblocking(False)
                        socks.append(sock)
            time.sleep(0.05)
        _close(socks)

    def flood(self) -> None:
        held: list[socket.socket] = []
        while self.running():
            if len(held) < FLOOD:
                if sock := self.connect():
                    held.append(sock)
            elif sock := self.connect():  # churn: open and close at once
                sock.close()
                self.count("flood churn")
        _close(held)

    def oversized(self) -> None:
        chunk = b"z" * (256 * 1024)
        ports = [self.port] + ([self.port + 1] if self.target == "catalog" else [])
        n = 0
        while self.running():
            sock = self.connect(ports[n % len(ports)], session=True)
            n += 1
            if sock is None:
                time.sleep(0.1)
                continue
            try:
                sock.sendall(self.payloads.partial)
                for _ in range(self.payloads.oversized // len(chunk) + 1):
                    sock.sendall(chunk)
                sock.sendall(self.payloads.terminator)
                self.count("oversized messages")
                sock.settimeout(5)
                while sock.recv(1 << 16):  # the server's answer, until it closes
                    pass
            except OSError:
                self.count("oversized cut off by server")
            finally:
                sock.close()

    def udp(self) -> None:
        records = [
            orjson.dumps({"type": "chaos-flood", "project": "attack", "port": n, "pad": "p" * 200})
            for n in range(CATALOG_RECORDS)
        ]
        garbage = [b"", b"\x1a", b"\x1agarbage", b"{", b"[1,2]", b'{"a":' * 1000, b"\xff" * 500]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            n = 0
            while self.running():
                for data in (records[n % len(records)], garbage[n % len(garbage)]):
                    with contextlib.suppress(OSError):
                        sock.sendto(data, (HOST, self.port))
                n += 1
                self.count("datagrams", 2)
                if n % 100 == 0:
                    time.sleep(0.01)  # about 20,000 a second

    def regex(self) -> None:
        sock = self.connect(session=True)
        if sock is None:
            return
        with sock:
            # Keys of a's that do not end the way the pattern wants: each one
            # backtracks exponentially, until the server's scan time-out.
            sock.sendall(
                b"".join(
                    orjson.dumps({"method": "insert", "key": "a" * 30 + f"!{n}", "value": 0})
                    + b"\n"
                    for n in range(EVIL_KEYS)
                )
            )
            sock.settimeout(30)
            replies = 0
            while replies < EVIL_KEYS:
                data = sock.recv(1 << 16)
                if not data:
                    return
                replies += data.count(b"\n")
            scan = orjson.dumps({"method": "scan", "regex": "^(a|aa)+$"}) + b"\n"
            sock.sendall(scan * PIPELINED_SCANS)
            while self.running():  # one more for each reply: always that many waiting
                data = sock.recv(1 << 16)
                if not data:
                    return
                replies = data.count(b"\n")
                self.count("catastrophic scans", replies)
                sock.sendall(scan * replies)

    def _store_big_value(self) -> None:
        sock = self.connect(session=True)
        if sock is not None:
            with sock:
                sock.sendall(
                    orjson.dumps({"method": "insert", "key": BIG_KEY, "value": BIG_VALUE}) + b"\n"
                )
                sock.recv(1 << 16)


def fill_catalog(port: int) -> None:
    """The records the udp kind refreshes, sent once (before measuring without attack)."""
    attack = Attack("catalog", port, time.monotonic() + 0.3)
    attack.udp()


def _close(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


KINDS: dict[str, Callable[[Attack], None]] = {
    "slowloris": Attack.slowloris,
    "never-reading": Attack.never_reading,
    "flood": Attack.flood,
    "oversized": Attack.oversized,
    "udp": Attack.udp,
    "regex": Attack.regex,
    "pages": catalog_attacks.pages,
    "idle": catalog_attacks.idle,
    "records": catalog_attacks.records,
    "handshakes": hashtable_attacks.handshakes,
    "sessions": hashtable_attacks.sessions,
    "bombs": hashtable_attacks.bombs,
}
CATALOG_KINDS = ["udp", "pages", "idle", "records"]
HASHTABLE_KINDS = ["handshakes", "sessions", "bombs"]


def default_kinds(target: str) -> list[str]:
    kinds = ["slowloris", "never-reading", "flood", "oversized"]
    own = {"catalog": CATALOG_KINDS, "hashtable": HASHTABLE_KINDS}.get(target, [])
    return [*kinds, *own]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chaos.attacks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("target", choices=PAYLOADS)
    parser.add_argument("port", type=int)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--only", help="comma-separated kinds (default: all but regex)")
    args = parser.parse_args(argv)
    kinds = args.only.split(",") if args.only else default_kinds(args.target)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # the flood needs descriptors
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    attack = Attack(args.target, args.port, time.monotonic() + args.seconds)
    threads = [threading.Thread(target=KINDS[kind], args=(attack,), daemon=True) for kind in kinds]
    for thread in threads:
        thread.start()
    print("attacking", flush=True)  # the battery measures from here
    for thread in threads:
        thread.join(timeout=args.seconds + 30)
    print(orjson.dumps(dict(attack.counts)).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
