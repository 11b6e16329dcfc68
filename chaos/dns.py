"""lb pieces for the battery: TS tables where every name has two homes, the TS and
LS processes, and a client that timestamps every answer it gets from the LS."""

from __future__ import annotations

import contextlib
import random
import re
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chaos.lab import Lab
from harness.processes import Process, free_port, python_module, tcp_open, wait_until
from netkit.framing import LineFramer

TS_COUNT = 3
NAMES = 300
BATCH = 20  # queries a feeder sends at once


def known(n: int) -> str:
    """The n-th name as a client asks for it."""
    return f"host{n}.chaos.test"


def unknown(n: int) -> str:
    return f"nowhere{n}.chaos.test"


def _entry(n: int) -> str:
    # Spelled otherwise than the queries: lookups ignore case, answers keep the table's.
    return f"Host{n}.Chaos.TEST 10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256} A"


_KNOWN = re.compile(r"host(0|[1-9][0-9]*)\.chaos\.test")


def expected(name: str) -> str:
    """The one right answer to a query for ``name`` (lower case): its table line
    if it is one of the known names exactly, else a time-out (no TS holds it)."""
    match = _KNOWN.fullmatch(name)
    if match and int(match[1]) < NAMES:
        return f"{_entry(int(match[1]))} IN"
    return f"{name} - TIMED OUT"


def homes(n: int) -> tuple[int, int]:
    """The two TSs (of 0, 1, 2) whose tables hold name n: any one TS may fail."""
    return n % TS_COUNT, (n + 1) % TS_COUNT


def write_tables(directory: Path) -> list[Path]:
    tables = [directory / f"ts{k}.txt" for k in range(TS_COUNT)]
    for k, path in enumerate(tables):
        path.write_text("".join(f"{_entry(n)}\n" for n in range(NAMES) if k in homes(n)))
    return tables


def start_ts(
    lab: Lab, table: Path, name: str, port: int | None = None, *extra: str, catalog: str = ""
) -> tuple[Process, int]:
    """A TS on loopback (on ``port`` to restart it where it was); returns it and its
    port. It logs each connection, which tells when the LS is linked to it."""
    port = port or free_port()
    process = lab.start(
        python_module("lb.ts", str(port), str(table), "--host", "127.0.0.1", *extra),
        name=name,
        env={"CATALOG_HOST": catalog} if catalog else None,
    )
    _wait_listening(process, port, "TS")
    return process, port


def start_ls(
    lab: Lab, ts_ports: Sequence[int], timeout: float, *extra: str, catalog: str = ""
) -> tuple[Process, int]:
    """An LS on loopback over the TSs on ``ts_ports`` (and ``extra`` options)."""
    port = free_port()
    pairs = [word for ts in ts_ports for word in ("127.0.0.1", str(ts))]
    process = lab.start(
        python_module(
            "lb.ls", str(port), *pairs, "--timeout", str(timeout), "--host", "127.0.0.1", "-q",
            *extra,
        ),
        name="ls",
        env={"CATALOG_HOST": catalog} if catalog else None,
    )  # fmt: skip
    _wait_listening(process, port, "LS")
    return process, port


def _wait_listening(process: Process, port: int, what: str) -> None:
    wait_until(lambda: tcp_open("127.0.0.1", port) or not process.alive(), timeout=20, what=what)
    if not process.alive():
        raise RuntimeError(f"{what} exited: {process.output()[-500:]}")


# The TS's lines for its clients' comings and goings: one each, or (in a flood)
# "clients connected: 1,234 more in the last 10 s (last: ...)".
_ARRIVALS = re.compile(r"clients (connected|disconnected): (?:([\d,]+) more in the last )?", re.M)


def linked(ts: Process) -> bool:
    """Whether someone (the LS) holds a connection to ``ts`` now: since the TS last
    started, its log shows more connections than disconnections. (Counting
    connections alone would be fooled by the start-up probe, which connects and
    leaves at once.)"""
    output = ts.output()
    run = output[output.rfind("TS serving") :]
    counts = {"connected": 0, "disconnected": 0}
    for match in _ARRIVALS.finditer(run):
        counts[match[1]] += int(match[2].replace(",", "")) if match[2] else 1
    return counts["connected"] > counts["disconnected"]


def wait_linked(ts: Process, timeout: float = 30.0) -> None:
    """Until an LS is connected to ``ts`` (see ``linked``). The LS retries a lost TS
    after 0.5, 1, 2, 4, ... s."""
    wait_until(lambda: linked(ts), timeout=timeout, what="the LS to connect to the TS")


@dataclass
class Answers:
    """Queries sent on one connection and the answers that came, with times."""

    sent: list[tuple[str, float]] = field(default_factory=list)
    got: list[tuple[str, float]] = field(default_factory=list)


class LsClient:
    """One client connection to the LS; a thread reads and timestamps the answers."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.answers = Answers()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def send(self, names: Sequence[str]) -> None:
        with self._lock:
            now = time.monotonic()
            self.answers.sent.extend((name, now) for name in names)
        self.sock.sendall("".join(f"{name}\n" for name in names).encode())

    def _read(self) -> None:
        framer = LineFramer(1 << 16)
        self.sock.settimeout(None)
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            now = time.monotonic()
            with self._lock:
                self.answers.got.extend((line.decode(), now) for line in framer.feed(data))

    def wait(self, timeout: float) -> bool:
        """Until every query has its answer (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.answers.got) >= len(self.answers.sent):
                    return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(timeout=5)


class Feeder:
    """Streams queries to LS clients from a thread, in small batches, never waiting
    for answers. Client i asks for unknown names with probability ``unknown[i]``."""

    def __init__(
        self, clients: Sequence[LsClient], seed: int, unknown: Sequence[float], pause: float
    ) -> None:
        self.clients = clients
        self.rng = random.Random(seed)  # its own: the scenario's thread draws from lab.rng
        self.unknown = unknown
        self.pause = pause
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        rng, n = self.rng, 0
        while not self._stop.is_set():
            for client, share in zip(self.clients, self.unknown, strict=True):
                names = [
                    unknown(n + i) if rng.random() < share else known(rng.randrange(NAMES))
                    for i in range(BATCH)
                ]
                n += BATCH
                client.send(names)
            time.sleep(self.pause)


def judge(answers: Answers, limit: float) -> tuple[list[tuple[float, str]], list[float], int]:
    """Each answer against its query (same order): ``(problems, latencies, unanswered)``,
    each problem with the time its query was sent.

    A problem is a wrong answer (another name's, a stale one, a time-out where a
    live TS holds the name) or one later than ``limit`` seconds."""
    problems, latencies = [], []
    for (name, sent), (line, got) in zip(answers.sent, answers.got, strict=False):
        latencies.append(got - sent)
        if line != expected(name):
            problems.append((sent, f"{name!r} answered {line!r}, not {expected(name)!r}"))
        elif got - sent > limit:
            problems.append(
                (sent, f"{name!r} answered after {got - sent:.1f} s (limit {limit:g} s)")
            )
    if len(answers.got) > len(answers.sent):
        problems.append((0.0, f"{len(answers.got) - len(answers.sent)} answers to no query"))
    return problems, latencies, max(0, len(answers.sent) - len(answers.got))
