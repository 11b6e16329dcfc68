"""``python -m herd NAME`` (and ``python server.py NAME``): run one server of the herd.

Exit status: 0 when stopped by SIGINT or SIGTERM, 1 when storage failed, 2 for
bad arguments, a bad configuration or data directory, or an address in use.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from catalog.client import catalog_addresses
from hashtable.database import RecoveryError
from herd import google
from herd.clients import ClientProtocol
from herd.config import ConfigError, HerdConfig, load_config
from herd.discovery import Discovery
from herd.durable import DurableLocations
from herd.links import PeerConnection, keep_dialing, knock
from herd.options import Options
from herd.places import POPULATIONS, load_geonames
from herd.server import HerdServer
from herd.traffic import RecordHandler, TrafficLog
from netkit.addresses import AddressError
from netkit.cliargs import (
    nonnegative_int,
    nonnegative_seconds,
    port_number,
    positive_int,
    positive_seconds,
    program_name,
)
from netkit.listeners import is_loopback
from netkit.security import SecretError, load_secret, require_service_name, service_name

log = logging.getLogger("herd")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        # server.py is where the assignment's users start it; its errors say so.
        prog=program_name(
            "python server.py" if Path(sys.argv[0]).name == "server.py" else "python -m herd"
        ),
        description="Run one server of a herd (see docs/herd.md).",
    )
    parser.add_argument("name", help="this server's name in the configuration")
    add = parser.add_argument
    add("--config", type=Path, help="the herd's JSON (or .toml) file (default: the five servers)")
    add("--data-dir", type=Path, help="keep locations here across restarts (default: memory only)")
    add("--log-file", type=Path, help="every line in and out, every link (default: NAME.log)")
    add("--host", help="address to listen on when the configuration gives none (127.0.0.1)")
    add("--port", type=port_number, help="client port instead of the configuration's (0: any)")
    add("--peer-port", type=port_number, help="peer port instead of the configuration's (0: any)")
    add("--places", choices=("offline", "google"), default="offline", help="place data source")
    add("--places-population", type=int, choices=POPULATIONS, default=15000,
        help="offline: the smallest city population listed (default 15000)")  # fmt: skip
    add("--places-url", default=google.NEARBY_SEARCH_URL, help="google: the Nearby Search URL")
    add(
        "--places-key-file", type=Path, help=f"google: the API key (default ${google.KEY_VARIABLE})"
    )
    add("--catalog", nargs="?", const="", metavar="HOSTS",
        help="announce to and find neighbours in the catalog (default $CATALOG_HOST)")  # fmt: skip
    add("--announce-interval", type=positive_seconds, default=60.0)
    add("--ack-timeout", type=nonnegative_seconds, default=0.2,
        help="longest an IAMAT reply waits for the neighbours to have it (default 0.2 s)")  # fmt: skip
    add("--backoff-initial", type=positive_seconds, default=0.1, help="first redial delay")
    add("--backoff-cap", type=positive_seconds, default=5.0, help="longest redial delay")
    add("--ping-interval", type=positive_seconds, default=1.0)
    add("--peer-timeout", type=positive_seconds, default=5.0, help="drop a link silent this long")
    add("--handshake-timeout", type=positive_seconds, default=5.0)
    add("--idle-timeout", type=nonnegative_seconds, default=300.0, help="0: never")
    add("--max-clients", type=positive_int, default=1024, help="client connections at once")
    add("--max-line", type=positive_int, default=4096, help="longest client line in bytes")
    add("--max-locations", type=positive_int, default=1_000_000, help="clients in the table")
    add("--log-flush-interval", type=nonnegative_seconds, default=0.01,
        help="longest the traffic log waits to be written (default 0.01 s; 0: every turn)")  # fmt: skip
    add("--log-max-bytes", type=nonnegative_int, default=64 << 20, metavar="BYTES",
        help="past this size the log file becomes NAME.log.1 (default 64 MiB; 0: never)")  # fmt: skip
    add("--log-backups", type=nonnegative_int, default=2, metavar="N",
        help="rotated logs kept: NAME.log.1 ... NAME.log.N (default 2)")  # fmt: skip
    add("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
        help="event loop: uvloop when it is installed (auto), or asyncio's own")  # fmt: skip
    add("--secret-file", type=Path, metavar="FILE",
        help="the secret the herd's servers share: their links are mutual TLS with it "
        "(default: $DHT_SECRET_FILE, else ~/.config/dht/secret)")  # fmt: skip
    add("--no-auth", action="store_true",
        help="plain-text peer links, for a herd whose servers all listen on loopback only")  # fmt: skip
    add("-v", "--verbose", action="count", default=0)
    add("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.places_key_file is not None and args.places != "google":
        parser.error("--places-key-file is for --places google")
    if args.no_auth and args.secret_file is not None:
        parser.error("--no-auth and --secret-file contradict each other")
    if args.backoff_initial > args.backoff_cap:
        parser.error("--backoff-initial is longer than --backoff-cap")
    return args


def peer_security(args: argparse.Namespace, config: HerdConfig) -> dict[str, Any]:
    """The ``Options`` fields of the peer links' TLS: mutual, with the secret, naming
    the herd (so that two herds of one owner never link); none with --no-auth, which
    every server's peer address must then keep on loopback."""
    if args.no_auth:
        exposed = [
            name for name, entry in config.servers.items()
            if not is_loopback(entry.host or args.host or "127.0.0.1")
        ]  # fmt: skip
        if exposed or args.catalog is not None:
            raise SecretError(
                "--no-auth: plain-text peer links only between servers on loopback, found "
                "through the configuration (not " + (", ".join(exposed) or "--catalog") + ")"
            )
        return {}
    secret = load_secret(args.secret_file)
    server = secret.server_context()
    require_service_name(server, "herd", config.herd)
    return {
        "server_ssl": server,
        "client_ssl": secret.client_context(),
        "peer_server_name": service_name("herd", config.herd),
        "secret": secret,
    }


def setup_logs(name: str, traffic: TrafficLog, verbose: int, quiet: bool) -> None:
    """Events to the server's log file, among its traffic (herd.traffic), and to
    standard error."""
    file_handler = RecordHandler(traffic)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(
        logging.Formatter(
            f"%(asctime)s.%(msecs)03d {name} %(levelname)s %(message)s", datefmt="%H:%M:%S"
        )
    )
    stderr.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.addHandler(file_handler)
    root.addHandler(stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"herd: {error}", file=sys.stderr)
        return 2
    if args.name not in config.servers:
        print(f"herd: no server {args.name!r} in the configuration "
              f"(it names {', '.join(sorted(config.servers))})", file=sys.stderr)  # fmt: skip
        return 2
    log_file = args.log_file or Path(f"{args.name}.log")
    try:
        traffic = TrafficLog(log_file, max_bytes=args.log_max_bytes, backups=args.log_backups)
    except OSError as error:
        print(f"herd: cannot open the log file: {error}", file=sys.stderr)
        return 2
    setup_logs(args.name, traffic, args.verbose, args.quiet)
    try:
        security = peer_security(args, config)
        places = make_places(args)
        catalogs = None if args.catalog is None else catalog_addresses(args.catalog or None)
        durable = DurableLocations(args.data_dir) if args.data_dir else None
    except (google.KeyMissing, AddressError, RecoveryError, SecretError) as error:
        log.error("%s", error)
        return 2
    runner = loop_runner(args.loop)
    if runner is None:
        log.error("--loop uvloop: uvloop is not installed (pip install uvloop)")
        return 2
    try:
        return runner(run(args, config, places, durable, catalogs, security, traffic))
    except KeyboardInterrupt:
        return 0
    finally:
        if durable is not None:
            durable.close()
        traffic.close()


def loop_runner(choice: str) -> Callable[[Coroutine], int] | None:
    """``asyncio.run``, or uvloop's: the same loop API, its core in C (libuv); 15% less
    herd CPU per update here (docs/herd.md). None when uvloop was asked for but is not
    installed; ``auto`` falls back to asyncio's own loop."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            return None if choice == "uvloop" else asyncio.run
        return uvloop.run
    return asyncio.run


def make_places(args: argparse.Namespace):
    if args.places == "google":
        return google.GooglePlaces(google.read_key(args.places_key_file), args.places_url).search
    index = load_geonames(args.places_population)
    log.info("%d places loaded (GeoNames cities of %d people or more)", index.size,
             args.places_population)  # fmt: skip
    return index.nearby_search


async def run(args, config: HerdConfig, places, durable, catalogs, security, traffic) -> int:
    """Serves until a signal (0) or a storage failure (1); 2 if it cannot listen.

    Long because it is the server's life in order (listen, link, announce,
    serve, stop), each step a call, sharing the locals the stop needs."""
    secret = security.pop("secret", None)
    loop = asyncio.get_running_loop()
    entry = config.servers[args.name]
    options = Options(
        max_line=args.max_line,
        max_clients=args.max_clients,
        max_locations=args.max_locations,
        idle_timeout=args.idle_timeout,
        ack_timeout=args.ack_timeout,
        handshake_timeout=args.handshake_timeout,
        ping_interval=args.ping_interval,
        peer_timeout=args.peer_timeout,
        backoff_initial=args.backoff_initial,
        backoff_cap=args.backoff_cap,
        log_flush_interval=args.log_flush_interval,
        **security,
    )
    server = HerdServer(args.name, config, options, places, durable, io_log=traffic)
    discovery = None
    if catalogs is not None:
        discovery = Discovery(config.herd, args.name, catalogs, server.status,
                              args.announce_interval, secret)  # fmt: skip
        server._peer_address = discovery.peer_address
    server.bind_loop(loop)
    host = entry.host or args.host or "127.0.0.1"
    port = args.port if args.port is not None else entry.port
    peer_port = args.peer_port if args.peer_port is not None else entry.peer_port
    if port is None or peer_port is None:
        log.error("%s has no port in the configuration: give --port and --peer-port", args.name)
        return 2
    # Before listening: a client served while the second port opens must not find a
    # signal still taking the process down without its log's last lines.
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    try:
        clients = await loop.create_server(lambda: ClientProtocol(server), host, port)
        peers = await loop.create_server(lambda: PeerConnection(server), host, peer_port)
    except OSError as error:
        log.error("cannot listen on %s: %s", host, error.strerror or error)
        return 2
    port = clients.sockets[0].getsockname()[1]
    peer_port = peers.sockets[0].getsockname()[1]
    log.info("%s listening on %s:%d for clients, %s:%d for peers; neighbours %s", args.name,
             host, port, host, peer_port, ", ".join(sorted(server.neighbours)) or "none")  # fmt: skip
    server.expect_links()
    tasks = [
        asyncio.create_task(
            keep_dialing(server, neighbour) if args.name < neighbour else knock(server, neighbour)
        )
        for neighbour in sorted(server.neighbours)
    ]
    if discovery is not None:
        discovery.port, discovery.peer_port = port, peer_port
        tasks.append(asyncio.create_task(discovery.keep_announcing()))
    if durable is not None:
        tasks.append(asyncio.create_task(maintain(server, durable, stop)))
    await stop.wait()
    for task in tasks:
        task.cancel()
    clients.close()
    peers.close()
    for connection in list(server.links.values()):
        connection.drop("server stopping")
    with contextlib.suppress(Exception):
        close = getattr(getattr(places, "__self__", None), "close", None)
        if close is not None and asyncio.iscoroutinefunction(close):
            await close()
    server.io_log.flush()
    if server.failed is not None:
        return 1
    log.info("%s stopped", args.name)
    return 0


async def maintain(server: HerdServer, durable: DurableLocations, stop: asyncio.Event) -> None:
    """The storage engine's housekeeping, and a stop when storage has failed."""
    while True:
        if server.failed is not None:
            stop.set()
            return
        due = durable.maintain()
        await asyncio.sleep(min(0.5, due) if due is not None else 0.5)
