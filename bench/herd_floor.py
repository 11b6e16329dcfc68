"""The floor under bench/herd_bench.py: the herd's messages with nothing else, on this machine.

    python bench/herd_floor.py NAME --config FILE [--loop uvloop|asyncio] [--log-dir DIR]

One server of a herd that floods and acknowledges exactly as ours does (the same
links and dialing rule, the fanout rule, an IAMAT reply once every live
neighbour has acknowledged, one write per link per loop turn) and does nothing
else: no parsing beyond ``split``, no table, no place data, no log unless
``--log-dir`` (every line in and out, one ``os.write`` per loop turn, like
herd.traffic, to ``DIR/NAME.log``). Whatever this
costs per update, in CPU and in round trips, no Python server with the same
messages on the same machine can beat; bench/herd_bench.py measures it next to
ours (``--skip floor`` to leave it out). Not part of the product.

Its lines, all on one port (clients and neighbours alike, it trusts everyone):
``IAMAT <id> ...`` -> ``AT <id>``; ``WHATSAT <id> ...`` -> ``AT <id>``, ``{}``
and an empty line if it has seen ``<id>``, else ``? ...``; between servers
``HELLO <name>``, ``U <id> <origin> <fanout>`` and ``A <id>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from herd.config import load_config


class Floor:
    def __init__(self, name: str, neighbours: list[str], log_fd: int) -> None:
        self.name, self.neighbours = name, neighbours
        self.links: dict[str, Conn] = {}
        self.seen: set[str] = set()  # update ids
        self.clients: set[str] = set()
        self.count = 0
        self.waiting: dict[
            str, tuple[Conn, set[str], str]
        ] = {}  # id -> (conn, acks missing, client)
        self.log_fd, self.log_lines = log_fd, []
        self.scheduled = False

    def schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.end_of_turn)

    def end_of_turn(self) -> None:
        self.scheduled = False
        for conn in list(self.links.values()):
            conn.flush()
        if self.log_lines:
            os.write(self.log_fd, ("\n".join(self.log_lines) + "\n").encode())
            self.log_lines.clear()

    def log(self, text: str) -> None:
        if self.log_fd >= 0:
            self.log_lines.append(text)
            self.schedule()

    def flood(self, update: list[str], told: set[str], via: str | None) -> None:
        """``update``: id, origin, client."""
        targets = [n for n in self.links if n != via and n not in told]
        fanout = ",".join(sorted(told | set(targets))) or "-"
        for name in targets:
            self.links[name].queue(f"U {update[0]} {update[1]} {fanout} {update[2]}")
        self.schedule()

    def links_changed(self) -> None:
        print(f"links {','.join(sorted(self.links))}", flush=True)

    def client_line(self, conn: Conn, fields: list[str]) -> None:
        if fields[0] == "IAMAT":
            self.count += 1
            update_id, client = f"{self.name}.{self.count}", fields[1]
            self.seen.add(update_id)
            self.clients.add(client)
            if not self.links:
                conn.write(f"AT {client}\n".encode())
                return
            self.waiting[update_id] = (conn, set(self.links), client)
            self.flood([update_id, self.name, client], set(), None)
        elif fields[0] == "WHATSAT":
            known = fields[1] in self.clients
            conn.write(f"AT {fields[1]}\n{{}}\n\n".encode() if known else b"? no\n")

    def peer_line(self, conn: Conn, fields: list[str]) -> None:
        if fields[0] == "U":
            update_id, origin, fanout, client = fields[1:5]
            if origin == conn.peer:
                conn.queue(f"A {update_id}")
                self.schedule()
            if update_id not in self.seen:
                self.seen.add(update_id)
                self.clients.add(client)
                self.flood([update_id, origin, client], set(fanout.split(",")), conn.peer)
        elif fields[0] == "A":
            entry = self.waiting.get(fields[1])
            if entry is not None:
                entry[1].discard(conn.peer)
                if not entry[1]:
                    del self.waiting[fields[1]]
                    entry[0].write(f"AT {entry[2]}\n".encode())


class Conn(asyncio.Protocol):
    def __init__(self, floor: Floor, peer: str | None = None) -> None:
        self.floor, self.peer, self.buffer, self.out = floor, peer, b"", []

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.peer is not None:
            transport.write(f"HELLO {self.floor.name}\n".encode())
            self.floor.links[self.peer] = self
            self.floor.links_changed()

    def data_received(self, data: bytes) -> None:
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        for line in lines:
            text = line.decode()
            self.floor.log(f"in {text}")
            fields = text.split()
            if fields[0] == "HELLO":
                self.peer = fields[1]
                self.floor.links[self.peer] = self
                self.floor.links_changed()
            elif self.peer is None:
                self.floor.client_line(self, fields)
            else:
                self.floor.peer_line(self, fields)

    def queue(self, line: str) -> None:
        self.out.append(line)

    def flush(self) -> None:
        if self.out:
            for line in self.out:
                self.floor.log(f"out {line}")
            self.out.append("")
            self.transport.write("\n".join(self.out).encode())
            self.out = []

    def write(self, data: bytes) -> None:
        self.floor.log(f"out {data.decode().rstrip()}")
        self.transport.write(data)

    def connection_lost(self, exc) -> None:
        if self.peer is not None and self.floor.links.get(self.peer) is self:
            del self.floor.links[self.peer]
            self.floor.links_changed()


async def serve(name: str, config_path: Path, log_dir: Path | None) -> None:
    config = load_config(config_path)
    entry = config.servers[name]
    log = (
        os.open(log_dir / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND) if log_dir else -1
    )
    floor = Floor(name, config.neighbours(name), log)
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: Conn(floor), entry.host, entry.port)
    for neighbour in floor.neighbours:
        if name < neighbour:  # as herd.links: the first name dials, until it is up
            other = config.servers[neighbour]
            while True:
                try:
                    await loop.create_connection(
                        lambda n=neighbour: Conn(floor, n), other.host, other.port
                    )
                    break
                except OSError:
                    await asyncio.sleep(0.05)
    await asyncio.Event().wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--log-dir", type=Path, help="log every line to DIR/NAME.log")
    args = parser.parse_args()
    run = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        run = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args.name, args.config, args.log_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
