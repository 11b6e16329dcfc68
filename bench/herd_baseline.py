"""The baseline for bench/herd_bench.py: a herd server in the style of the public implementations.

    python bench/herd_baseline.py NAME --config FILE --log-file FILE

What the published solutions of the assignment do, kept on purpose: asyncio
streams, one ``readline`` per command, and flooding by opening a NEW TCP
connection to each neighbour for every flooded message, writing the AT line on
the client port (so a client's forged AT is flooded too), closing it. A
location is kept if its client time is newer than the stored one; a duplicate
stops there. Every line is logged to the file. Place data: the same offline
index as ours, so that WHATSAT costs the same. Not part of the product.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from herd.config import load_config
from herd.messages import format_diff, parse_location, parse_time, whatsat_reply
from herd.places import load_geonames

log = logging.getLogger("baseline")


class Baseline:
    def __init__(self, name: str, config, places) -> None:
        self.name = name
        self.config = config
        self.places = places
        self.neighbours = config.neighbours(name)
        self.clients: dict[str, tuple] = {}  # client -> (time, at line, lat, lon)
        self.tasks: set[asyncio.Future] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            raw = await reader.readline()
            if not raw:
                break
            message = raw.decode(errors="replace").strip()
            log.info("in: %s", message)
            reply = await self.answer(message)
            if reply is not None:
                log.info("out: %s", reply.strip())
                writer.write(reply.encode())
                await writer.drain()
        writer.close()

    async def answer(self, message: str) -> str | None:
        fields = message.split()
        try:
            if fields[0] == "IAMAT" and len(fields) == 4:
                received = time.time_ns()
                client, location, stamp = fields[1:]
                lat, lon = parse_location(location)
                at = f"AT {self.name} {format_diff(received, parse_time(stamp))} {client} {location} {stamp}"
                if self.store(client, parse_time(stamp), at, lat, lon):
                    self.spawn(self.flood(at))
                return at + "\n"
            if fields[0] == "AT" and len(fields) == 6:
                client, location, stamp = fields[3:]
                lat, lon = parse_location(location)
                if self.store(client, parse_time(stamp), message, lat, lon):
                    self.spawn(self.flood(message))
                return None
            if fields[0] == "WHATSAT" and len(fields) == 4 and fields[1] in self.clients:
                _, at, lat, lon = self.clients[fields[1]]
                answer = self.places.nearby_search(lat, lon, float(fields[2]), int(fields[3]))
                return whatsat_reply(
                    at, orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode()
                ).decode()
        except (ValueError, IndexError):
            pass
        return f"? {message}\n"

    def spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def store(self, client: str, stamp, at: str, lat: float, lon: float) -> bool:
        old = self.clients.get(client)
        if old is not None and old[0] >= stamp:
            return False
        self.clients[client] = (stamp, at, lat, lon)
        return True

    async def flood(self, at: str) -> None:
        for neighbour in self.neighbours:
            entry = self.config.servers[neighbour]
            try:
                _, writer = await asyncio.open_connection(entry.host, entry.port)
                log.info("connected to %s", neighbour)
                writer.write((at + "\n").encode())
                await writer.drain()
                writer.close()
                await writer.wait_closed()
                log.info("dropped connection to %s", neighbour)
            except OSError:
                log.info("cannot connect to %s", neighbour)


async def serve(name: str, config_path: Path) -> None:
    config = load_config(config_path)
    entry = config.servers[name]
    baseline = Baseline(name, config, load_geonames())
    server = await asyncio.start_server(baseline.handle, entry.host, entry.port)
    print(f"baseline {name} listening on {entry.host}:{entry.port}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--log-file", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(
        filename=args.log_file, level=logging.INFO, format="%(asctime)s %(message)s"
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.name, args.config))


if __name__ == "__main__":
    main()
